"""Storage backends: the :class:`Backend` contract, the URL registry and the built-ins."""

from duro.backends.base import (
    FORMAT_VERSION,
    UNCHANGED,
    Backend,
    BackendURL,
    Batch,
    Lease,
    LeaseHeld,
    ObjectInfo,
    ObjectRef,
)
from duro.backends.registry import backend_class, open_backend, register_backend, registry

__all__ = [
    "FORMAT_VERSION",
    "UNCHANGED",
    "Backend",
    "BackendURL",
    "Batch",
    "Lease",
    "LeaseHeld",
    "ObjectInfo",
    "ObjectRef",
    "backend_class",
    "open_backend",
    "register_backend",
    "registry",
]
