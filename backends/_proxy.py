"""A backend that delegates to another: the base for fault injection and call counting.

Subclass it and override what to disturb; tests and the consistency suite use it to hold
commits open, inject failures or count calls without touching the real backend's code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from duro.backends.base import (
    AcquireOp,
    Backend,
    BackendURL,
    Batch,
    CommitOp,
    Lease,
    ObjectInfo,
    ObjectRef,
    ReleaseOp,
    WriteOp,
)

__all__ = ["CountingBackend", "ProxyBackend"]


class ProxyBackend(Backend):
    """Forwards every call to *inner*; capability flags follow *inner*."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.url = inner.url
        self.persistent = inner.persistent  # type: ignore[misc]
        self.multi_process = inner.multi_process  # type: ignore[misc]
        self.multi_host = inner.multi_host  # type: ignore[misc]
        self.group_commit = inner.group_commit  # type: ignore[misc]

    @classmethod
    def from_url(cls, url: BackendURL) -> Backend:
        raise NotImplementedError("wrap an open backend: ProxyBackend(open_backend(url))")

    def acquire(self, ref: ObjectRef, *, owner: str, address: str | None, now: float,
                until: float, name: str | None = None) -> Lease:
        return self.inner.acquire(ref, owner=owner, address=address, now=now, until=until,
                                  name=name)

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        self.inner.renew(ref, epoch, until)

    def release(self, ref: ObjectRef, epoch: int) -> None:
        self.inner.release(ref, epoch)

    def read_lease(self, ref: ObjectRef) -> Lease | None:
        return self.inner.read_lease(ref)

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self.inner.get_many(ref, keys)

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        return self.inner.scan(ref, lo, hi, reverse=reverse, limit=limit)

    def get_alarm(self, ref: ObjectRef) -> float | None:
        return self.inner.get_alarm(ref)

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        self.inner.commit(ref, epoch, batch)

    def commit_many(self, ops: Sequence[WriteOp]) -> list[object]:
        """Ops whose method this proxy overrides go through that override, one by one; the
        others go to *inner* as one group (so a subclass disturbs what it means to)."""
        cls = type(self)
        own = {CommitOp: cls.commit is not ProxyBackend.commit,
               AcquireOp: cls.acquire is not ProxyBackend.acquire,
               ReleaseOp: cls.release is not ProxyBackend.release}
        out: list[object] = [None] * len(ops)
        mine = [i for i, op in enumerate(ops) if own[type(op)]]
        if mine:
            for i, res in zip(mine, super().commit_many([ops[i] for i in mine]), strict=True):
                out[i] = res
        rest = [i for i, op in enumerate(ops) if not own[type(op)]]
        if rest:
            got = self.inner.commit_many([ops[i] for i in rest])
            for i, res in zip(rest, got, strict=True):
                out[i] = res
        return out

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        self.inner.delete_object(ref, epoch)

    def cluster_key(self, proposed: bytes) -> bytes:
        return self.inner.cluster_key(proposed)

    def due_alarms(self, now: float, limit: int = 100) -> list[tuple[ObjectRef, float]]:
        return self.inner.due_alarms(now, limit)

    def list_objects(self, namespace: str, *, after: str | None = None,
                     limit: int = 100) -> list[ObjectInfo]:
        return self.inner.list_objects(namespace, after=after, limit=limit)

    def namespaces(self) -> list[str]:
        return self.inner.namespaces()

    def close(self) -> None:
        self.inner.close()


class CountingBackend(ProxyBackend):
    """Counts calls per method name in ``calls``."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if callable(attr) and not name.startswith("_") and name in _METHODS:
            super().__getattribute__("calls")[name] += 1
        return attr


_METHODS = frozenset(
    {"acquire", "renew", "release", "read_lease", "get_many", "scan", "get_alarm", "commit",
     "commit_many",
     "delete_object", "due_alarms", "list_objects", "namespaces"}
)
