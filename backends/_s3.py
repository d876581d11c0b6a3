"""``s3://bucket/prefix?endpoint_url=...&region=...``: a fenced, log-structured store on S3.

Each object is a short log of immutable records created with ``If-None-Match: *`` at
consecutive sequence numbers, plus periodic checkpoints and a lease record updated by
compare-and-swap (SlateDB's fencing scheme, scaled down; see :mod:`duro.backends._s3_log` for
the key layout):

- **acquire** bumps the epoch in ``lease.json`` by CAS, loads the log from the checkpoint at
  the lease's GC boundary, then writes *fence* records at a window of next slots at once.
- **commit** is ONE create-only PUT of a batch record at the next slot. On 412, or when the
  outcome is unknown (409, 5xx, timeout), the slot is read back: our own write id means it
  landed; a higher epoch means :class:`~duro.errors.Fenced`; a lower (or equal) epoch is
  another writer's acknowledged record, which is replayed before trying the next slot.
- reads are served from the state materialized in memory (loaded at acquire, kept current by
  our own commits); a non-owner read (inspection, the registry, the alarm scheduler) catches up
  from S3 first (one LIST, plus GETs of new records).
- every ``checkpoint_batches`` batches or ``checkpoint_bytes`` bytes a checkpoint ``snap/<seq>``
  is written in the background; then the GC boundary in ``lease.json`` is raised to ``seq`` by
  CAS, and only then are older batch records and checkpoints deleted. Fence records are never
  deleted, and the newest record always survives.

Why a stale owner can never land an acknowledged write that is lost (the fencing argument).
Slots are filled create-only, so a slot's content never changes; it can only disappear through
GC. GC is fenced: the owner at epoch ``e`` deletes slots below ``s`` only after writing
``snap/s`` and after a CAS of ``lease.json`` that sets ``gc = s`` *and requires the stored
epoch to still be* ``e``. A new owner B bumps the epoch (a CAS on the same record) and reads
``gc = G`` in the same step; from then on no older owner can raise the boundary, so nothing
at or above ``G`` is deleted by anyone but B (or owners after B). B loads from ``snap/G`` and
puts its fence at slots above ``G``: it can never land in a collected slot, and it can never be
collected under an older owner (the old bug: a fence PUT that got 412, then 404 after the old
owner's GC, re-PUT into a slot below the old owner's checkpoint where no loader looks). The old
owner A appends one slot at a time at the log's end; every slot below B's first fence is
either A's (replayed by B before B's acquire returns) or older, so A's next append meets B's
fence and gets :class:`Fenced`. For a writer at its own next slot, 412 then 404 therefore means
a newer owner replayed and collected that slot: it is reported as Fenced (or as an unknown
outcome if an earlier attempt of ours may be what was collected), never treated as free.
A zombie that never stops writing cannot make acquire chase it: once B bumped the epoch it can
no longer collect anything, and B fences a window of slots ``n .. n+k-1`` with parallel PUTs
(every fence carries ``end = n+k-1``; a replay takes the first one it meets as the fence and
skips to ``end + 1``, so unfilled slots of the window are harmless). A writes one slot per round
trip and can take only a prefix of the window; windows grow (1, 2, 8, 32, 64...), so B wins
within a few rounds, and gives up with :class:`~duro.errors.BackendUnavailable` after a bound.
The extra cost is on acquire and on checkpoints (one lease CAS each), never on the hot path.

LIST order: log catch-up (``StartAfter`` and the contiguity check), :meth:`S3Backend.list_objects`
(pages in LIST order) and :meth:`S3Backend.due_alarms` (stops at the first bucket after *now*)
rely on the lexicographic LIST order of S3 general purpose buckets, which S3 directory buckets
(Express One Zone) do not give. Use a general purpose bucket.

Options: ``endpoint_url``, ``region`` (default from boto3's chain, else ``us-east-1``),
``checkpoint_batches`` (64), ``checkpoint_bytes`` (1 MiB), ``timeout`` (seconds per request, 10),
``retries`` (4), ``max_connections`` (64), ``lease_slack`` (seconds, 0: a commit that
asks to extend the lease skips the lease PUT while the stored lease reaches within this much of
the requested end; it eats into the caller's drift margin, so keep it well below it),
``sync`` (accepted; an S3 write is durable once the PUT returned 200).
Credentials come only from boto3's chain (or ``AWS_ENDPOINT_URL``); never put them in the URL.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import ClassVar, Final

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from duro.backends._s3_faults import FaultInjector, RequestCounts
from duro.backends._s3_log import (
    Layout,
    LeaseDoc,
    ObjectState,
    Record,
    alarm_bucket,
    decode_record,
    decode_snapshot,
    encode_batch,
    encode_fence,
    encode_snapshot,
    join_parts,
    snapshot_head,
    snapshot_parts,
)
from duro.backends._s3_store import Outcome, PutResult, S3Store
from duro.backends.base import (
    FORMAT_VERSION,
    Backend,
    BackendURL,
    Batch,
    Lease,
    LeaseHeld,
    ObjectInfo,
    ObjectRef,
    check_format_version,
)
from duro.errors import BackendError, BackendUnavailable, ConfigError, DuroError, Fenced

__all__ = ["S3Backend"]

log = logging.getLogger("duro.backends.s3")

OPTIONS: Final = ("endpoint_url", "region", "sync", "checkpoint_batches", "checkpoint_bytes",
                  "timeout", "retries", "max_connections", "lease_slack", "part_bytes",
                  "min_rate", "checkpoint_ratio")
_LOG_CAP: Final = 16
"""A checkpoint is due after ``_LOG_CAP * checkpoint_batches`` batches whatever their size."""
_LOAD_ATTEMPTS: Final = 6
_MAX_CACHED: Final = 4096
_FENCE_WINDOWS: Final = (1, 2, 8, 32, 64, 64, 64)
"""Sizes of the successive slot windows a new owner fences (see :meth:`S3Backend._fence`)."""


def _wid() -> str:
    return secrets.token_hex(8)


class _Obj:
    """Per-object bookkeeping. Lock order: ``io`` → ``lease_lock`` → ``data``."""

    def __init__(self, ref: ObjectRef, base: str) -> None:
        self.ref = ref
        self.base = base
        self.io = threading.Lock()
        """Held for every S3 step that reads or extends the log."""
        self.lease_lock = threading.Lock()
        self.data = threading.Lock()
        """Held while the materialized state changes or is read by an owner."""
        self.state: ObjectState | None = None
        self.owned: int | None = None
        """The epoch we hold and have fenced at: the state is current, reads need no I/O."""
        self.lease: LeaseDoc | None = None
        self.lease_etag: str | None = None
        self.checkpointing = False

    @property
    def lease_key(self) -> str:
        return self.base + "lease.json"

    @property
    def log_folder(self) -> str:
        return self.base + "log/"

    @property
    def snap_folder(self) -> str:
        return self.base + "snap/"

    @property
    def part_folder(self) -> str:
        return self.base + "part/"

    def part_key(self, seq: int, token: str, i: int) -> str:
        return f"{self.part_folder}{Layout.seq_name(seq)}/{token}/{i:06d}"

    def log_key(self, seq: int) -> str:
        return self.log_folder + Layout.seq_name(seq)

    def snap_key(self, seq: int) -> str:
        return self.snap_folder + Layout.seq_name(seq)

    def short(self) -> str:
        return f"{self.ref.namespace}/{self.ref.id[:12]}…"


class S3Backend(Backend):
    """Objects as fenced logs on S3 (or any S3-compatible store with conditional writes)."""

    scheme = "s3"
    persistent: ClassVar[bool] = True
    multi_process: ClassVar[bool] = True
    multi_host: ClassVar[bool] = True
    garbage_collects_log: ClassVar[bool] = True
    """Old log records are deleted after a checkpoint (the consistency suite's ``gc-race``)."""

    def __init__(self, url: BackendURL, store: S3Store, layout: Layout, *,
                 checkpoint_batches: int, checkpoint_bytes: int, max_connections: int,
                 lease_slack: float = 0.0, part_bytes: int = 8 * 2**20,
                 checkpoint_ratio: float = 1.0) -> None:
        self.url = url
        self._store = store
        self._layout = layout
        self._checkpoint_batches = checkpoint_batches
        self._checkpoint_bytes = checkpoint_bytes
        self._part_bytes = part_bytes
        self._checkpoint_ratio = checkpoint_ratio
        self._lease_slack = lease_slack
        self._objs: dict[ObjectRef, _Obj] = {}
        self._objs_lock = threading.Lock()
        # Leaf I/O (GETs, DELETEs) fans out here; tasks here never wait on other tasks.
        self._io_pool = ThreadPoolExecutor(max(4, min(32, max_connections)),
                                           thread_name_prefix="duro-s3-io")
        # Checkpoints and per-object registry work; these may wait on the I/O pool.
        self._task_pool = ThreadPoolExecutor(4, thread_name_prefix="duro-s3-task")
        self._background: set[Future[None]] = set()
        self._background_lock = threading.Lock()
        self._closed = False

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: BackendURL) -> S3Backend:
        """Open ``s3://bucket/prefix?...``; check the bucket and the storage format."""
        url.check_options(OPTIONS)
        url.sync_level()
        if "@" in url.netloc:
            raise ConfigError("credentials never go in an s3:// URL: use boto3's credential "
                              "chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...)")
        bucket = url.netloc
        if not bucket:
            raise ConfigError(f"{url.raw!r}: an s3:// URL needs a bucket: s3://bucket/prefix")
        endpoint = url.options.get("endpoint_url") or None
        timeout = url.number("timeout", 10.0, minimum=0.001)
        retries = int(url.number("retries", 4))
        max_connections = max(1, int(url.number("max_connections", 64, minimum=1)))
        checkpoint_batches = max(1, int(url.number("checkpoint_batches", 64, minimum=1)))
        checkpoint_bytes = int(url.number("checkpoint_bytes", float(2**20), minimum=1))
        lease_slack = url.number("lease_slack", 0.0)
        part_bytes = int(url.number("part_bytes", float(8 * 2**20), minimum=1024))
        min_rate = url.number("min_rate", float(2**20), minimum=1.0)
        checkpoint_ratio = url.number("checkpoint_ratio", 1.0)
        bulk_timeout = timeout + part_bytes / min_rate
        env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        try:
            session = boto3.session.Session()
            region = url.options.get("region") or session.region_name or "us-east-1"
            config = Config(
                connect_timeout=timeout, read_timeout=timeout,
                retries={"total_max_attempts": 1, "mode": "standard"},
                max_pool_connections=max_connections,
                s3={"addressing_style": "path"} if (endpoint or env_endpoint) else None,
            )
            client = session.client("s3", endpoint_url=endpoint, region_name=region,
                                     config=config)
            bulk = session.client("s3", endpoint_url=endpoint, region_name=region,
                                  config=config.merge(Config(connect_timeout=timeout,
                                                             read_timeout=bulk_timeout)))
        except (BotoCoreError, ClientError, ValueError) as exc:
            raise ConfigError(f"cannot configure S3 for {url.raw!r}: {exc}", orig=exc) from exc
        shown = endpoint or env_endpoint or f"AWS S3 ({region})"
        store = S3Store(client, bucket, shown, retries=retries, timeout=timeout,
                        bulk_client=bulk, bulk_timeout=bulk_timeout)
        backend = cls(url, store, Layout(url.path), checkpoint_batches=checkpoint_batches,
                      checkpoint_bytes=checkpoint_bytes, max_connections=max_connections,
                      lease_slack=lease_slack, part_bytes=part_bytes,
                      checkpoint_ratio=checkpoint_ratio)
        try:
            backend._check_format()
        except BaseException:
            backend.close()
            raise
        return backend

    def _check_format(self) -> None:
        key = self._layout.format_key
        body = json.dumps({"duro": "s3", "format": FORMAT_VERSION}).encode()
        for _ in range(3):
            got = self._store.get(key)
            if got is not None:
                try:
                    d = json.loads(got[0])
                    ok = isinstance(d, dict) and d.get("duro") == "s3"
                except ValueError:
                    ok = False
                if not ok:
                    raise BackendError(
                        f"{self._store.where(key)} exists but is not a duro format marker: the "
                        f"prefix {self._layout.prefix!r} holds foreign data; pick another prefix")
                check_format_version(int(d.get("format", 0)), self._store.where(key))
                return
            res = self._store.put_conditional(key, body)
            if res.outcome is Outcome.OK:
                return
        raise BackendUnavailable(f"could not read or create {self._store.where(key)}")

    def cluster_key(self, proposed: bytes) -> bytes:
        """The cluster key kept in ``duro-cluster-key`` beside the format marker, created once."""
        key = self._layout.root + "duro-cluster-key"
        for _ in range(3):
            got = self._store.get(key)
            if got is not None:
                return got[0]
            if self._store.put_conditional(key, proposed).outcome is Outcome.OK:
                return proposed
        raise BackendUnavailable(f"could not read or create {self._store.where(key)}")

    # -- test and measurement hooks -------------------------------------------------------------

    @property
    def request_counts(self) -> RequestCounts:
        """Counts of the HTTP requests sent to S3, per operation (for cost figures)."""
        return self._store.counts

    @property
    def _faults(self) -> FaultInjector:
        """Deterministic fault injection (tests only)."""
        return self._store.faults

    # -- per-object helpers ---------------------------------------------------------------------

    def _obj(self, ref: ObjectRef) -> _Obj:
        if self._closed:
            raise BackendError("the s3 backend is closed")
        with self._objs_lock:
            o = self._objs.get(ref)
            if o is None:
                if len(self._objs) >= _MAX_CACHED:
                    self._evict()
                o = self._objs[ref] = _Obj(ref, self._layout.base(ref.namespace, ref.id))
            return o

    def _evict(self) -> None:
        """Forget cached states of objects we do not own (caller holds ``_objs_lock``)."""
        for ref, o in list(self._objs.items()):
            if o.owned is None and not o.checkpointing and not o.io.locked():
                del self._objs[ref]
            if len(self._objs) < _MAX_CACHED // 2:
                break

    def _get_many_keys(self, keys: Sequence[str]) -> list[tuple[bytes, str] | None]:
        if len(keys) <= 1:
            return [self._store.get(k) for k in keys]
        return list(self._io_pool.map(self._store.get, keys))

    def _set_state(self, o: _Obj, st: ObjectState) -> None:
        with o.data:
            o.state = st

    def _catch_up(self, o: _Obj, st: ObjectState) -> bool:
        """Apply the records after ``st.next - 1``; False if GC raced us (reload)."""
        start_after = o.log_key(st.next - 1) if st.next > 1 else None
        seqs = [self._layout.parse_seq(k, o.log_folder)
                for k in self._store.list_keys(o.log_folder, start_after=start_after)]
        if not seqs:
            return True
        if seqs[0] != st.next:
            return False
        keys = [o.log_key(s) for s in seqs]
        bodies = self._get_many_keys(keys)
        recs: list[Record] = []
        for seq, key, got in zip(seqs, keys, bodies, strict=True):
            if got is None:
                return False
            recs.append(decode_record(got[0], key, seq))
        with o.data:
            for rec in recs:
                if rec.seq < st.next:
                    continue  # the rest of a new owner's fence window
                if rec.seq != st.next:
                    return False  # a hole: collected while we listed
                st.apply(rec)
        return True

    def _load_full(self, o: _Obj, base: int = 0) -> ObjectState:
        """Load the newest checkpoint and the log after it; from checkpoint *base* if given.

        A new owner passes the GC boundary from the lease it just took: the checkpoint there
        exists (nobody else can raise the boundary and collect it now), and replaying from it
        puts every later batch record into our state, so our own GC collects them even if the
        old owner wrote a newer checkpoint that it was no longer allowed to collect below.
        """
        for _ in range(_LOAD_ATTEMPTS):
            if base:
                seqs = [base]
                base = 0  # if it is gone after all, fall back to the newest checkpoint
            else:
                seqs = [self._layout.parse_seq(k, o.snap_folder)
                        for k in self._store.list_keys(o.snap_folder)]
            st = ObjectState()
            if seqs:
                loaded = self._read_snapshot(o, max(seqs))
                if loaded is None:
                    continue  # a newer checkpoint replaced it meanwhile
                st = loaded
            if self._catch_up(o, st):
                return st
        raise BackendUnavailable(
            f"object {o.short()}: its log kept changing while it was loaded; retry")

    def _read_snapshot(self, o: _Obj, seq: int) -> ObjectState | None:
        """The checkpoint at *seq* (whole, or reassembled from its parts), or ``None`` if it
        or one of its parts is gone (collected after a newer checkpoint)."""
        key = o.snap_key(seq)
        got = self._store.get(key, bulk=True)
        if got is None:
            return None
        parts = snapshot_parts(got[0], key, seq)
        if parts is None:
            return decode_snapshot(got[0], key, seq)
        keys = [o.part_key(seq, parts.token, i) for i in range(parts.count)]
        bodies = (list(self._io_pool.map(lambda k: self._store.get(k, bulk=True), keys))
                  if len(keys) > 1 else [self._store.get(keys[0], bulk=True)])
        if any(b is None for b in bodies):
            return None
        body = join_parts(parts, [b[0] for b in bodies if b is not None], key)
        return decode_snapshot(body, key, seq)

    def _refresh(self, o: _Obj) -> ObjectState:
        """Bring the cached state up to date with S3 (caller holds ``o.io``)."""
        if o.state is None or not self._catch_up(o, o.state):
            self._set_state(o, self._load_full(o))
        assert o.state is not None
        return o.state

    def _read_state(self, ref: ObjectRef) -> tuple[_Obj, ObjectState]:
        """The state for a read: the owner's in memory, else caught up from S3."""
        o = self._obj(ref)
        st = o.state
        if o.owned is not None and st is not None:
            return o, st
        with o.io:
            return o, self._refresh(o)

    def _writer_state(self, o: _Obj, epoch: int) -> ObjectState:
        """The state to append to with *epoch* (caller holds ``o.io``), or raise Fenced."""
        if o.owned == epoch and o.state is not None:
            return o.state
        st = self._refresh(o)
        if st.fence_epoch != epoch:
            raise Fenced(f"object {o.short()} is now at epoch {st.fence_epoch}; ours was {epoch}")
        return st

    def _land(self, o: _Obj, seq: int, body: bytes, wid: str, res: PutResult) -> Record:
        """The record that occupies slot *seq* after our create-only PUT of *body* ended *res*.

        That is our own record (it landed, maybe on an earlier attempt), or another writer's.
        An unknown outcome is settled by reading the slot back and, if it is empty, putting
        again. A slot that was taken (412) and is then gone (404) was collected by a newer
        owner's GC, which only happens below a GC boundary that owner raised after our epoch
        ended: :class:`Fenced` (or, if an earlier attempt of ours had an unknown outcome and so
        may be what was collected, :class:`BackendUnavailable`).
        """
        key = o.log_key(seq)
        unknown = 0
        while True:
            if res.outcome is Outcome.OK:
                return decode_record(body, key, seq)
            try:
                got = self._store.get(key)
            except BackendUnavailable:
                got = None
                if res.outcome is not Outcome.UNKNOWN:
                    res = PutResult(Outcome.UNKNOWN, error=res.error)
            if got is not None:
                return decode_record(got[0], key, seq)
            if res.outcome is Outcome.PRECONDITION_FAILED:
                o.owned = None
                if unknown:
                    raise BackendUnavailable(
                        f"object {o.short()}: slot {seq} was collected by a newer owner; whether "
                        "our earlier attempt landed there is unknown", orig=res.error)
                raise Fenced(f"object {o.short()}: slot {seq} was taken and then collected by a "
                             "newer owner")
            unknown += 1
            if unknown > self._store.retries:
                o.owned = None  # the outcome is unknown: re-read the log before trusting it
                raise BackendUnavailable(
                    f"object {o.short()}: the outcome of writing {self._store.where(key)} is "
                    f"unknown after {unknown} attempts", orig=res.error)
            self._store.sleep_backoff(unknown)
            res = self._store.put_conditional(key, body)

    def _take(self, o: _Obj, st: ObjectState, rec: Record, wid: str, epoch: int) -> bool:
        """Apply the record found at ``st.next``; True if it is ours, Fenced if newer."""
        with o.data:
            if rec.wid != wid and rec.epoch > epoch:
                o.owned = None
                raise Fenced(f"object {o.short()}: slot {rec.seq} was taken by epoch "
                             f"{rec.epoch}; ours is {epoch}")
            st.apply(rec)
        if rec.wid != wid:
            log.debug("object %s: replayed epoch %d's record at slot %d", o.short(), rec.epoch,
                      rec.seq)
        return rec.wid == wid

    def _append(self, o: _Obj, st: ObjectState, epoch: int, wid: str,
                make_body: Callable[[int], bytes]) -> Record:
        """Create our record at the next free slot; return it once it landed.

        Raise :class:`Fenced` if a higher epoch took the slot; replay lower/equal-epoch records
        of other writers and move on; :class:`BackendUnavailable` if the outcome stays unknown.
        """
        while True:
            seq = st.next
            body = make_body(seq)
            rec = self._land(o, seq, body, wid, self._store.put_conditional(o.log_key(seq), body))
            if self._take(o, st, rec, wid, epoch):
                return rec

    def _fence(self, o: _Obj, st: ObjectState, epoch: int) -> None:
        """Write our fence where the log's replay reaches it (caller holds ``o.io``).

        Fences go to a window of slots ``n .. n+k-1`` at once (``n`` = the next slot we know
        of), all carrying ``end = n+k-1``. The old owner appends one slot at a time, so it can
        take only a prefix of the window before it hits one of ours; the first slot that holds
        our fence is *the* fence, and every replay skips from it to ``end + 1``. If the old
        owner took the whole window, the next window (larger) starts after it: a zombie that
        never stops writing cannot keep ahead of windows that grow faster than it appends.
        """
        wid = _wid()
        for k in _FENCE_WINDOWS:
            n = st.next
            end = n + k - 1
            bodies = [encode_fence(seq, epoch, wid, end) for seq in range(n, end + 1)]
            if k == 1:
                results = [self._store.put_conditional(o.log_key(n), bodies[0])]
            else:
                results = list(self._io_pool.map(
                    self._store.put_conditional, [o.log_key(n + i) for i in range(k)], bodies))
            for i, res in enumerate(results):
                seq = n + i
                if seq < st.next:
                    continue  # inside the window of a fence replayed just now
                if self._take(o, st, self._land(o, seq, bodies[i], wid, res), wid, epoch):
                    return
        raise BackendUnavailable(
            f"object {o.short()}: could not fence the log: the previous owner kept taking every "
            f"slot of {len(_FENCE_WINDOWS)} windows of up to {_FENCE_WINDOWS[-1]} slots")

    # -- leases ---------------------------------------------------------------------------------

    def _read_lease_doc(self, o: _Obj) -> tuple[LeaseDoc | None, str | None]:
        got = self._store.get(o.lease_key)
        if got is None:
            return None, None
        doc = LeaseDoc.decode(got[0], self._store.where(o.lease_key))
        if doc.ns != o.ref.namespace or doc.id != o.ref.id:
            raise BackendError(f"{self._store.where(o.lease_key)} names object {doc.ns}/{doc.id},"
                               f" not {o.ref.namespace}/{o.ref.id} (foreign or corrupt data)")
        return doc, got[1]

    def _put_lease(self, o: _Obj, new: LeaseDoc, etag: str | None) -> bool:
        """One CAS of ``lease.json``; True if *new* is stored (caller holds ``lease_lock``)."""
        res = self._store.put_conditional(o.lease_key, new.encode(), if_match=etag)
        if res.outcome is Outcome.OK:
            o.lease, o.lease_etag = new, res.etag
            return True
        if res.outcome is Outcome.UNKNOWN:
            doc, cur_etag = self._read_lease_doc(o)
            if doc is not None and doc.wid == new.wid:
                o.lease, o.lease_etag = new, cur_etag
                return True
        return False

    def _bump_lease(self, o: _Obj, owner: str, address: str | None, now: float, until: float,
                    name: str | None) -> LeaseDoc:
        ref = o.ref
        for attempt in range(self._store.retries + 4):
            doc, etag = self._read_lease_doc(o)
            if doc is None:
                doc = LeaseDoc(ref.namespace, ref.id)
            if doc.owner is not None and doc.owner != owner and doc.until > now:
                o.lease, o.lease_etag = doc, etag
                raise LeaseHeld(doc.lease())
            new = LeaseDoc(ref.namespace, ref.id, doc.epoch + 1, owner, address, until,
                           name if name is not None else doc.name, True, _wid())
            if not doc.registered:
                self._store.put(self._layout.marker(ref.namespace, ref.id), json.dumps(
                    {"ns": ref.namespace, "id": ref.id, "epoch": new.epoch}).encode())
            if self._put_lease(o, new, etag):
                return new
            if attempt:
                self._store.sleep_backoff(attempt)
        raise BackendUnavailable(f"object {o.short()}: could not take the lease (contention)")

    def _cas_lease(self, o: _Obj, epoch: int, change: Callable[[LeaseDoc], LeaseDoc], *,
                   stale_ok: bool) -> bool:
        """Apply *change* to the lease if it is still at *epoch* (caller holds ``lease_lock``).

        Returns False (``stale_ok``) or raises Fenced if the epoch moved on.
        """
        doc, etag = o.lease, o.lease_etag
        if doc is None or doc.epoch != epoch:
            doc, etag = self._read_lease_doc(o)
        for attempt in range(self._store.retries + 4):
            if doc is None or doc.epoch != epoch:
                if stale_ok:
                    return False
                current = doc.epoch if doc is not None else 0
                raise Fenced(f"object {o.short()} is now at epoch {current}; ours was {epoch}")
            if self._put_lease(o, replace(change(doc), wid=_wid()), etag):
                return True
            if attempt:
                self._store.sleep_backoff(attempt)
            doc, etag = self._read_lease_doc(o)
        raise BackendUnavailable(f"object {o.short()}: could not update the lease (contention)")

    def acquire(
        self,
        ref: ObjectRef,
        *,
        owner: str,
        address: str | None,
        now: float,
        until: float,
        name: str | None = None,
    ) -> Lease:
        """Bump the epoch by CAS, load checkpoint + log tail, then write a fence record."""
        o = self._obj(ref)
        with o.io:
            o.owned = None
            with o.lease_lock:
                doc = self._bump_lease(o, owner, address, now, until, name)
            epoch = doc.epoch
            if o.state is None or not self._catch_up(o, o.state):
                self._set_state(o, self._load_full(o, base=doc.gc))
            assert o.state is not None
            try:
                self._fence(o, o.state, epoch)
            except Fenced:
                with o.lease_lock:
                    cur, _ = self._read_lease_doc(o)
                raise LeaseHeld(cur.lease() if cur is not None else doc.lease()) from None
            o.owned = epoch
            return doc.lease()

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        """Extend the lease by CAS, checking the epoch."""
        o = self._obj(ref)
        with o.lease_lock:
            self._cas_lease(o, epoch, lambda d: replace(d, until=until), stale_ok=False)

    def release(self, ref: ObjectRef, epoch: int) -> None:
        """Clear the owner (keep the epoch) if *epoch* is still current."""
        o = self._obj(ref)
        with o.io:
            with o.lease_lock:
                self._cas_lease(o, epoch, lambda d: replace(d, owner=None, address=None,
                                                            until=0.0), stale_ok=True)
            if o.owned == epoch:
                o.owned = None

    def read_lease(self, ref: ObjectRef) -> Lease | None:
        """The lease as stored now (one GET)."""
        o = self._obj(ref)
        doc, _ = self._read_lease_doc(o)
        return doc.lease() if doc is not None and doc.epoch else None

    # -- reads ----------------------------------------------------------------------------------

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Values of the keys that exist."""
        o, st = self._read_state(ref)
        with o.data:
            return st.get_many(keys)

    def scan(
        self,
        ref: ObjectRef,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Rows with ``lo <= key < hi`` in byte order, or reversed."""
        o, st = self._read_state(ref)
        with o.data:
            return st.scan(lo, hi, reverse, limit)

    def get_alarm(self, ref: ObjectRef) -> float | None:
        """The alarm time, or None."""
        o, st = self._read_state(ref)
        with o.data:
            return st.alarm

    # -- writes ---------------------------------------------------------------------------------

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        """One create-only PUT of a batch record at the next slot (see the module docs).

        ``batch.lease_until`` renews ``lease.json`` by CAS *in parallel* with the log PUT (one
        PUT of latency, two of cost); it is skipped while the stored lease already reaches
        ``lease_until - lease_slack``. If the batch landed but the lease turned out to be lost,
        the commit raises :class:`BackendUnavailable` (the batch is durable, the lease is not
        ours: the caller must reset), never :class:`Fenced`, which means nothing landed.
        """
        o = self._obj(ref)
        with o.io:
            st = self._writer_state(o, epoch)
            renewal: Future[bool] | None = None
            if batch.lease_until is not None:
                cur = o.lease
                if (cur is None or cur.epoch != epoch
                        or cur.until + self._lease_slack < batch.lease_until):
                    renewal = self._io_pool.submit(self._extend_lease, o, epoch,
                                                   batch.lease_until)
            landed = False
            try:
                if batch or batch.active_at is not None:
                    self._commit_batch(o, st, ref, epoch, batch)
                    landed = True
            finally:
                if renewal is not None:
                    try:
                        renewal.result()
                    except DuroError as exc:
                        if not landed:
                            raise
                        o.owned = None
                        raise BackendUnavailable(
                            f"object {o.short()}: the batch landed but renewing the lease "
                            f"failed ({exc}); the instance must reset", orig=exc) from exc
            if landed:
                self._maybe_checkpoint(o, st, epoch)

    def _extend_lease(self, o: _Obj, epoch: int, until: float) -> bool:
        with o.lease_lock:
            return self._cas_lease(o, epoch, lambda d: replace(d, until=max(d.until, until)),
                                   stale_ok=False)

    def _commit_batch(self, o: _Obj, st: ObjectState, ref: ObjectRef, epoch: int,
                      batch: Batch) -> None:
        alarm_key: str | None = None
        if isinstance(batch.alarm, float | int):
            alarm_key = self._layout.alarm_key(float(batch.alarm), ref.namespace, ref.id, epoch,
                                               _wid())
            self._store.put(alarm_key, b"")  # the index hint goes in BEFORE the commit
        old_alarm_key = st.alarm_key
        wid = _wid()
        self._append(o, st, epoch, wid,
                     lambda seq: encode_batch(seq, epoch, wid, batch, alarm_key))
        if old_alarm_key is not None and old_alarm_key != st.alarm_key:
            self._store.delete(old_alarm_key)  # only AFTER the alarm is cleared or moved

    def _maybe_checkpoint(self, o: _Obj, st: ObjectState, epoch: int) -> None:
        """Start a background checkpoint if enough log piled up (caller holds ``o.io``)."""
        if o.checkpointing or not self._checkpoint_due(st):
            return
        seq = st.next - 1
        with o.data:
            body = encode_snapshot(st, seq, "batch" if seq in st.batch_seqs else "fence")
        old = [s for s in st.batch_seqs if s < seq]
        st.batch_seqs = [s for s in st.batch_seqs if s >= seq]
        st.batches_since_snap = st.bytes_since_snap = 0
        st.snap_seq = seq
        st.snap_bytes = len(body)
        o.checkpointing = True
        future = self._task_pool.submit(self._checkpoint, o, seq, body, old, epoch)
        with self._background_lock:
            self._background.add(future)
        future.add_done_callback(self._background_done)

    def _checkpoint_due(self, st: ObjectState) -> bool:
        """Whether enough log piled up for a checkpoint.

        ``checkpoint_batches`` batches or ``checkpoint_bytes`` bytes make one due, but only once
        the log since the last checkpoint is at least ``checkpoint_ratio`` times that
        checkpoint's size (or ``16 * checkpoint_batches`` batches long): rewriting a 16 MiB
        object after every MiB of changes would upload 16 bytes per byte written. With the
        default ratio 1, checkpoints add at most about one byte per byte of log.
        """
        if (st.batches_since_snap < self._checkpoint_batches
                and st.bytes_since_snap < self._checkpoint_bytes):
            return False
        return (st.bytes_since_snap >= self._checkpoint_ratio * st.snap_bytes
                or st.batches_since_snap >= _LOG_CAP * self._checkpoint_batches)

    def _background_done(self, future: Future[None]) -> None:
        with self._background_lock:
            self._background.discard(future)

    def _drain(self) -> None:
        """Wait until background checkpoints started so far are done (tests, benchmarks)."""
        with self._background_lock:
            pending = list(self._background)
        wait(pending)

    def _checkpoint(self, o: _Obj, seq: int, body: bytes, old: list[int], epoch: int) -> None:
        try:
            self._write_checkpoint(o, seq, body, old, epoch)
        except DuroError as exc:
            log.warning("object %s: checkpoint at %d (%d bytes) failed, the log is kept and "
                        "collected after a later checkpoint: %s", o.short(), seq, len(body), exc)
            with o.io:  # keep track of the batch records still to collect
                if o.state is not None:
                    o.state.batch_seqs[:0] = old
        finally:
            o.checkpointing = False

    def _write_checkpoint(self, o: _Obj, seq: int, body: bytes, old: list[int],
                          epoch: int) -> None:
        """PUT ``snap/<seq>``, raise the GC boundary to *seq* in the lease (a CAS that needs our
        *epoch*), then delete older batch records and checkpoints.

        The boundary goes up before anything is deleted, and only while *epoch* holds the
        lease: once a new owner has bumped the epoch, nothing at or above the boundary it read
        is ever deleted by an older owner (see the module docs).
        """
        key = o.snap_key(seq)
        head = body
        part_keys: list[str] = []
        if len(body) > self._part_bytes:
            token = _wid()
            n = self._part_bytes
            parts = [body[i:i + n] for i in range(0, len(body), n)]
            part_keys = [o.part_key(seq, token, i) for i in range(len(parts))]
            # each part within the bulk client's timeout (scaled to part_bytes); put() retries
            list(self._io_pool.map(lambda k, b: self._store.put(k, b, bulk=True),
                                   part_keys, parts))
            head = snapshot_head(seq, body, token, len(parts))
        for attempt in range(self._store.retries + 1):
            res = self._store.put_conditional(key, head, bulk=True)
            if res.outcome is Outcome.OK:
                break
            if res.outcome is Outcome.PRECONDITION_FAILED:
                # a checkpoint at seq exists (an earlier attempt of ours whose answer was lost,
                # or another writer's): the same state; parts this attempt wrote may be unused
                # (they are collected with the next checkpoint above seq)
                break
            self._store.sleep_backoff(attempt + 1)
        else:
            raise BackendUnavailable(f"could not write checkpoint {self._store.where(key)}")
        with o.lease_lock:
            ours = self._cas_lease(o, epoch, lambda d: replace(d, gc=max(d.gc, seq)),
                                   stale_ok=True)
        if not ours:
            log.info("object %s: not collecting below checkpoint %d: epoch %d no longer holds "
                     "the lease (the new owner collects from its own boundary)", o.short(), seq,
                     epoch)
            return
        doomed = [o.log_key(s) for s in old if s < seq]  # never fences, never the newest record
        doomed += [k for k in self._store.list_keys(o.snap_folder)
                   if self._layout.parse_seq(k, o.snap_folder) < seq]
        doomed += [k for k in self._store.list_keys(o.part_folder)
                   if self._part_seq(o, k) < seq]
        list(self._io_pool.map(self._store.delete, doomed))

    def _part_seq(self, o: _Obj, key: str) -> int:
        """The checkpoint sequence number a part key belongs to."""
        head = key[:len(o.part_folder) + len(Layout.seq_name(0))]
        return self._layout.parse_seq(head, o.part_folder)

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        """Write a tombstone (delete-all) record, checkpoint it, then remove data and registry."""
        o = self._obj(ref)
        with o.io:
            st = self._writer_state(o, epoch)
            old_alarm_key = st.alarm_key
            wid = _wid()
            tomb = Batch(delete_all=True, alarm=None)
            self._append(o, st, epoch, wid,
                         lambda seq: encode_batch(seq, epoch, wid, tomb, None, tomb=True))
            seq = st.next - 1
            with o.data:
                body = encode_snapshot(st, seq, "batch")
            old = [s for s in st.batch_seqs if s < seq]
            st.batch_seqs = [seq]
            st.batches_since_snap = st.bytes_since_snap = 0
            st.snap_seq = seq
            st.snap_bytes = len(body)
            with o.data:
                st.last_active = None
            self._write_checkpoint(o, seq, body, old, epoch)
            if old_alarm_key is not None:
                self._store.delete(old_alarm_key)
            with o.lease_lock:
                still_ours = self._cas_lease(
                    o, epoch, lambda d: replace(d, registered=False, name=None), stale_ok=True)
            if still_ours:
                marker = self._layout.marker(ref.namespace, ref.id)
                got = self._store.get(marker)
                if got is not None:
                    try:
                        marker_epoch = int(json.loads(got[0]).get("epoch", 0))
                    except (ValueError, AttributeError):
                        marker_epoch = 0
                    if marker_epoch <= epoch:
                        self._store.delete(marker, if_match=got[1])

    # -- alarms and registry --------------------------------------------------------------------

    def due_alarms(self, now: float, limit: int = 100) -> list[tuple[ObjectRef, float]]:
        """LIST the alarm index up to *now*'s minute, then verify each hint against the state."""
        horizon = alarm_bucket(now)
        prefix = self._layout.alarms_prefix
        hints: dict[ObjectRef, list[tuple[str, int]]] = {}
        for key in self._store.list_keys(prefix):
            bucket, ns, oid, epoch = self._layout.parse_alarm_key(key)
            if bucket > horizon:
                break
            hints.setdefault(ObjectRef(ns, oid), []).append((key, epoch))

        def verify(ref: ObjectRef) -> tuple[float, ObjectRef] | None:
            try:
                o, st = self._read_state(ref)
            except DuroError as exc:  # one broken object must not hold back every alarm
                log.warning("alarm index: cannot check object %s/%s: %s", ref.namespace,
                            ref.id[:12], exc)
                return None
            with o.data:
                alarm, alarm_key, fence_epoch = st.alarm, st.alarm_key, st.fence_epoch
            for key, epoch in hints[ref]:
                # A hint left by a fenced-out owner that no landed commit uses: no writer can
                # ever use it again, so it is safe to drop.
                if epoch < fence_epoch and key != alarm_key:
                    self._store.delete(key)
            return (alarm, ref) if alarm is not None and alarm <= now else None

        found = [r for r in self._task_pool.map(verify, list(hints)) if r is not None]
        found.sort(key=lambda t: (t[0], t[1].namespace, t[1].id))
        return [(ref, at) for at, ref in found[:limit]]

    def list_objects(
        self, namespace: str, *, after: str | None = None, limit: int = 100
    ) -> list[ObjectInfo]:
        """One LIST of the namespace's markers, then each object's lease and state."""
        folder = self._layout.ns_prefix(namespace)
        start = self._layout.marker(namespace, after) if after is not None else None

        def info(oid: str) -> ObjectInfo | None:
            ref = ObjectRef(namespace, oid)
            o = self._obj(ref)
            doc, _ = self._read_lease_doc(o)
            if doc is None or not doc.epoch:
                return None  # registered, but the first acquire never finished
            o, st = self._read_state(ref)
            with o.data:
                return ObjectInfo(ref, doc.name, doc.epoch, doc.owner, doc.address, doc.until,
                                  st.last_active, st.alarm, st.size, len(st.keys))

        out: list[ObjectInfo] = []
        page: list[str] = []
        markers = self._store.list_keys(folder, start_after=start)
        while len(out) < limit:
            page = [Layout.unquote(k[len(folder):])
                    for k in itertools.islice(markers, limit - len(out))]
            if not page:
                break
            out.extend(i for i in self._task_pool.map(info, page) if i is not None)
        return out

    def namespaces(self) -> list[str]:
        """Namespaces with registered objects (one LIST with a delimiter)."""
        return sorted(Layout.unquote(p)
                      for p in self._store.list_prefixes(self._layout.ns_prefix()))

    def close(self) -> None:
        """Wait for background checkpoints, then close the client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._task_pool.shutdown(wait=True)
        self._io_pool.shutdown(wait=True)
        self._store.close()
