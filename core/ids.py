"""Object IDs: 32 bytes shown as 64 lowercase hex characters.

The first 24 bytes are the body (a hash of the name for named IDs, random for unique IDs); the
last 8 bytes tie the ID to its namespace, so :func:`id_from_string` can refuse an ID minted by
another namespace.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Final

from duro.errors import InvalidObjectId

__all__ = ["ObjectId", "id_from_name", "id_from_string", "new_unique_id"]

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_BODY: Final = 24


def _ns_key(namespace: str) -> bytes:
    return hashlib.sha256(namespace.encode()).digest()


@dataclass(frozen=True, slots=True)
class ObjectId:
    """The identity of one durable object in one namespace.

    ``str(oid)`` is 64 lowercase hex characters; ``oid.name`` is the name it was made from,
    or ``None``. Equality and hashing use the namespace and the hex string only.
    """

    namespace: str
    hex: str
    name: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.hex

    def __repr__(self) -> str:
        extra = f", name={self.name!r}" if self.name is not None else ""
        return f"ObjectId({self.namespace!r}, {self.hex[:12]}…{extra})"


def _make(namespace: str, body: bytes, name: str | None) -> ObjectId:
    key = _ns_key(namespace)
    tag = hashlib.blake2b(body, digest_size=8, key=key).digest()
    return ObjectId(namespace, (body + tag).hex(), name)


def id_from_name(namespace: str, name: str) -> ObjectId:
    """The deterministic ID for *name* in *namespace* (the same in every process)."""
    if not isinstance(name, str):
        raise InvalidObjectId(f"object names must be str, not {type(name).__name__}")
    body = hashlib.blake2b(name.encode(), digest_size=_BODY, key=_ns_key(namespace)).digest()
    return _make(namespace, body, name)


def new_unique_id(namespace: str) -> ObjectId:
    """A random, unguessable ID (192 random bits)."""
    return _make(namespace, secrets.token_bytes(_BODY), None)


def id_from_string(namespace: str, s: str) -> ObjectId:
    """Parse a 64-hex ID string, checking its format and that *namespace* minted it."""
    if not isinstance(s, str) or not _HEX64.fullmatch(s):
        raise InvalidObjectId(
            f"{s!r:.80} is not an object ID: expected 64 lowercase hex characters"
        )
    raw = bytes.fromhex(s)
    expected = _make(namespace, raw[:_BODY], None)
    if not secrets.compare_digest(expected.hex, s):
        raise InvalidObjectId(f"ID {s[:12]}… was not minted by namespace {namespace!r}")
    return expected
