"""Key layout of the ``lmdb://`` backend: object prefixes, long keys, ordered scans, alarm times.

Every row of one object in the ``kv`` sub-database is stored under a fixed-length **object
prefix** (:data:`PREFIX_LEN` = 40 bytes: an 8-byte hash of the namespace, then the 32 bytes of
the object ID), so an object's rows are contiguous and sorted like its user keys.

LMDB 0.9 refuses keys longer than 511 bytes, but duro keys may have 2,048 UTF-8 bytes. A user
key ``k`` is therefore stored under the LMDB key ``E(k)``:

- **short** keys (at most :data:`HEAD_LEN` = 463 bytes): ``prefix ‖ k``; the value is the raw
  value. Such LMDB keys are at most 503 bytes long.
- **long** keys: ``prefix ‖ k[:463] ‖ h(k)`` with ``h`` an 8-byte BLAKE2b hash, exactly
  :data:`LONG_LEN` = 511 bytes. The value is a *slot*: a list of ``(k[463:], value)`` records
  (normally one; several only if two long keys sharing their first 463 bytes collide in ``h``,
  so a hash collision never loses data).

The length of an LMDB key tells short from long. ``E`` keeps byte order between any two keys
except two long keys with the same 463-byte *head*: those form a **group** of adjacent LMDB
keys ordered by hash. Every short key ``s`` sorts correctly against a group with head ``P``:
``s = P`` sorts before it (``P`` is a proper prefix), and any other short key differs from
``P`` within its first 463 bytes. Scans read a whole group, sort it by full key, then merge it
in place — so forward and reverse scans with bounds and limits return exact byte order.
Groups are only large when many keys share a 463-byte prefix; reading one costs one cursor
step per key.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import TYPE_CHECKING, Final

from duro.backends.base import ObjectRef
from duro.errors import InvalidObjectId
from duro.keys import successor

if TYPE_CHECKING:
    import lmdb

__all__ = [
    "HASH_LEN",
    "HEAD_LEN",
    "LONG_LEN",
    "PREFIX_LEN",
    "decode_time",
    "delete_prefix",
    "delete_value",
    "encode_time",
    "get_value",
    "is_object_id",
    "namespace_hash",
    "object_prefix",
    "put_value",
    "scan",
]

NS_HASH_LEN: Final = 8
PREFIX_LEN: Final = NS_HASH_LEN + 32
"""Bytes of the object prefix: namespace hash ‖ object ID."""
HASH_LEN: Final = 8
"""Bytes of the key hash that ends the LMDB key of a long user key."""
LONG_LEN: Final = 511
"""Length of every long-key LMDB key (LMDB 0.9's maximum key size)."""
HEAD_LEN: Final = LONG_LEN - PREFIX_LEN - HASH_LEN
"""Bytes of a user key kept in its LMDB key; longer keys are long keys."""
_GROUP_LEN: Final = PREFIX_LEN + HEAD_LEN

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_REC: Final = struct.Struct(">II")
_TIME: Final = struct.Struct(">d")
_U64: Final = struct.Struct(">Q")
_SIGN: Final = 1 << 63
_ALL: Final = (1 << 64) - 1

Rows = list[tuple[bytes, bytes]]


def namespace_hash(namespace: str) -> bytes:
    """The 8-byte hash of *namespace* that starts each of its objects' prefixes."""
    return hashlib.blake2b(namespace.encode(), digest_size=NS_HASH_LEN, person=b"duro-ns").digest()


def is_object_id(text: str) -> bool:
    """Whether *text* is 64 lowercase hex characters."""
    return _HEX64.fullmatch(text) is not None


_prefixes: dict[tuple[str, str], bytes] = {}
_PREFIX_CACHE: Final = 16384


def object_prefix(ref: ObjectRef) -> bytes:
    """The 40-byte prefix of *ref*'s rows; raises :class:`InvalidObjectId` for a malformed ID."""
    key = (ref.namespace, ref.id)
    prefix = _prefixes.get(key)
    if prefix is None:
        if not isinstance(ref.id, str) or not _HEX64.fullmatch(ref.id):
            raise InvalidObjectId(
                f"object IDs are 64 lowercase hex characters, not {ref.id!r:.80}")
        prefix = namespace_hash(ref.namespace) + bytes.fromhex(ref.id)
        if len(_prefixes) >= _PREFIX_CACHE:
            _prefixes.clear()
        _prefixes[key] = prefix
    return prefix


def encode_time(t: float) -> bytes:
    """8 bytes that sort like the float *t* (IEEE 754 with the sign handled)."""
    (bits,) = _U64.unpack(_TIME.pack(t))
    bits = bits ^ _ALL if bits & _SIGN else bits | _SIGN
    return _U64.pack(bits)


def decode_time(data: bytes) -> float:
    """The inverse of :func:`encode_time` (reads the first 8 bytes)."""
    (bits,) = _U64.unpack_from(data)
    bits = bits ^ _SIGN if bits & _SIGN else bits ^ _ALL
    (t,) = _TIME.unpack(_U64.pack(bits))
    return float(t)


def _long_key(prefix: bytes, key: bytes) -> bytes:
    digest = hashlib.blake2b(key, digest_size=HASH_LEN, person=b"duro-key").digest()
    return prefix + key[:HEAD_LEN] + digest


def _parse_slot(data: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        rlen, vlen = _REC.unpack_from(data, pos)
        pos += _REC.size
        rest = data[pos:pos + rlen]
        pos += rlen
        out.append((rest, data[pos:pos + vlen]))
        pos += vlen
    return out


def _pack_slot(entries: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(_REC.pack(len(r), len(v)) + r + v for r, v in entries)


def get_value(txn: lmdb.Transaction[bytes], db: lmdb._Database, prefix: bytes,
              key: bytes) -> bytes | None:
    """The value of user key *key*, or ``None``."""
    if len(key) <= HEAD_LEN:
        return txn.get(prefix + key, db=db)
    data = txn.get(_long_key(prefix, key), db=db)
    if data is None:
        return None
    rest = key[HEAD_LEN:]
    for r, v in _parse_slot(data):
        if r == rest:
            return v
    return None


def put_value(txn: lmdb.Transaction[bytes], db: lmdb._Database, prefix: bytes, key: bytes,
              value: bytes) -> bytes | None:
    """Store *value* under *key*; return the previous value or ``None``."""
    if len(key) <= HEAD_LEN:
        return txn.replace(prefix + key, value, db=db)
    lkey = _long_key(prefix, key)
    data = txn.get(lkey, db=db)
    entries = _parse_slot(data) if data is not None else []
    rest = key[HEAD_LEN:]
    old: bytes | None = None
    for i, (r, v) in enumerate(entries):
        if r == rest:
            old = v
            entries[i] = (rest, value)
            break
    else:
        entries.append((rest, value))
    txn.put(lkey, _pack_slot(entries), db=db)
    return old


def delete_value(txn: lmdb.Transaction[bytes], db: lmdb._Database, prefix: bytes,
                 key: bytes) -> bytes | None:
    """Delete *key*; return its value, or ``None`` if it did not exist."""
    if len(key) <= HEAD_LEN:
        return txn.pop(prefix + key, db=db)
    lkey = _long_key(prefix, key)
    data = txn.get(lkey, db=db)
    if data is None:
        return None
    entries = _parse_slot(data)
    rest = key[HEAD_LEN:]
    for i, (r, v) in enumerate(entries):
        if r == rest:
            del entries[i]
            if entries:
                txn.put(lkey, _pack_slot(entries), db=db)
            else:
                txn.delete(lkey, db=db)
            return v
    return None


def delete_prefix(txn: lmdb.Transaction[bytes], db: lmdb._Database, prefix: bytes) -> None:
    """Delete every row under *prefix*."""
    cur = txn.cursor(db)
    if not cur.set_range(prefix):
        return
    while cur.key()[:PREFIX_LEN] == prefix:
        if not cur.delete():
            break


def _group(head: bytes, slots: list[bytes], reverse: bool) -> Rows:
    rows = [(head + r, v) for data in slots for r, v in _parse_slot(data)]
    rows.sort(reverse=reverse)
    return rows


def scan(
    txn: lmdb.Transaction[bytes],
    db: lmdb._Database,
    prefix: bytes,
    lo: bytes | None,
    hi: bytes | None,
    *,
    reverse: bool = False,
    limit: int | None = None,
) -> Rows:
    """Rows of user keys ``lo <= key < hi`` under *prefix*, in byte order or reversed."""
    if limit is not None and limit <= 0:
        return []
    if reverse:
        return _scan_reverse(txn.cursor(db), prefix, lo, hi, limit)
    return _scan_forward(txn.cursor(db), prefix, lo, hi, limit)


def _emit(out: Rows, rows: Rows, lo: bytes | None, hi: bytes | None, limit: int | None,
          reverse: bool) -> bool:
    """Append the rows inside the bounds; return True when the scan is complete."""
    for k, v in rows:
        if reverse:
            if lo is not None and k < lo:
                return True
            if hi is not None and k >= hi:
                continue
        else:
            if hi is not None and k >= hi:
                return True
            if lo is not None and k < lo:
                continue
        out.append((k, v))
        if limit is not None and len(out) >= limit:
            return True
    return False


def _scan_forward(cur: lmdb.Cursor[bytes], prefix: bytes, lo: bytes | None, hi: bytes | None,
                  limit: int | None) -> Rows:
    out: Rows = []
    ok = cur.set_range(prefix + (lo[:HEAD_LEN] if lo is not None else b""))
    while ok:
        k = cur.key()
        if k[:PREFIX_LEN] != prefix:
            break
        if len(k) != LONG_LEN:
            rows = [(k[PREFIX_LEN:], cur.value())]
            ok = cur.next()
        else:
            head = k[:_GROUP_LEN]
            slots = [cur.value()]
            while (ok := cur.next()) and len(k := cur.key()) == LONG_LEN \
                    and k[:_GROUP_LEN] == head:
                slots.append(cur.value())
            rows = _group(head[PREFIX_LEN:], slots, reverse=False)
        if _emit(out, rows, lo, hi, limit, reverse=False):
            break
    return out


def _scan_reverse(cur: lmdb.Cursor[bytes], prefix: bytes, lo: bytes | None, hi: bytes | None,
                  limit: int | None) -> Rows:
    out: Rows = []
    if hi is None:
        after = successor(prefix)
        ok = cur.prev() if after is not None and cur.set_range(after) else cur.last()
    elif len(hi) <= HEAD_LEN:
        # E(k) < prefix ‖ hi exactly when k < hi.
        ok = cur.prev() if cur.set_range(prefix + hi) else cur.last()
    else:
        # Start after the short key hi[:HEAD_LEN] and the whole group with that head.
        head = prefix + hi[:HEAD_LEN]
        ok = cur.set_range(head)
        while ok and cur.key()[:_GROUP_LEN] == head:
            ok = cur.next()
        ok = cur.prev() if ok else cur.last()
    while ok:
        k = cur.key()
        if k[:PREFIX_LEN] != prefix:
            break
        if len(k) != LONG_LEN:
            rows = [(k[PREFIX_LEN:], cur.value())]
            ok = cur.prev()
        else:
            group = k[:_GROUP_LEN]
            slots = [cur.value()]
            while (ok := cur.prev()) and len(k := cur.key()) == LONG_LEN \
                    and k[:_GROUP_LEN] == group:
                slots.append(cur.value())
            rows = _group(group[PREFIX_LEN:], slots, reverse=True)
        if _emit(out, rows, lo, hi, limit, reverse=True):
            break
    return out
