"""The S3 backend's storage format: key layout, records and the materialized object state.

Layout under ``<prefix>/`` (``<q>`` = percent-quoted, ``<hh>`` = 2 hex digits of a hash that
spreads objects over S3 partitions, ``<nsh>`` = a hash of the namespace)::

    duro-format.json                         {"duro": "s3", "format": 1}
    o/<hh>/<nsh>/<q id>/lease.json           lease: epoch, owner, address, until, name (CAS)
    o/<hh>/<nsh>/<q id>/log/<seq:020d>       immutable records, created with If-None-Match: *
    o/<hh>/<nsh>/<q id>/snap/<seq:020d>      checkpoints: the whole state as of <seq>, or for
                                             a large one a head naming its parts
    o/<hh>/<nsh>/<q id>/part/<seq:020d>/<token>/<i:06d>   the parts of a large checkpoint
    ns/<q ns>/<q id>                         registry marker (listing a namespace = one LIST)
    alarms/<yyyymmddhhmm>/<q ns>/<q id>/<epoch:020d>.<token>   alarm index hints, by minute

A checkpoint larger than the ``part_bytes`` option is cut into parts, each PUT on its own
(unconditionally: the token makes their keys unique to one attempt), and only then is its head
``snap/<seq>`` created; the head carries the parts' count, total size and SHA-256, so a loader
either finds every part of a checkpoint it can see or retries. Parts are collected with the
checkpoints they belong to (and orphans of failed attempts with the next checkpoint above).

Log records and checkpoints are msgpack maps carrying ``duro``, ``format``, ``kind``, ``seq``;
records also ``epoch`` and a unique write id ``wid``. Kinds: ``fence`` (a new owner's first
write) and ``batch``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, unquote

import msgpack

from duro.backends.base import FORMAT_VERSION, UNCHANGED, Batch, Lease, check_format_version
from duro.errors import BackendError

__all__ = [
    "Layout",
    "LeaseDoc",
    "ObjectState",
    "SnapshotParts",
    "alarm_bucket",
    "decode_record",
    "decode_snapshot",
    "encode_batch",
    "encode_fence",
    "encode_snapshot",
    "join_parts",
    "snapshot_head",
    "snapshot_parts",
]

SEQ_DIGITS: Final = 20
LOG_MAGIC: Final = "s3-log"
SNAP_MAGIC: Final = "s3-snap"
LEASE_MAGIC: Final = "s3-lease"
FORMAT_MAGIC: Final = "s3"


def _q(text: str) -> str:
    return quote(text, safe="")


def alarm_bucket(at: float) -> str:
    """The UTC minute bucket (``yyyymmddhhmm``) of alarm time *at*."""
    clamped = min(max(at, 0.0), 253402300799.0) if math.isfinite(at) else 0.0
    return time.strftime("%Y%m%d%H%M", time.gmtime(clamped))


class Layout:
    """Key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.strip("/")
        self.root = f"{self.prefix}/" if self.prefix else ""

    @property
    def format_key(self) -> str:
        """The format marker."""
        return f"{self.root}duro-format.json"

    def base(self, ns: str, oid: str) -> str:
        """The folder of one object (ending with ``/``)."""
        hh = hashlib.sha256(f"{ns}\0{oid}".encode()).hexdigest()[:2]
        nsh = hashlib.sha256(ns.encode()).hexdigest()[:12]
        return f"{self.root}o/{hh}/{nsh}/{_q(oid)}/"

    @staticmethod
    def seq_name(seq: int) -> str:
        """A zero-padded sequence number (byte order = numeric order)."""
        return f"{seq:0{SEQ_DIGITS}d}"

    def parse_seq(self, key: str, folder: str) -> int:
        """The sequence number in *key* (which lies under *folder*), or a clear error."""
        tail = key[len(folder):]
        if len(tail) != SEQ_DIGITS or not tail.isdigit():
            raise BackendError(
                f"unexpected object {key!r} under the duro S3 prefix {self.prefix!r}: not a "
                "duro log record or checkpoint (is another program writing under this prefix?)")
        return int(tail)

    def ns_prefix(self, ns: str | None = None) -> str:
        """The registry folder of *ns*, or of all namespaces."""
        return f"{self.root}ns/" if ns is None else f"{self.root}ns/{_q(ns)}/"

    def marker(self, ns: str, oid: str) -> str:
        """The registry marker of one object."""
        return f"{self.ns_prefix(ns)}{_q(oid)}"

    @property
    def alarms_prefix(self) -> str:
        """The folder of the alarm index."""
        return f"{self.root}alarms/"

    def alarm_key(self, at: float, ns: str, oid: str, epoch: int, token: str) -> str:
        """The index hint for an alarm at *at* set by the owner at *epoch* (unique by *token*)."""
        return (f"{self.alarms_prefix}{alarm_bucket(at)}/{_q(ns)}/{_q(oid)}/"
                f"{epoch:0{SEQ_DIGITS}d}.{token}")

    def parse_alarm_key(self, key: str) -> tuple[str, str, str, int]:
        """``(bucket, ns, id, epoch)`` of an alarm index key."""
        parts = key[len(self.alarms_prefix):].split("/")
        if len(parts) == 4:
            parts[3] = parts[3].split(".", 1)[0]
        if len(parts) != 4 or not parts[0].isdigit() or not parts[3].isdigit():
            raise BackendError(
                f"unexpected object {key!r} in the duro alarm index under {self.prefix!r}")
        return parts[0], unquote(parts[1]), unquote(parts[2]), int(parts[3])

    @staticmethod
    def unquote(text: str) -> str:
        """Undo the quoting of a namespace or ID in a key."""
        return unquote(text)


# -- lease documents -----------------------------------------------------------------------------


@dataclass(slots=True)
class LeaseDoc:
    """The contents of ``lease.json``."""

    ns: str
    id: str
    epoch: int = 0
    owner: str | None = None
    address: str | None = None
    until: float = 0.0
    name: str | None = None
    registered: bool = False
    wid: str = ""
    gc: int = 0
    """The GC boundary: log slots below it may have been deleted (raised only by the owner)."""

    def lease(self) -> Lease:
        """As the contract's :class:`Lease`."""
        return Lease(self.epoch, self.owner, self.address, self.until)

    def encode(self) -> bytes:
        """JSON bytes."""
        return json.dumps({
            "duro": LEASE_MAGIC, "format": FORMAT_VERSION, "ns": self.ns, "id": self.id,
            "epoch": self.epoch, "owner": self.owner, "address": self.address,
            "until": self.until, "name": self.name, "registered": self.registered,
            "wid": self.wid, "gc": self.gc,
        }, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes, key: str) -> LeaseDoc:
        """Parse ``lease.json``; a clear error if it is not duro's."""
        try:
            d = json.loads(body)
            ok = isinstance(d, dict) and d.get("duro") == LEASE_MAGIC
        except ValueError:
            ok = False
        if not ok:
            raise BackendError(f"{key!r} is not a duro lease record (foreign or corrupt object "
                               "under the duro S3 prefix)")
        check_format_version(int(d.get("format", 0)), key)
        try:
            return cls(str(d["ns"]), str(d["id"]), int(d["epoch"]), d.get("owner"),
                       d.get("address"), float(d.get("until", 0.0)), d.get("name"),
                       bool(d.get("registered", False)), str(d.get("wid", "")),
                       int(d.get("gc", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"corrupt duro lease record {key!r}: {exc}", orig=exc) from exc


# -- log records and checkpoints -----------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """A decoded log record."""

    seq: int
    kind: str  # "fence" | "batch"
    epoch: int
    wid: str
    body: dict[str, Any]
    size: int


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(body: bytes, key: str, magic: str, what: str) -> dict[str, Any]:
    try:
        d = msgpack.unpackb(body, raw=False)
        ok = isinstance(d, dict) and d.get("duro") == magic
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated exception types on garbage
        ok = False
    if not ok:
        raise BackendError(f"{key!r} is not a duro {what} (foreign or corrupt object under the "
                           "duro S3 prefix)")
    check_format_version(int(d.get("format", 0)), key)
    return d  # type: ignore[no-any-return]


def encode_fence(seq: int, epoch: int, wid: str, end: int | None = None) -> bytes:
    """A fence record: a new owner's first write.

    A new owner writes fences at a window of slots ``seq .. end`` at once; the first of them
    that a replay reaches is the fence, and the replay then skips to ``end + 1`` (the other
    slots of the window hold more fences of the same epoch, or nothing).
    """
    d: dict[str, Any] = {"duro": LOG_MAGIC, "format": FORMAT_VERSION, "kind": "fence",
                         "seq": seq, "epoch": epoch, "wid": wid}
    if end is not None and end > seq:
        d["end"] = end
    return _pack(d)


def encode_batch(seq: int, epoch: int, wid: str, batch: Batch, alarm_key: str | None,
                 *, tomb: bool = False) -> bytes:
    """A batch record holding *batch* (``lease_until`` is not part of it)."""
    d: dict[str, Any] = {"duro": LOG_MAGIC, "format": FORMAT_VERSION, "kind": "batch",
                         "seq": seq, "epoch": epoch, "wid": wid}
    if batch.delete_all:
        d["da"] = True
    if batch.deletes:
        d["del"] = sorted(batch.deletes)
    if batch.puts:
        d["put"] = [[k, v] for k, v in batch.puts.items()]
    if batch.alarm is not UNCHANGED:
        d["alarm"] = batch.alarm
        d["akey"] = alarm_key
    if batch.active_at is not None:
        d["active"] = batch.active_at
    if tomb:
        d["tomb"] = True
    return _pack(d)


def decode_record(body: bytes, key: str, seq: int) -> Record:
    """Parse a log record stored at *seq*."""
    d = _unpack(body, key, LOG_MAGIC, "log record")
    try:
        rec = Record(int(d["seq"]), str(d["kind"]), int(d["epoch"]), str(d["wid"]), d, len(body))
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"corrupt duro log record {key!r}: {exc}", orig=exc) from exc
    if rec.seq != seq or rec.kind not in ("fence", "batch"):
        raise BackendError(f"corrupt duro log record {key!r}: holds seq {rec.seq}, "
                           f"kind {rec.kind!r}")
    return rec


@dataclass
class ObjectState:
    """One object's state, exactly as the log prefix ``1 .. next-1`` defines it."""

    keys: list[bytes] = field(default_factory=list)  # sorted
    values: dict[bytes, bytes] = field(default_factory=dict)
    alarm: float | None = None
    alarm_key: str | None = None
    last_active: float | None = None
    next: int = 1
    fence_epoch: int = 0
    """Epoch of the latest fence record: the only epoch that may append."""
    snap_seq: int = 0
    snap_kind: str = "fence"
    """Kind of the record at ``snap_seq`` (GC keeps that record, removes it with the next)."""
    batch_seqs: list[int] = field(default_factory=list)
    """Batch records after the checkpoint (and at it), not yet garbage-collected."""
    batches_since_snap: int = 0
    bytes_since_snap: int = 0
    snap_bytes: int = 0
    """Encoded size of the latest checkpoint (taken or loaded): the next one is due only once
    about as many log bytes piled up, which bounds the write amplification of big objects."""

    @property
    def size(self) -> int:
        """Bytes of keys and values."""
        return sum(len(k) + len(v) for k, v in self.values.items())

    def apply(self, rec: Record) -> None:
        """Apply the record at slot ``next`` (which *rec* must be) and advance."""
        assert rec.seq == self.next, (rec.seq, self.next)
        self.next = rec.seq + 1
        if rec.kind == "fence":
            self.fence_epoch = max(self.fence_epoch, rec.epoch)
            self.next = max(self.next, int(rec.body.get("end", rec.seq)) + 1)
            return
        d = rec.body
        self.batch_seqs.append(rec.seq)
        self.batches_since_snap += 1
        self.bytes_since_snap += rec.size
        if d.get("da"):
            self.keys.clear()
            self.values.clear()
            self.alarm = None
            self.alarm_key = None
        for k in d.get("del", ()):
            if self.values.pop(k, None) is not None:
                del self.keys[bisect.bisect_left(self.keys, k)]
        for k, v in d.get("put", ()):
            if k not in self.values:
                bisect.insort(self.keys, k)
            self.values[k] = v
        if "alarm" in d:
            self.alarm = None if d["alarm"] is None else float(d["alarm"])
            self.alarm_key = d.get("akey") if self.alarm is not None else None
        if d.get("active") is not None:
            self.last_active = float(d["active"])

    def scan(self, lo: bytes | None, hi: bytes | None, reverse: bool,
             limit: int | None) -> list[tuple[bytes, bytes]]:
        """Rows with ``lo <= key < hi``."""
        i = 0 if lo is None else bisect.bisect_left(self.keys, lo)
        j = len(self.keys) if hi is None else bisect.bisect_left(self.keys, hi)
        keys = self.keys[i:j]
        if reverse:
            keys.reverse()
        if limit is not None:
            keys = keys[:limit]
        return [(k, self.values[k]) for k in keys]

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """Values of the keys that exist."""
        return {k: self.values[k] for k in keys if k in self.values}


def encode_snapshot(st: ObjectState, seq: int, kind: str) -> bytes:
    """A checkpoint of *st* (which must be the state as of *seq*; *kind* = record *seq*'s)."""
    return _pack({
        "duro": SNAP_MAGIC, "format": FORMAT_VERSION, "seq": seq, "kind_at_seq": kind,
        "kv": [[k, st.values[k]] for k in st.keys], "alarm": st.alarm, "akey": st.alarm_key,
        "active": st.last_active, "fence_epoch": st.fence_epoch,
    })


def decode_snapshot(body: bytes, key: str, seq: int) -> ObjectState:
    """Rebuild the state a checkpoint holds."""
    d = _unpack(body, key, SNAP_MAGIC, "checkpoint")
    try:
        if int(d["seq"]) != seq:
            raise ValueError(f"holds seq {d['seq']}")
        kv = [(bytes(k), bytes(v)) for k, v in d["kv"]]
        st = ObjectState(
            keys=[k for k, _ in kv], values=dict(kv),
            alarm=None if d.get("alarm") is None else float(d["alarm"]),
            alarm_key=d.get("akey"),
            last_active=None if d.get("active") is None else float(d["active"]),
            next=seq + 1, fence_epoch=int(d.get("fence_epoch", 0)), snap_seq=seq,
            snap_kind=str(d.get("kind_at_seq", "fence")), snap_bytes=len(body),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"corrupt duro checkpoint {key!r}: {exc}", orig=exc) from exc
    if st.keys != sorted(st.keys):
        raise BackendError(f"corrupt duro checkpoint {key!r}: keys out of order")
    if st.snap_kind == "batch":
        st.batch_seqs.append(seq)
    return st


@dataclass(frozen=True, slots=True)
class SnapshotParts:
    """What the head of a checkpoint stored in parts says about them."""

    token: str
    count: int
    size: int
    sha256: str


def snapshot_head(seq: int, body: bytes, token: str, count: int) -> bytes:
    """The head ``snap/<seq>`` of a checkpoint *body* stored as *count* parts under *token*."""
    return _pack({"duro": SNAP_MAGIC, "format": FORMAT_VERSION, "seq": seq,
                  "parts": {"token": token, "count": count, "size": len(body),
                            "sha256": hashlib.sha256(body).hexdigest()}})


def snapshot_parts(body: bytes, key: str, seq: int) -> SnapshotParts | None:
    """The parts a checkpoint head names, or ``None`` if *body* is a whole checkpoint."""
    d = _unpack(body, key, SNAP_MAGIC, "checkpoint")
    p = d.get("parts")
    if p is None:
        return None
    try:
        if int(d["seq"]) != seq:
            raise ValueError(f"holds seq {d['seq']}")
        parts = SnapshotParts(str(p["token"]), int(p["count"]), int(p["size"]),
                              str(p["sha256"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"corrupt duro checkpoint head {key!r}: {exc}", orig=exc) from exc
    if parts.count < 1 or not parts.token.isalnum():
        raise BackendError(f"corrupt duro checkpoint head {key!r}: {parts}")
    return parts


def join_parts(parts: SnapshotParts, bodies: list[bytes], key: str) -> bytes:
    """The checkpoint body reassembled from its parts, checked against the head."""
    body = b"".join(bodies)
    if len(body) != parts.size or hashlib.sha256(body).hexdigest() != parts.sha256:
        raise BackendError(f"corrupt duro checkpoint {key!r}: its {parts.count} parts do not "
                           f"add up to the {parts.size} bytes its head describes")
    return body
