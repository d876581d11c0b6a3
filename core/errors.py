"""The one exception tree of duro.

Every error a user can see derives from :class:`DuroError`::

    DuroError
    ├── InvalidKey            (also a TypeError/ValueError: key is not a str, or too long)
    ├── ValueTooLarge         (also a ValueError)
    ├── UnsupportedValue      (also a TypeError: the codec cannot encode the value)
    ├── InvalidObjectId       (also a ValueError: malformed, or minted by another namespace)
    ├── ObjectReset           (the instance was reset; the outcome of the call is unknown)
    │   └── Fenced            (a newer owner holds the object: this process lost its lease)
    ├── Overloaded            (the object's queue is full; retry later)
    ├── CallTimeout           (no answer in time; the outcome of the call is unknown)
    ├── BackendError          (the storage backend failed; wraps the driver error as ``.orig``)
    │   └── BackendUnavailable  (transient: busy, unreachable, throttled; safe to retry)
    ├── ConfigError           (also a ValueError: bad URL, option or setting)
    │   └── BackendNotInstalled (also an ImportError: the extra for a backend is missing)
    └── ObjectError           (an exception raised inside an object that has no duro or
                               built-in class; ``.type_name`` and ``.message``)

Backends translate driver exceptions (``sqlalchemy``, ``lmdb``, ``botocore``) into this tree at
their boundary and keep the original as ``.orig``; no driver exception ever reaches a user.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendNotInstalled",
    "BackendUnavailable",
    "CallTimeout",
    "ConfigError",
    "DuroError",
    "Fenced",
    "InvalidKey",
    "InvalidObjectId",
    "ObjectError",
    "ObjectReset",
    "Overloaded",
    "UnsupportedValue",
    "ValueTooLarge",
]


class DuroError(Exception):
    """Base class of every duro error.

    ``orig`` holds the wrapped driver exception, if any.
    """

    retry_after: float | None = None
    """Seconds after which a retry may succeed, when the runtime knows (e.g. the time left on
    an unreachable owner's lease); HTTP answers send it as ``Retry-After``."""

    not_run: bool = False
    """True when duro knows the call never started (it was refused before it was sent or
    queued): none of its effects happened, so a retry cannot apply it twice. HTTP answers send
    the header ``x-duro-not-run: 1``. False means the outcome may be unknown."""

    def __init__(self, message: str = "", *, orig: BaseException | None = None,
                 not_run: bool = False) -> None:
        super().__init__(message)
        self.orig = orig
        if not_run:
            self.not_run = True

    @property
    def message(self) -> str:
        """The error message."""
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message,))


class InvalidKey(DuroError, TypeError, ValueError):
    """A storage key is not a ``str`` or exceeds the key size limit."""


class ValueTooLarge(DuroError, ValueError):
    """An encoded value exceeds the value size limit."""


class UnsupportedValue(DuroError, TypeError):
    """A value holds something the codec does not encode (a set, an arbitrary object, ...)."""


class InvalidObjectId(DuroError, ValueError):
    """A malformed object ID, or one minted by another namespace."""


class ObjectReset(DuroError):
    """The object instance was reset (a flush failed or its outcome is unknown).

    The outcome of the call that receives it is unknown: its writes may or may not be durable.
    """


class Fenced(ObjectReset):
    """A newer owner holds the object; this process's lease (fencing epoch) is stale."""


class Overloaded(DuroError):
    """The object's event queue is full; retry later with backoff."""


class CallTimeout(DuroError):
    """A call did not complete in time; its outcome is unknown."""


class BackendError(DuroError):
    """The storage backend failed."""


class BackendUnavailable(BackendError):
    """The backend is temporarily unavailable (busy, unreachable, throttled)."""


class ConfigError(DuroError, ValueError):
    """Bad configuration: a malformed URL, an unknown scheme or option, an unusable path."""


class BackendNotInstalled(ConfigError, ImportError):
    """The optional dependency for a backend is not installed."""


class ObjectError(DuroError):
    """An exception raised inside an object that is neither a duro nor a built-in exception.

    ``type_name`` is the original exception's class name, ``message`` its message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self._message = message

    @property
    def message(self) -> str:
        """The original exception's message."""
        return self._message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self._message))
