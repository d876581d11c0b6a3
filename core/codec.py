"""The value codec: msgpack behind a 1-byte format tag; never pickle.

Values are what a durable object may store or pass through a stub: ``None``, ``bool``, ``int``
(64-bit), ``float``, ``str``, ``bytes``, ``list`` (tuples encode as lists), ``dict`` with ``str``
keys, and ``datetime`` (naive stays naive; aware keeps its UTC offset). Anything else raises
:class:`~duro.errors.UnsupportedValue` before any I/O.
"""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Any, Final, cast

import msgpack

from duro.errors import UnsupportedValue, ValueTooLarge

__all__ = ["DEFAULT_MAX_VALUE_BYTES", "decode", "encode", "encode_value"]

FORMAT_TAG: Final = b"\x01"
"""First byte of every encoded value: msgpack, codec format 1."""

DEFAULT_MAX_VALUE_BYTES: Final = 128 * 1024
_EXT_DATETIME: Final = 1
_SCALARS: Final = (str, int, float, bool, bytes, type(None))


def _ok(value: object) -> bool:
    """Whether *value* is storable: the fast check, building no error paths (see _check)."""
    t = type(value)
    if t in _SCALARS or t is _dt.datetime:
        return True
    if t is list or t is tuple:
        for item in cast("list[object]", value):
            if type(item) not in _SCALARS and not _ok(item):
                return False
        return True
    if t is dict:
        for k, v in cast("dict[object, object]", value).items():
            if type(k) is not str or (type(v) not in _SCALARS and not _ok(v)):
                return False
        return True
    return False


def _check(value: object, path: str) -> None:
    """Walk containers so that errors name where the bad value sits (after _ok failed)."""
    t = type(value)
    if t in _SCALARS or t is _dt.datetime:
        return
    if t is list or t is tuple:
        for i, item in enumerate(cast("list[object]", value)):
            if type(item) not in _SCALARS:
                _check(item, f"{path}[{i}]")
        return
    if t is dict:
        for k, v in cast("dict[object, object]", value).items():
            if type(k) is not str:
                raise UnsupportedValue(
                    f"dict key {k!r} at {path or 'top level'} is a {type(k).__name__}; "
                    "only str keys are supported"
                )
            if type(v) not in _SCALARS:
                _check(v, f"{path}[{k!r}]")
        return
    raise UnsupportedValue(
        f"value at {path or 'top level'} is a {t.__name__}, which duro cannot store; "
        "use None, bool, int, float, str, bytes, list, dict with str keys, or datetime"
    )


_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def _find_big_int(value: object, path: str) -> str | None:
    """Where an int outside msgpack's 64-bit range sits (only walked after a failure)."""
    if type(value) is int:
        return path if not _INT_MIN <= value <= _INT_MAX else None
    items: list[tuple[str, object]] = []
    if isinstance(value, list | tuple):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f"{path}[{k!r}]", v) for k, v in value.items()]
    for p, v in items:
        found = _find_big_int(v, p)
        if found is not None:
            return found
    return None


def _default(obj: object) -> msgpack.ExtType:
    if isinstance(obj, _dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    raise TypeError(type(obj).__name__)  # unreachable after _check


def _ext_hook(code: int, data: bytes) -> object:
    if code == _EXT_DATETIME:
        return _dt.datetime.fromisoformat(data.decode())
    raise ValueError(f"unknown msgpack extension type {code}")


class _Packers(threading.local):
    """One reusable msgpack Packer per thread (a new Packer per value costs about 1 µs)."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer(default=_default, use_bin_type=True, autoreset=True)


_packers: Final = _Packers()


def encode(value: object) -> bytes:
    """Encode *value* to tagged bytes, raising :class:`UnsupportedValue` for what is not allowed.

    The value is checked first by a walk that builds nothing; only a value that fails it is
    walked again to name where the bad part sits. The packer resets itself after an error.
    """
    if type(value) not in _SCALARS and not _ok(value):
        _check(value, "")
    try:
        return FORMAT_TAG + _packers.packer.pack(value)
    except (OverflowError, ValueError, TypeError) as exc:
        where = _find_big_int(value, "")
        if where is None:
            raise UnsupportedValue(f"cannot encode value: {exc}", orig=exc) from exc
        raise UnsupportedValue(
            f"int at {where or 'top level'} is outside the 64-bit range "
            f"[-2**63, 2**64-1] that duro stores; store it as a str", orig=exc) from exc


def encode_value(value: object, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> bytes:
    """Encode a storage value and enforce the size limit (:class:`ValueTooLarge`)."""
    data = encode(value)
    if len(data) > max_bytes:
        raise ValueTooLarge(
            f"encoded value is {len(data):,} bytes; the limit is {max_bytes:,} bytes "
            "(split it over several keys, or raise max_value_bytes)"
        )
    return data


def decode(data: bytes) -> Any:
    """Decode bytes made by :func:`encode`."""
    if not data or data[:1] != FORMAT_TAG:
        raise UnsupportedValue(
            f"stored value has unknown codec tag {data[:1]!r}: written by a newer duro or "
            "another program"
        )
    try:
        return msgpack.unpackb(
            memoryview(data)[1:], ext_hook=_ext_hook, raw=False, strict_map_key=False
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise UnsupportedValue(
            f"stored value is corrupt and cannot be decoded ({type(exc).__name__}: {exc})",
            orig=exc,
        ) from exc
