"""How calls, results and errors cross an object's boundary: by value, through the codec.

The same encoding serves in-process calls and calls forwarded between processes, so a call
behaves the same wherever its object lives.
"""

from __future__ import annotations

import builtins
from typing import Any, Final

import msgpack

import duro.errors as errors
from duro.codec import decode, encode
from duro.errors import DuroError, ObjectError, UnsupportedValue

__all__ = [
    "decode_args",
    "decode_error",
    "encode_args",
    "encode_error",
    "encode_result",
    "pack_error",
    "unpack",
]

MAX_CALL_BYTES: Final = 32 * 1024 * 1024
_DURO_ERRORS: Final = {name: getattr(errors, name) for name in errors.__all__}
_BUILTIN_ERRORS: Final = {
    name: obj
    for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception)
}


_NO_ARGS: Final = encode([[], {}])


def encode_args(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Encode a call's arguments; unsupported values raise before anything is sent."""
    if not args and not kwargs:
        return _NO_ARGS
    try:
        return encode([list(args), kwargs])
    except UnsupportedValue as exc:
        raise UnsupportedValue(f"argument of {method}(): {exc}") from None


def decode_args(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """Inverse of :func:`encode_args`."""
    args, kwargs = decode(data)
    return args, kwargs


def encode_error(exc: BaseException, *, ran: bool = False) -> list[str]:
    """``[kind, class name, message]``: duro and built-in errors keep their class.

    *ran*: the error comes out of a turn that ran (an object's method raised it, perhaps
    passing on a refusal of its own outgoing call), so it never says ``not_run``.
    """
    if isinstance(exc, ObjectError):
        return ["object", exc.type_name, exc.message]
    name = type(exc).__name__
    if isinstance(exc, DuroError) and _DURO_ERRORS.get(name) is type(exc):
        return ["duro-not-run" if exc.not_run and not ran else "duro", name, exc.message]
    message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    if _BUILTIN_ERRORS.get(name) is type(exc):
        return ["builtin", name, message]
    return ["object", name, message]


def decode_error(err: list[str]) -> BaseException:
    """Rebuild the exception described by :func:`encode_error`."""
    kind, name, message = err
    if kind in ("duro", "duro-not-run") and name in _DURO_ERRORS and name != "ObjectError":
        exc: DuroError = _DURO_ERRORS[name](message)
        exc.not_run = kind == "duro-not-run"
        return exc
    if kind == "builtin" and name in _BUILTIN_ERRORS:
        try:
            return _BUILTIN_ERRORS[name](message)
        except Exception:  # noqa: BLE001 - a built-in that cannot be rebuilt from a message
            return ObjectError(name, message)
    return ObjectError(name, message)


_NONE: Final = encode(None)


def encode_result(value: Any) -> bytes:
    """Encode a method's return value (``UnsupportedValue`` names the culprit)."""
    if value is None:
        return _NONE
    try:
        return encode(value)
    except UnsupportedValue as exc:
        raise UnsupportedValue(f"return value: {exc}") from None


def pack_error(exc: BaseException, *, ran: bool = False) -> bytes:
    """An error envelope (never confused with a value: it is not codec-tagged); *ran* as in
    :func:`encode_error`."""
    return b"\x00" + msgpack.packb(encode_error(exc, ran=ran))


def unpack(data: bytes) -> Any:
    """Decode a reply: a codec value, or raise the packed error."""
    if data == _NONE:
        return None
    if data[:1] == b"\x00":
        raise decode_error(msgpack.unpackb(data[1:]))
    return decode(data)
