"""Broken backends, one defect each: the set ``duro check`` must catch on every run.

Each class is a thin subclass of a healthy wrapped backend (:mod:`.wrapper`) that breaks one
promise of the storage contract, as a real third-party backend might. :data:`DEFECTS` maps the
URL scheme each is registered under (entry point group ``duro.backends``) to its class and a
one-line description.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from broken_backends.wrapper import SqliteWrapped, Wrapped
from duro.backends import UNCHANGED, Batch, Lease, ObjectInfo, ObjectRef
from duro.errors import Fenced

__all__ = ["DEFECTS", "STAGE2_DEFECTS"]


def _successor(prefix: bytes) -> bytes | None:
    p = prefix.rstrip(b"\xff")
    return p[:-1] + bytes([p[-1] + 1]) if p else None


# -- ranges -----------------------------------------------------------------------------------


class IgnoresReverse(Wrapped):
    """scan ignores ``reverse``: rows always come in ascending order."""

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        return self.inner.scan(ref, lo, hi, limit=limit)


class EndInclusive(Wrapped):
    """scan treats the upper bound as inclusive."""

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        return self.inner.scan(ref, lo, None if hi is None else hi + b"\x00", reverse=reverse,
                               limit=limit)


class StartAfterAsStart(Wrapped):
    """Bounds are C strings: the NUL that makes ``start_after`` exclusive is cut off."""

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        lo = None if lo is None else lo.split(b"\x00", 1)[0]
        return self.inner.scan(ref, lo, hi, reverse=reverse, limit=limit)


class LimitOffByOne(Wrapped):
    """scan fetches one row more than ``limit`` (for paging) and forgets to trim it."""

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        return self.inner.scan(ref, lo, hi, reverse=reverse,
                               limit=None if limit is None else limit + 1)


class PrefixLeaks(Wrapped):
    """The upper bound is compared without its last byte: prefix ``ab`` also yields ``ac…``."""

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        if hi is not None and len(hi) >= 2:
            hi = _successor(hi[:-1])
        return self.inner.scan(ref, lo, hi, reverse=reverse, limit=limit)


def _utf16(key: bytes) -> bytes:
    return key.decode("utf-8", "surrogateescape").encode("utf-16-be", "surrogatepass")


class Utf16Order(Wrapped):
    """Keys sort by UTF-16 code units (as Java or JavaScript strings do), not UTF-8 bytes."""

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        rows = [(k, v) for k, v in self.inner.scan(ref, None, None)
                if (lo is None or _utf16(k) >= _utf16(lo))
                and (hi is None or _utf16(k) < _utf16(hi))]
        rows.sort(key=lambda r: _utf16(r[0]), reverse=reverse)
        return rows if limit is None else rows[:limit]


class NulTruncatesKeys(Wrapped):
    """Keys are stored as C strings: everything from the first NUL byte on is lost."""

    @staticmethod
    def _k(key: bytes) -> bytes:
        return key.split(b"\x00", 1)[0]

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        batch = dataclasses.replace(batch, puts={self._k(k): v for k, v in batch.puts.items()},
                                    deletes={self._k(k) for k in batch.deletes})
        self.inner.commit(ref, epoch, batch)

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        got = self.inner.get_many(ref, [self._k(k) for k in keys])
        return {k: got[self._k(k)] for k in keys if self._k(k) in got}


# -- reads and values -------------------------------------------------------------------------


class GetManyDropsKeys(Wrapped):
    """get_many answers only the first 64 keys it is asked for (one page of a batched read)."""

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self.inner.get_many(ref, list(keys)[:64])


class TruncatesValues(Wrapped):
    """Values over 100 bytes are cut to 100 bytes (a fixed-width column)."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        batch = dataclasses.replace(batch, puts={k: v[:100] for k, v in batch.puts.items()})
        self.inner.commit(ref, epoch, batch)


class EmptyValueIsDelete(Wrapped):
    """A 0-byte value is taken for "no value": putting it deletes the key."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        empty = {k for k, v in batch.puts.items() if not v}
        batch = dataclasses.replace(
            batch, puts={k: v for k, v in batch.puts.items() if v},
            deletes=batch.deletes | empty)
        self.inner.commit(ref, epoch, batch)


class RawRuntimeError(Wrapped):
    """get_many of more than 100 keys lets a driver's RuntimeError escape (too many variables)."""

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        if len(keys) > 100:
            raise RuntimeError("too many SQL variables")
        return self.inner.get_many(ref, keys)


class SimilarIdsShareStorage(Wrapped):
    """Objects are stored under the first 32 hex digits of their ID (a 128-bit column)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._orig: dict[ObjectRef, ObjectRef] = {}

    def _m(self, ref: ObjectRef) -> ObjectRef:
        mapped = ObjectRef(ref.namespace, ref.id[:32] + "0" * 32)
        self._orig[mapped] = ref
        return mapped

    def _o(self, ref: ObjectRef) -> ObjectRef:
        return self._orig.get(ref, ref)

    def acquire(self, ref: ObjectRef, *, owner: str, address: str | None, now: float,
                until: float, name: str | None = None) -> Lease:
        return super().acquire(self._m(ref), owner=owner, address=address, now=now,
                               until=until, name=name)

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        super().renew(self._m(ref), epoch, until)

    def release(self, ref: ObjectRef, epoch: int) -> None:
        super().release(self._m(ref), epoch)

    def read_lease(self, ref: ObjectRef) -> Lease | None:
        return super().read_lease(self._m(ref))

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return super().get_many(self._m(ref), keys)

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        return super().scan(self._m(ref), lo, hi, reverse=reverse, limit=limit)

    def get_alarm(self, ref: ObjectRef) -> float | None:
        return super().get_alarm(self._m(ref))

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        super().commit(self._m(ref), epoch, batch)

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        super().delete_object(self._m(ref), epoch)

    def due_alarms(self, now: float, limit: int = 100) -> list[tuple[ObjectRef, float]]:
        return [(self._o(r), at) for r, at in super().due_alarms(now, limit)]

    def list_objects(self, namespace: str, *, after: str | None = None,
                     limit: int = 100) -> list[ObjectInfo]:
        rows = [dataclasses.replace(i, ref=self._o(i.ref))
                for i in super().list_objects(namespace, limit=1_000_000)]
        rows.sort(key=lambda i: i.ref.id)
        return [i for i in rows if after is None or i.ref.id > after][:limit]


# -- batches and alarms -----------------------------------------------------------------------


class DeleteAllLeavesKey(Wrapped):
    """delete_all deletes row by row and misses the last key (an off-by-one in its loop)."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        if batch.delete_all:
            keys = [k for k, _ in self.inner.scan(ref, None, None)]
            batch = dataclasses.replace(
                batch, delete_all=False, deletes=batch.deletes | set(keys[:-1]),
                alarm=None if batch.alarm is UNCHANGED else batch.alarm)
        self.inner.commit(ref, epoch, batch)


class DropsAlarmWithPuts(Wrapped):
    """A batch that writes keys and sets an alarm loses the alarm (alarm-only batches work)."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        if batch.puts and batch.alarm is not UNCHANGED:
            batch = dataclasses.replace(batch, alarm=UNCHANGED)
        self.inner.commit(ref, epoch, batch)


class DueIndexLosesMovedAlarms(Wrapped):
    """Moving an alarm inserts the new index entry, then deletes "the old one": the same entry."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._lost: set[ObjectRef] = set()

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        before = self.inner.get_alarm(ref)
        self.inner.commit(ref, epoch, batch)
        if batch.delete_all or batch.alarm is None:
            self._lost.discard(ref)
        if isinstance(batch.alarm, float):
            if before is not None and before != batch.alarm:
                self._lost.add(ref)
            else:
                self._lost.discard(ref)

    def due_alarms(self, now: float, limit: int = 100) -> list[tuple[ObjectRef, float]]:
        rows = self.inner.due_alarms(now, limit + len(self._lost))
        return [(r, at) for r, at in rows if r not in self._lost][:limit]


# -- leases and fencing -----------------------------------------------------------------------


class IgnoresEpochOnCommit(Wrapped):
    """commit writes under whatever epoch is stored: a stale owner's batch lands."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        lease = self.inner.read_lease(ref)
        self.inner.commit(ref, epoch if lease is None else lease.epoch, batch)


class RenewAcceptsStaleEpoch(Wrapped):
    """renew with a stale epoch extends the current lease instead of raising Fenced."""

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        try:
            self.inner.renew(ref, epoch, until)
        except Fenced:
            lease = self.inner.read_lease(ref)
            if lease is None:
                raise
            self.inner.renew(ref, lease.epoch, until)


class EpochNotIncreasedOnTakeover(Wrapped):
    """A takeover by another owner keeps the old epoch number (only a reset bumps it)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._alias: dict[ObjectRef, tuple[int, int]] = {}  # shown epoch -> stored epoch
        self._lock = threading.Lock()

    def _e(self, ref: ObjectRef, epoch: int) -> int:
        shown, stored = self._alias.get(ref, (-1, -1))
        return stored if epoch == shown else epoch

    def acquire(self, ref: ObjectRef, *, owner: str, address: str | None, now: float,
                until: float, name: str | None = None) -> Lease:
        with self._lock:
            before = self.read_lease(ref)
            lease = self.inner.acquire(ref, owner=owner, address=address, now=now, until=until,
                                       name=name)
            if before is not None and before.owner not in (None, owner):
                self._alias[ref] = (before.epoch, lease.epoch)
                return dataclasses.replace(lease, epoch=before.epoch)
            self._alias.pop(ref, None)
            return lease

    def read_lease(self, ref: ObjectRef) -> Lease | None:
        lease = self.inner.read_lease(ref)
        shown, stored = self._alias.get(ref, (-1, -1))
        if lease is not None and lease.epoch == stored:
            return dataclasses.replace(lease, epoch=shown)
        return lease

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        self.inner.renew(ref, self._e(ref, epoch), until)

    def release(self, ref: ObjectRef, epoch: int) -> None:
        self.inner.release(ref, self._e(ref, epoch))

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        self.inner.commit(ref, self._e(ref, epoch), batch)

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        self.inner.delete_object(ref, self._e(ref, epoch))

    def list_objects(self, namespace: str, *, after: str | None = None,
                     limit: int = 100) -> list[ObjectInfo]:
        rows = self.inner.list_objects(namespace, after=after, limit=limit)
        out = []
        for i in rows:
            shown, stored = self._alias.get(i.ref, (-1, -1))
            out.append(dataclasses.replace(i, epoch=shown) if i.epoch == stored else i)
        return out


# -- registry ---------------------------------------------------------------------------------


class DeleteObjectLeavesState(Wrapped):
    """delete_object drops the registry entry and alarm but leaves the object's rows behind."""

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        rows = dict(self.inner.scan(ref, None, None))
        self.inner.delete_object(ref, epoch)
        if rows:
            self.inner.commit(ref, epoch, Batch(puts=rows))


class ListObjectsAfterInclusive(Wrapped):
    """list_objects(after=ID) includes the object ``after`` names: pages repeat an object."""

    def list_objects(self, namespace: str, *, after: str | None = None,
                     limit: int = 100) -> list[ObjectInfo]:
        if after is None:
            return self.inner.list_objects(namespace, limit=limit)
        rows = self.inner.list_objects(namespace, after=after[:-1] if after else None,
                                       limit=1_000_000)
        return [i for i in rows if i.ref.id >= after][:limit]


# -- durability and atomicity (over SQLite: persistent, shared between processes) -------------


class AcksInMemory(SqliteWrapped):
    """Acknowledges writes but keeps the rows in process memory: lost on close and reopen."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rows: dict[ObjectRef, dict[bytes, bytes]] = {}
        self._lock = threading.RLock()

    def _data(self, ref: ObjectRef) -> dict[bytes, bytes]:
        if ref not in self._rows:
            self._rows[ref] = dict(self.inner.scan(ref, None, None))
        return self._rows[ref]

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        with self._lock:
            self.inner.commit(ref, epoch, dataclasses.replace(batch, puts={}, deletes=set()))
            data = self._data(ref)
            if batch.delete_all:
                data.clear()
            for k in batch.deletes:
                data.pop(k, None)
            data.update(batch.puts)

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        with self._lock:
            data = self._data(ref)
            return {k: data[k] for k in keys if k in data}

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        with self._lock:
            rows = sorted((k, v) for k, v in self._data(ref).items()
                          if (lo is None or k >= lo) and (hi is None or k < hi))
        if reverse:
            rows.reverse()
        return rows if limit is None else rows[:limit]

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        with self._lock:
            self.inner.delete_object(ref, epoch)
            self._rows.pop(ref, None)

    def list_objects(self, namespace: str, *, after: str | None = None,
                     limit: int = 100) -> list[ObjectInfo]:
        with self._lock:
            return [dataclasses.replace(
                i, keys=len(self._data(i.ref)),
                size=sum(len(k) + len(v) for k, v in self._data(i.ref).items()))
                for i in self.inner.list_objects(namespace, after=after, limit=limit)]


class BatchInTwoCommits(SqliteWrapped):
    """A batch of several puts is written as two transactions: readers can see half of it."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        keys = sorted(batch.puts)
        if len(keys) < 2:
            self.inner.commit(ref, epoch, batch)
            return
        half = len(keys) // 2
        first = Batch(puts={k: batch.puts[k] for k in keys[:half]}, deletes=set(batch.deletes),
                      delete_all=batch.delete_all)
        self.inner.commit(ref, epoch, first)
        self.inner.commit(ref, epoch, dataclasses.replace(
            batch, puts={k: batch.puts[k] for k in keys[half:]}, deletes=set(),
            delete_all=False))


class TrustsOwnClockOverSkewedLeases(SqliteWrapped):
    """A commit that the store refuses as fenced is let through when the newer lease ends more
    than 10 minutes past this process's own clock (the latest ``now``/``until`` it was given):
    the backend takes such a lease for one written by a host with a broken clock, steals it
    back and commits. Nothing but clock skew beyond the drift margin shows it: under kill,
    pause and errors every owner shares one clock and no lease reaches that far ahead."""

    SKEW_TOLERANCE = 600.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._seen = 0.0
        self._lock = threading.Lock()

    def _saw(self, t: float | None) -> None:
        if t is not None and t != float("inf"):
            with self._lock:
                self._seen = max(self._seen, t)

    def acquire(self, ref: ObjectRef, *, owner: str, address: str | None, now: float,
                until: float, name: str | None = None) -> Lease:
        self._saw(now)
        self._saw(until)
        return self.inner.acquire(ref, owner=owner, address=address, now=now, until=until,
                                  name=name)

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        self._saw(until)
        self.inner.renew(ref, epoch, until)

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        self._saw(batch.lease_until)
        try:
            self.inner.commit(ref, epoch, batch)
        except Fenced:
            lease = self.inner.read_lease(ref)
            if lease is None or lease.until <= self._seen + self.SKEW_TOLERANCE:
                raise
            stolen = self.inner.acquire(ref, owner=lease.owner or "skewed", address=None,
                                        now=float("inf"), until=lease.until)
            self.inner.commit(ref, stolen.epoch, dataclasses.replace(batch, lease_until=None))


STAGE2_DEFECTS: dict[str, tuple[type[Wrapped], str]] = {
    "broken-skew-trust": (TrustsOwnClockOverSkewedLeases,
                          "a fenced commit lands when the newer lease looks skewed"),
}
"""URL scheme -> (class, defect): broken backends whose defect only a stage-2 fault shows
(``broken-skew-trust``: only the ``skew`` fault); stage 1 passes them."""

DEFECTS: dict[str, tuple[type[Wrapped], str]] = {
    "broken-reverse": (IgnoresReverse, "ignores reverse"),
    "broken-end-inclusive": (EndInclusive, "end bound inclusive"),
    "broken-start-after": (StartAfterAsStart, "start_after treated as start (NUL cut)"),
    "broken-limit": (LimitOffByOne, "limit off by one"),
    "broken-prefix": (PrefixLeaks, "prefix range leaks neighbouring keys"),
    "broken-utf16": (Utf16Order, "sorts by UTF-16 code units, not UTF-8 bytes"),
    "broken-nul": (NulTruncatesKeys, "keys cut at the first NUL byte"),
    "broken-get-many": (GetManyDropsKeys, "get_many drops keys past 64"),
    "broken-truncate": (TruncatesValues, "values over 100 bytes truncated"),
    "broken-empty-value": (EmptyValueIsDelete, "0-byte value deletes the key"),
    "broken-raw-error": (RawRuntimeError, "raw RuntimeError escapes"),
    "broken-similar-ids": (SimilarIdsShareStorage, "objects with similar IDs share storage"),
    "broken-delete-all": (DeleteAllLeavesKey, "delete_all leaves a key"),
    "broken-alarm-puts": (DropsAlarmWithPuts, "alarm dropped when the batch has puts"),
    "broken-due-index": (DueIndexLosesMovedAlarms, "alarm index loses moved alarms"),
    "broken-epoch-commit": (IgnoresEpochOnCommit, "commit ignores the epoch"),
    "broken-renew": (RenewAcceptsStaleEpoch, "renew accepts a stale epoch"),
    "broken-takeover": (EpochNotIncreasedOnTakeover, "epoch not increased on takeover"),
    "broken-delete-object": (DeleteObjectLeavesState, "delete_object leaves the rows"),
    "broken-list-after": (ListObjectsAfterInclusive, "list_objects after= inclusive"),
    "broken-in-memory": (AcksInMemory, "acknowledged writes kept in memory only"),
    "broken-two-commits": (BatchInTwoCommits, "batch applied as two commits"),
}
"""URL scheme -> (class, defect)."""

for _scheme, (_cls, _) in (DEFECTS | STAGE2_DEFECTS).items():
    _cls.scheme = _scheme
