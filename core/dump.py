"""``duro export`` / ``duro import``: a versioned, streaming JSON-lines dump of stored objects.

The format (version :data:`DUMP_VERSION`), one JSON document per line::

    {"t": "duro-dump", "version": 1, "storage_format": 1, "created": "<iso>", "namespaces": [...]}
    {"t": "object", "ns": "Counter", "id": "<64 hex>", "name": "alice" | null,
     "alarm": <epoch s> | null, "last_active": <epoch s> | null, "keys": <n>}
    {"t": "kv", "rows": [["<key, base64>", "<value, base64>"], ...]}     (0 or more chunks)
    {"t": "end", "keys": <n>, "sha256": "<digest of the rows and alarm>"}
    ...                                                                 (more objects)
    {"t": "footer", "objects": <count>}

Keys and values are the stored bytes, base64-encoded: the codec's bytes travel verbatim, so
every value type round-trips exactly, whatever backend reads or writes them. Floats (alarm,
last-active) are written with Python's shortest round-trip ``repr``.

Import is atomic per object: an object's lines are buffered until its ``end`` line checks out
(count and SHA-256), then the object is written on the destination under its lease, as one
batch that first deletes whatever the object held (``delete_all``), and the lease is released.
A corrupt or truncated line raises :class:`DumpError` naming the line; nothing of the object it
belongs to has been written. A dump whose ``version`` or ``storage_format`` is newer than this
duro's is refused before anything is written.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

from duro.backends import FORMAT_VERSION, Backend, Batch, LeaseHeld, ObjectRef
from duro.errors import DuroError
from duro.ops import acquire_waiting, iter_objects, object_digest

__all__ = [
    "DUMP_VERSION",
    "DumpError",
    "DumpObject",
    "ImportStats",
    "check_header",
    "export_lines",
    "import_dump",
    "parse_dump",
    "write_object",
]

DUMP_VERSION: Final = 1
"""The dump format this duro writes (and the newest it reads)."""
_CHUNK_ROWS: Final = 256
_CHUNK_BYTES: Final = 1 << 20


class DumpError(DuroError):
    """A dump is malformed, truncated, corrupt, or newer than this duro."""


@dataclass
class DumpObject:
    """One object as a dump holds it: raw rows in key order, alarm and registry metadata."""

    namespace: str
    id: str
    name: str | None
    alarm: float | None
    last_active: float | None
    rows: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def ref(self) -> ObjectRef:
        """The object's :class:`ObjectRef`."""
        return ObjectRef(self.namespace, self.id)

    def digest(self) -> str:
        """:func:`~duro.ops.object_digest` of the rows and alarm."""
        return object_digest(self.rows, self.alarm)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n"


def object_lines(obj: DumpObject) -> Iterator[str]:
    """The dump lines of one object."""
    yield _line({"t": "object", "ns": obj.namespace, "id": obj.id, "name": obj.name,
                 "alarm": obj.alarm, "last_active": obj.last_active, "keys": len(obj.rows)})
    chunk: list[list[str]] = []
    size = 0
    for k, v in obj.rows:
        chunk.append([_b64(k), _b64(v)])
        size += len(k) + len(v)
        if len(chunk) >= _CHUNK_ROWS or size >= _CHUNK_BYTES:
            yield _line({"t": "kv", "rows": chunk})
            chunk, size = [], 0
    if chunk:
        yield _line({"t": "kv", "rows": chunk})
    yield _line({"t": "end", "keys": len(obj.rows), "sha256": obj.digest()})


def read_object(backend: Backend, namespace: str, oid: str, name: str | None,
                last_active: float | None) -> DumpObject:
    """One object's rows and alarm as stored now (one scan: a consistent view of its rows)."""
    ref = ObjectRef(namespace, oid)
    rows = [(bytes(k), bytes(v)) for k, v in backend.scan(ref, None, None)]
    return DumpObject(namespace, oid, name, backend.get_alarm(ref), last_active, rows)


def export_lines(
    backend: Backend,
    namespaces: Iterable[str] | None = None,
    *,
    on_object: Callable[[DumpObject], None] | None = None,
) -> Iterator[str]:
    """The whole dump of *backend* (or of *namespaces*), line by line.

    Reads only (no lease is taken): an object written while it is exported is captured as one
    of its committed states for its rows; stop writers (or use ``duro migrate``) for a copy
    that is consistent across objects and with each object's alarm.
    """
    chosen = sorted(namespaces) if namespaces is not None else backend.namespaces()
    yield _line({"t": "duro-dump", "version": DUMP_VERSION, "storage_format": FORMAT_VERSION,
                 "created": dt.datetime.now(dt.UTC).isoformat(), "namespaces": chosen})
    count = 0
    for ns in chosen:
        for info in iter_objects(backend, ns):
            obj = read_object(backend, ns, info.ref.id, info.name, info.last_active)
            yield from object_lines(obj)
            count += 1
            if on_object is not None:
                on_object(obj)
    yield _line({"t": "footer", "objects": count})


# -- reading ------------------------------------------------------------------------------------


def _err(lineno: int, what: str) -> DumpError:
    return DumpError(f"dump line {lineno}: {what}")


def _opt_float(doc: dict[str, Any], key: str, lineno: int) -> float | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _err(lineno, f"{key!r} must be a number or null, not {v!r:.60}")
    return float(v)


def _str(doc: dict[str, Any], key: str, lineno: int, *, optional: bool = False) -> str | None:
    v = doc.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise _err(lineno, f"{key!r} must be a non-empty string, not {v!r:.60}")
    return v


def _unb64(text: object, lineno: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise _err(lineno, f"{what} must be a base64 string, not {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _err(lineno, f"{what} is not valid base64 ({exc})") from exc


def _check_header(doc: dict[str, Any], lineno: int) -> None:
    if doc.get("t") != "duro-dump":
        raise _err(lineno, "not a duro dump (the first line must be its header)")
    version = doc.get("version")
    storage = doc.get("storage_format")
    if not isinstance(version, int) or not isinstance(storage, int):
        raise _err(lineno, "the header lacks an integer version and storage_format")
    if version > DUMP_VERSION:
        raise _err(lineno, f"dump format {version} is newer than this duro reads "
                           f"({DUMP_VERSION}): upgrade duro (pip install -U duro)")
    if storage > FORMAT_VERSION:
        raise _err(lineno, f"the dump holds storage format {storage}, newer than this "
                           f"duro's {FORMAT_VERSION}: upgrade duro (pip install -U duro)")


def check_header(line: str) -> None:
    """Raise :class:`DumpError` unless *line* is a dump header this duro reads (checked before
    anything is opened or created)."""
    if not line:
        raise DumpError("the dump is empty (no header line)")
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _err(1, f"not valid JSON ({exc.msg}): not a duro dump") from exc
    if not isinstance(doc, dict):
        raise _err(1, "not a duro dump (the first line must be its header)")
    _check_header(doc, 1)


def parse_dump(lines: Iterable[str | bytes]) -> Iterator[DumpObject]:
    """Check and parse a dump, yielding each object once its ``end`` line has verified it.

    Raises :class:`DumpError` (naming the line) for anything malformed, truncated or newer
    than this duro; the object in progress at that point is never yielded.
    """
    it = iter(enumerate(lines, 1))
    header_seen = False
    obj: DumpObject | None = None
    obj_line = 0
    expected_keys = 0
    count = 0
    lineno = 0
    for lineno, raw in it:
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            raise _err(lineno, "empty line (the dump is corrupt)")
        if not text.endswith("\n"):
            raise _err(lineno, "the line is cut off (no newline): the dump is truncated")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _err(lineno, f"not valid JSON ({exc.msg} at column {exc.colno}): "
                               "the dump is corrupt or truncated") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("t"), str):
            raise _err(lineno, "expected a JSON object with a \"t\" (type) field")
        kind = doc["t"]
        if not header_seen:
            _check_header(doc, lineno)
            header_seen = True
            continue
        if kind == "object":
            if obj is not None:
                raise _err(lineno, f"object {obj.id[:12]}… (line {obj_line}) has no end line")
            ns = _str(doc, "ns", lineno)
            oid = _str(doc, "id", lineno)
            assert ns is not None and oid is not None
            keys = doc.get("keys")
            if not isinstance(keys, int) or isinstance(keys, bool) or keys < 0:
                raise _err(lineno, f"'keys' must be a count, not {keys!r:.60}")
            obj = DumpObject(ns, oid, _str(doc, "name", lineno, optional=True),
                             _opt_float(doc, "alarm", lineno),
                             _opt_float(doc, "last_active", lineno))
            obj_line, expected_keys = lineno, keys
        elif kind == "kv":
            if obj is None:
                raise _err(lineno, "key/value rows outside an object")
            rows = doc.get("rows")
            if not isinstance(rows, list):
                raise _err(lineno, "'rows' must be a list of [key, value] pairs")
            for i, pair in enumerate(rows):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise _err(lineno, f"row {i} is not a [key, value] pair")
                obj.rows.append((_unb64(pair[0], lineno, f"row {i} key"),
                                 _unb64(pair[1], lineno, f"row {i} value")))
        elif kind == "end":
            if obj is None:
                raise _err(lineno, "an end line outside an object")
            keys = doc.get("keys")
            if keys != expected_keys or len(obj.rows) != expected_keys:
                raise _err(lineno, f"object {obj.id[:12]}… (line {obj_line}) should hold "
                                   f"{expected_keys} keys but {len(obj.rows)} were read: "
                                   "the dump is corrupt")
            if doc.get("sha256") != obj.digest():
                raise _err(lineno, f"checksum mismatch for object {obj.id[:12]}… "
                                   f"(line {obj_line}): the dump is corrupt")
            keys_sorted = all(obj.rows[i][0] < obj.rows[i + 1][0]
                              for i in range(len(obj.rows) - 1))
            if not keys_sorted:
                raise _err(lineno, f"object {obj.id[:12]}… has duplicate or unordered keys")
            count += 1
            yield obj
            obj = None
        elif kind == "footer":
            if obj is not None:
                raise _err(lineno, f"object {obj.id[:12]}… (line {obj_line}) has no end line")
            if doc.get("objects") != count:
                raise _err(lineno, f"the footer counts {doc.get('objects')!r} objects but "
                                   f"{count} were read: the dump is corrupt")
            for extra, _raw in it:
                raise _err(extra, "data after the footer")
            return
        else:
            raise _err(lineno, f"unknown line type {kind!r}")
    if not header_seen:
        raise DumpError("the dump is empty (no header line)")
    if obj is not None:
        raise _err(lineno + 1, f"the dump ends inside object {obj.id[:12]}… (line {obj_line}):"
                               " it is truncated; that object was not imported")
    raise _err(lineno + 1, "the dump ends without its footer line: it is truncated")


# -- writing ------------------------------------------------------------------------------------


@dataclass
class ImportStats:
    """What an import did."""

    objects: int = 0
    keys: int = 0
    bytes: int = 0


def write_object(
    backend: Backend,
    obj: DumpObject,
    *,
    owner: str,
    ttl: float = 30.0,
    wait: float = 30.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Replace *obj* on *backend* atomically: lease, one ``delete_all`` batch, release.

    Waits (at most *wait* s) for a live owner's lease on the destination to end; raises
    :class:`DumpError` if it does not.
    """
    try:
        lease = acquire_waiting(backend, obj.ref, owner=owner, name=obj.name, ttl=ttl,
                                wait=wait, clock=clock, sleep=sleep)
    except LeaseHeld as held:
        raise DumpError(
            f"object {obj.namespace}/{obj.id[:12]}… is owned by a live process "
            f"({held.lease.owner} at {held.lease.address}) on the destination; stop it "
            "or retry later") from None
    try:
        batch = Batch(puts=dict(obj.rows), delete_all=True, alarm=obj.alarm,
                      active_at=obj.last_active)
        backend.commit(obj.ref, lease.epoch, batch)
    finally:
        backend.release(obj.ref, lease.epoch)


def import_dump(
    backend: Backend | None,
    lines: Iterable[str | bytes],
    *,
    wait: float = 30.0,
    on_object: Callable[[DumpObject], None] | None = None,
    owner: str | None = None,
) -> ImportStats:
    """Import a dump into *backend* object by object (``None``: only check the dump).

    Stops at the first bad line with :class:`DumpError`; objects before it are imported in
    full, the object it belongs to not at all.
    """
    owner = owner or f"duro-import:{uuid.uuid4().hex[:12]}"
    stats = ImportStats()
    for obj in parse_dump(lines):
        if backend is not None:
            write_object(backend, obj, owner=owner, wait=wait)
        stats.objects += 1
        stats.keys += len(obj.rows)
        stats.bytes += sum(len(k) + len(v) for k, v in obj.rows)
        if on_object is not None:
            on_object(obj)
    return stats


def dump_to(backend: Backend, out: IO[str], namespaces: Iterable[str] | None = None, *,
            on_object: Callable[[DumpObject], None] | None = None) -> int:
    """Write the dump of *backend* to *out*; return the number of objects (*on_object* is
    called after each, e.g. for a progress bar)."""
    n = 0

    def count(obj: DumpObject) -> None:
        nonlocal n
        n += 1
        if on_object is not None:
            on_object(obj)

    for line in export_lines(backend, namespaces, on_object=count):
        out.write(line)
    return n
