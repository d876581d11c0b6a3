"""duro: Durable Objects for Python.

Addressable, single-instance stateful objects with transactional key-value storage over
SQLite, LMDB or S3, chosen by a URL.
"""

from duro.clock import Clock, ManualClock, SystemClock
from duro.config import resolve_backend_url
from duro.errors import (
    BackendError,
    BackendNotInstalled,
    BackendUnavailable,
    CallTimeout,
    ConfigError,
    DuroError,
    Fenced,
    InvalidKey,
    InvalidObjectId,
    ObjectError,
    ObjectReset,
    Overloaded,
    UnsupportedValue,
    ValueTooLarge,
)
from duro.ids import ObjectId

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendNotInstalled",
    "BackendUnavailable",
    "CallTimeout",
    "Clock",
    "ConfigError",
    "DuroError",
    "Fenced",
    "InvalidKey",
    "InvalidObjectId",
    "ManualClock",
    "ObjectError",
    "ObjectId",
    "ObjectReset",
    "Overloaded",
    "SystemClock",
    "UnsupportedValue",
    "ValueTooLarge",
    "__version__",
    "resolve_backend_url",
]
