"""Validation and encoding of storage keys, and the byte-range helpers shared by every backend."""

from __future__ import annotations

from typing import Final

from duro.errors import InvalidKey

__all__ = ["MAX_KEY_BYTES", "encode_key", "key_range", "successor"]

MAX_KEY_BYTES: Final = 2048


def encode_key(key: object) -> bytes:
    """Check *key* and return its UTF-8 bytes (what backends store and order by)."""
    if type(key) is not str:
        raise InvalidKey(f"storage keys must be str, not {type(key).__name__} ({key!r:.80})")
    try:
        data = key.encode()
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"key {key!r:.80} is not valid UTF-8: {exc}", orig=exc) from exc
    if len(data) > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {len(data):,} UTF-8 bytes; the limit is {MAX_KEY_BYTES:,}")
    return data


def successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with *prefix*.

    ``None`` means there is none (the prefix is empty or all ``0xff``): the range is unbounded.
    """
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


def key_range(
    *,
    start: str | None = None,
    start_after: str | None = None,
    end: str | None = None,
    prefix: str | None = None,
) -> tuple[bytes | None, bytes | None]:
    """Turn ``list()`` bounds into one half-open byte range ``[lo, hi)`` (``None`` = unbounded).

    ``start`` is inclusive, ``start_after`` exclusive, ``end`` exclusive; ``prefix`` narrows
    the range further. Raises ``ValueError`` if both ``start`` and ``start_after`` are given.
    """
    if start is not None and start_after is not None:
        raise ValueError("list(): give start or start_after, not both")
    lo: bytes | None = None
    hi: bytes | None = None
    if start is not None:
        lo = encode_key(start)
    elif start_after is not None:
        lo = encode_key(start_after) + b"\x00"
    if end is not None:
        hi = encode_key(end)
    if prefix is not None:
        p = encode_key(prefix)
        ps = successor(p)
        lo = p if lo is None or p > lo else lo
        if ps is not None:
            hi = ps if hi is None or ps < hi else hi
    return lo, hi
