"""duro: Durable Objects for Python.

Addressable, single-instance stateful objects with transactional key-value storage over
SQLite, LMDB or S3, chosen by a URL.
"""

from duro.app import App
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
from duro.fetch import Request, Response
from duro.ids import ObjectId
from duro.namespace import Namespace, ObjectSummary, Stub, StubOf
from duro.objects import AlarmInfo, Context, DurableObject
from duro.settings import AppConfig, StorageLimits
from duro.stats import ObjectStats
from duro.storage import Transaction
from duro.websockets import WebSocket

__version__ = "0.1.0"

__all__ = [
    "AlarmInfo",
    "App",
    "AppConfig",
    "BackendError",
    "BackendNotInstalled",
    "BackendUnavailable",
    "CallTimeout",
    "Clock",
    "ConfigError",
    "Context",
    "DurableObject",
    "DuroError",
    "Fenced",
    "InvalidKey",
    "InvalidObjectId",
    "ManualClock",
    "Namespace",
    "ObjectError",
    "ObjectId",
    "ObjectReset",
    "ObjectStats",
    "ObjectSummary",
    "Overloaded",
    "Request",
    "Response",
    "StorageLimits",
    "Stub",
    "StubOf",
    "SystemClock",
    "Transaction",
    "UnsupportedValue",
    "ValueTooLarge",
    "WebSocket",
    "__version__",
    "resolve_backend_url",
]
