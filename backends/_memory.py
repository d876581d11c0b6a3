"""``memory://``: an in-process backend for tests and examples.

``memory://`` is private to the backend instance; ``memory://NAME`` shares one store among all
instances with that name in this process (so several Apps in one process can share objects).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from duro.backends.base import (
    UNCHANGED,
    Backend,
    BackendURL,
    Batch,
    CommitOp,
    Lease,
    LeaseHeld,
    ObjectInfo,
    ObjectRef,
    WriteOp,
)
from duro.errors import Fenced

__all__ = ["MemoryBackend"]


@dataclass
class _Obj:
    lease: Lease = field(default_factory=lambda: Lease(0, None, None, 0.0))
    name: str | None = None
    keys: list[bytes] = field(default_factory=list)  # sorted
    values: dict[bytes, bytes] = field(default_factory=dict)
    alarm: float | None = None
    last_active: float | None = None
    deleted: bool = False


class _Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[ObjectRef, _Obj] = {}
        self.cluster_key: bytes | None = None


_shared: dict[str, _Store] = {}
_shared_lock = threading.Lock()


class MemoryBackend(Backend):
    """Dicts behind one lock. Not persistent, not shared across processes."""

    scheme = "memory"
    persistent: ClassVar[bool] = False
    multi_process: ClassVar[bool] = False
    group_commit: ClassVar[bool] = True

    def __init__(self, url: BackendURL, store: _Store) -> None:
        self.url = url
        self._store = store

    @classmethod
    def from_url(cls, url: BackendURL) -> MemoryBackend:
        url.check_options(["sync"])
        url.sync_level()
        name = url.netloc + url.path
        if not name:
            return cls(url, _Store())
        with _shared_lock:
            store = _shared.setdefault(name, _Store())
        return cls(url, store)

    def _obj(self, ref: ObjectRef) -> _Obj:
        obj = self._store.objects.get(ref)
        if obj is None:
            obj = self._store.objects[ref] = _Obj()
        return obj

    def _check(self, ref: ObjectRef, epoch: int) -> _Obj:
        obj = self._store.objects.get(ref)
        if obj is None or obj.lease.epoch != epoch:
            current = obj.lease.epoch if obj else 0
            raise Fenced(f"object {ref.id[:12]}… is now at epoch {current}; ours was {epoch}")
        return obj

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
        with self._store.lock:
            obj = self._obj(ref)
            cur = obj.lease
            if cur.owner is not None and cur.owner != owner and cur.until > now:
                raise LeaseHeld(cur)
            obj.lease = Lease(cur.epoch + 1, owner, address, until)
            obj.deleted = False
            if name is not None:
                obj.name = name
            return obj.lease

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        with self._store.lock:
            obj = self._check(ref, epoch)
            obj.lease = Lease(epoch, obj.lease.owner, obj.lease.address, until)

    def release(self, ref: ObjectRef, epoch: int) -> None:
        with self._store.lock:
            obj = self._store.objects.get(ref)
            if obj is not None and obj.lease.epoch == epoch:
                obj.lease = Lease(epoch, None, None, 0.0)

    def read_lease(self, ref: ObjectRef) -> Lease | None:
        with self._store.lock:
            obj = self._store.objects.get(ref)
            return obj.lease if obj is not None and obj.lease.epoch else None

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        with self._store.lock:
            obj = self._store.objects.get(ref)
            if obj is None:
                return {}
            return {k: obj.values[k] for k in keys if k in obj.values}

    def scan(
        self,
        ref: ObjectRef,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        with self._store.lock:
            obj = self._store.objects.get(ref)
            if obj is None:
                return []
            i = 0 if lo is None else bisect.bisect_left(obj.keys, lo)
            j = len(obj.keys) if hi is None else bisect.bisect_left(obj.keys, hi)
            keys = obj.keys[i:j]
            if reverse:
                keys.reverse()
            if limit is not None:
                keys = keys[:limit]
            return [(k, obj.values[k]) for k in keys]

    def get_alarm(self, ref: ObjectRef) -> float | None:
        with self._store.lock:
            obj = self._store.objects.get(ref)
            return obj.alarm if obj is not None else None

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        with self._store.lock:
            self._apply(self._check(ref, epoch), epoch, batch)

    def commit_many(self, ops: Sequence[WriteOp]) -> list[object]:
        """All ops under the lock at once (the memory store's "transaction"), each fenced."""
        with self._store.lock:
            if not self._mutant_group_skip_fence:
                return super().commit_many(ops)
            out: list[object] = []
            for op in ops:
                res = super().commit_many([op])[0]
                if isinstance(res, Fenced) and isinstance(op, CommitOp):
                    obj = self._obj(op.ref)  # mutant: a fenced op's writes land anyway
                    self._apply(obj, obj.lease.epoch, op.batch)
                    res = None
                out.append(res)
            return out

    def _apply(self, obj: _Obj, epoch: int, batch: Batch) -> None:
        if batch.delete_all:
            obj.keys.clear()
            obj.values.clear()
            obj.alarm = None
        for k in batch.deletes:
            if obj.values.pop(k, None) is not None:
                del obj.keys[bisect.bisect_left(obj.keys, k)]
        for k, v in batch.puts.items():
            if k not in obj.values:
                bisect.insort(obj.keys, k)
            obj.values[k] = v
        if batch.alarm is not UNCHANGED:
            obj.alarm = batch.alarm  # type: ignore[assignment]
        if batch.active_at is not None:
            obj.last_active = batch.active_at
        if batch.lease_until is not None:
            obj.lease = Lease(epoch, obj.lease.owner, obj.lease.address, batch.lease_until)

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        with self._store.lock:
            obj = self._check(ref, epoch)
            obj.keys.clear()
            obj.values.clear()
            obj.alarm = None
            obj.name = None
            obj.last_active = None
            obj.deleted = True

    def due_alarms(self, now: float, limit: int = 100) -> list[tuple[ObjectRef, float]]:
        with self._store.lock:
            due = [(o.alarm, r) for r, o in self._store.objects.items()
                   if o.alarm is not None and o.alarm <= now]
        due.sort(key=lambda t: (t[0], t[1].namespace, t[1].id))
        return [(r, at) for at, r in due[:limit]]

    def _info(self, ref: ObjectRef, obj: _Obj) -> ObjectInfo:
        size = sum(len(k) + len(v) for k, v in obj.values.items())
        return ObjectInfo(ref, obj.name, obj.lease.epoch, obj.lease.owner, obj.lease.address,
                          obj.lease.until, obj.last_active, obj.alarm, size, len(obj.values))

    def list_objects(
        self, namespace: str, *, after: str | None = None, limit: int = 100
    ) -> list[ObjectInfo]:
        with self._store.lock:
            refs = sorted(
                (r for r, o in self._store.objects.items()
                 if r.namespace == namespace and not o.deleted and o.lease.epoch
                 and (after is None or r.id > after)),
                key=lambda r: r.id,
            )[:limit]
            return [self._info(r, self._store.objects[r]) for r in refs]

    def namespaces(self) -> list[str]:
        with self._store.lock:
            return sorted({r.namespace for r, o in self._store.objects.items() if not o.deleted})

    def cluster_key(self, proposed: bytes) -> bytes:
        """The cluster key of this store (Apps in one process may share a named store)."""
        with self._store.lock:
            if self._store.cluster_key is None:
                self._store.cluster_key = proposed
            return self._store.cluster_key

    def close(self) -> None:
        pass
