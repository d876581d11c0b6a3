"""Day-two operations on stored objects: the read-only inspector and shared helpers.

:func:`inspect_backend`, :func:`inspect_namespace` and :func:`inspect_object` read a backend
through the :class:`~duro.backends.Backend` contract's read methods only (``namespaces``,
``list_objects``, ``read_lease``, ``scan``, ``get_alarm``): they never take a lease and never
write. Values are decoded with the codec and rendered faithfully by :func:`json_value`
(``bytes`` and ``datetime`` are tagged, never turned into look-alike strings).

The helpers :func:`open_existing`, :func:`iter_objects` and :func:`object_digest` are shared by
``duro export``/``import`` (:mod:`duro.dump`) and ``duro migrate`` (:mod:`duro.migrate`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duro.backends import Backend, BackendURL, Lease, LeaseHeld, ObjectInfo, ObjectRef, open_backend
from duro.backends.base import MIGRATE_OWNER_PREFIX
from duro.codec import decode
from duro.errors import ConfigError, DuroError, InvalidObjectId
from duro.ids import id_from_name
from duro.keys import successor

__all__ = [
    "MIGRATE_OWNER_PREFIX",
    "KeyRow",
    "NamespaceSummary",
    "ObjectDetail",
    "acquire_waiting",
    "display_key",
    "find_object",
    "inspect_backend",
    "inspect_namespace",
    "inspect_object",
    "iter_objects",
    "json_value",
    "object_digest",
    "open_existing",
]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PAGE = 500
"""Lease owners written by ``duro migrate`` (a sealed source object is leased to one)."""


def open_existing(url: str) -> Backend:
    """Open the backend at *url*, refusing to create a new file-based store by accident.

    ``sqlite``/``lmdb`` URLs that name a missing path raise :class:`ConfigError` (reading a
    typo'd path must not create an empty database there).
    """
    parsed = BackendURL.parse(url)
    base = parsed.scheme.split("+", 1)[0]
    if base in ("sqlite", "lmdb") and parsed.path and not parsed.netloc:
        path = Path(parsed.path)
        if not path.is_absolute():
            path = Path.cwd() / path
        if not path.exists():
            raise ConfigError(f"no {base} store at {path}: check the backend URL {url!r}")
    return open_backend(url)


def iter_objects(
    backend: Backend, namespace: str, *, page: int = _PAGE
) -> Iterator[ObjectInfo]:
    """Every live object of *namespace*, by ID, fetched *page* at a time."""
    after: str | None = None
    while True:
        infos = backend.list_objects(namespace, after=after, limit=page)
        yield from infos
        if len(infos) < page:
            return
        after = infos[-1].ref.id


def find_object(backend: Backend, namespace: str, name_or_id: str) -> ObjectInfo | None:
    """The registry entry of one object, named by its 64-hex ID or by the name it was made from.

    A 64-hex string is an ID if such an object exists, else it is taken as a name.
    """
    candidates = []
    if _HEX64.fullmatch(name_or_id):
        candidates.append(name_or_id)
    candidates.append(id_from_name(namespace, name_or_id).hex)
    for oid in candidates:
        # IDs greater than the 63-char prefix: the wanted ID is among the first 16 + 1.
        for info in backend.list_objects(namespace, after=oid[:-1], limit=17):
            if info.ref.id == oid:
                return info
    return None


def object_digest(rows: Iterable[tuple[bytes, bytes]], alarm: float | None) -> str:
    """SHA-256 over an object's rows in key order and its alarm: equal iff equal contents."""
    h = hashlib.sha256()
    for k, v in rows:
        h.update(len(k).to_bytes(4, "big"))
        h.update(k)
        h.update(len(v).to_bytes(8, "big"))
        h.update(v)
    h.update(b"alarm:" + (b"-" if alarm is None else float(alarm).hex().encode()))
    return h.hexdigest()


# -- rendering ----------------------------------------------------------------------------------


def display_key(key: bytes) -> str:
    """A stored key as text (keys are UTF-8; anything else is shown with escapes)."""
    return key.decode("utf-8", errors="backslashreplace")


def json_value(value: Any) -> Any:
    """*value* (decoded by the codec) as JSON, with tags where JSON would lose information.

    ``bytes`` → ``{"$bytes": base64}``, ``datetime`` → ``{"$datetime": iso}`` (naive stays
    naive), non-finite floats → ``{"$float": "nan"|"inf"|"-inf"}``, a dict whose keys start with
    ``$`` → ``{"$dict": {...}}``.
    """
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        out = {k: json_value(v) for k, v in value.items()}
        if any(k.startswith("$") for k in out):
            return {"$dict": out}
        return out
    return value


def _decoded(raw: bytes) -> tuple[Any, str | None]:
    try:
        return decode(raw), None
    except DuroError as exc:
        return None, str(exc)


# -- inspect ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NamespaceSummary:
    """One namespace: how many live objects, their keys and bytes."""

    name: str
    objects: int
    keys: int
    size: int

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"namespace": self.name, "objects": self.objects, "keys": self.keys,
                "size": self.size}


@dataclass(frozen=True)
class KeyRow:
    """One stored key: its text, raw size, and decoded value (or why it cannot be decoded)."""

    key: str
    raw: bytes
    value: Any
    error: str | None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form: ``value`` via :func:`json_value`, or ``error`` and ``raw``."""
        out: dict[str, Any] = {"key": self.key, "bytes": len(self.raw)}
        if self.error is None:
            out["value"] = json_value(self.value)
        else:
            out["error"] = self.error
            out["raw"] = base64.b64encode(self.raw).decode()
        return out


@dataclass(frozen=True)
class ObjectDetail:
    """One object: registry entry, lease, alarm, and (a prefix of) its keys."""

    info: ObjectInfo
    rows: list[KeyRow]
    truncated: bool

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**info_json(self.info), "rows": [r.as_json() for r in self.rows],
                "truncated": self.truncated}


def _ts(t: float | None) -> str | None:
    if t is None:
        return None
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return None


def info_json(info: ObjectInfo) -> dict[str, Any]:
    """An :class:`ObjectInfo` as JSON (times as epoch seconds plus ISO text)."""
    return {
        "namespace": info.ref.namespace, "id": info.ref.id, "name": info.name,
        "keys": info.keys, "size": info.size,
        "alarm": info.alarm, "alarm_iso": _ts(info.alarm),
        "last_active": info.last_active, "last_active_iso": _ts(info.last_active),
        "lease": {"epoch": info.epoch, "owner": info.owner, "address": info.address,
                  "until": info.lease_until, "until_iso": _ts(info.lease_until)},
    }


def inspect_backend(backend: Backend) -> list[NamespaceSummary]:
    """Every namespace with its object, key and byte counts."""
    out = []
    for ns in backend.namespaces():
        n = keys = size = 0
        for info in iter_objects(backend, ns):
            n += 1
            keys += info.keys
            size += info.size
        out.append(NamespaceSummary(ns, n, keys, size))
    return out


def inspect_namespace(
    backend: Backend, namespace: str, *, prefix: str | None = None, limit: int | None = None
) -> list[ObjectInfo]:
    """Objects of *namespace* (whose name or ID starts with *prefix*), at most *limit*."""
    out: list[ObjectInfo] = []
    for info in iter_objects(backend, namespace):
        if prefix and not (info.ref.id.startswith(prefix)
                           or (info.name is not None and info.name.startswith(prefix))):
            continue
        out.append(info)
        if limit is not None and len(out) >= limit:
            break
    return out


def inspect_object(
    backend: Backend,
    namespace: str,
    name_or_id: str,
    *,
    prefix: str | None = None,
    limit: int | None = None,
) -> ObjectDetail:
    """One object's registry entry, lease, alarm and keys (those starting with *prefix*).

    Raises :class:`InvalidObjectId` if no such object is stored.
    """
    info = find_object(backend, namespace, name_or_id)
    if info is None:
        raise InvalidObjectId(
            f"no object {name_or_id!r} in namespace {namespace!r} "
            "(give its name or its 64-hex ID; `duro inspect NAMESPACE` lists them)")
    ref = info.ref
    lo = prefix.encode() if prefix else None
    hi = successor(lo) if lo else None
    fetch = None if limit is None else limit + 1
    raw = backend.scan(ref, lo, hi, limit=fetch)
    truncated = limit is not None and len(raw) > limit
    rows = []
    for k, v in raw[:limit] if limit is not None else raw:
        value, error = _decoded(bytes(v))
        rows.append(KeyRow(display_key(bytes(k)), bytes(v), value, error))
    # The lease and alarm are read live (the registry row may be a moment older).
    lease = backend.read_lease(ref)
    alarm = backend.get_alarm(ref)
    if lease is not None:
        info = ObjectInfo(ref, info.name, lease.epoch, lease.owner, lease.address, lease.until,
                          info.last_active, alarm, info.size, info.keys)
    return ObjectDetail(info, rows, truncated)


def acquire_waiting(
    backend: Backend,
    ref: ObjectRef,
    *,
    owner: str,
    name: str | None,
    ttl: float,
    wait: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    margin: float = 1.0,
    adopt_prefix: str | None = None,
) -> Lease:
    """Take *ref*'s lease as *owner*, waiting (at most *wait* s) for a live holder's to end.

    A live lease is never broken: the holder keeps it until its recorded end plus *margin*
    (the drift margin, as the runtime's challengers do). A lease held by an owner whose name
    starts with *adopt_prefix* (an earlier, finished ``duro migrate`` run's seal) is taken over
    at once. Raises :class:`LeaseHeld` when *wait* runs out.
    """
    deadline = clock() + wait
    while True:
        now = clock()
        try:
            return backend.acquire(ref, owner=owner, address=None, now=now - margin,
                                   until=now + ttl, name=name)
        except LeaseHeld as held:
            cur = held.lease
            if adopt_prefix and cur.owner and cur.owner.startswith(adopt_prefix) \
                    and cur.owner != owner:
                # Re-acquiring as that (finished) owner bumps the epoch: still fenced.
                lease = backend.acquire(ref, owner=cur.owner, address=None, now=now - margin,
                                        until=now + ttl, name=name)
                return lease
            left = deadline - now
            if left <= 0:
                raise
            sleep(min(max(cur.until + margin - now, 0.05), left, 1.0))
