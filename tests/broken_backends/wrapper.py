"""The healthy base the broken backends wrap, written from the public ``Backend`` ABC only.

``broken-NAME://`` opens a private in-process ``memory://`` store; ``broken-NAME:///path.db``
(the classes with ``base = "sqlite"``) opens SQLite at that path. Each defect class overrides
one method of :class:`Wrapped` to break one promise of the storage contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from duro.backends import (
    Backend,
    BackendURL,
    Batch,
    Lease,
    ObjectInfo,
    ObjectRef,
    open_backend,
)

__all__ = ["SqliteWrapped", "Wrapped"]


class Wrapped(Backend):
    """Delegates every call to a healthy backend (``memory://`` unless ``base`` says sqlite)."""

    scheme: ClassVar[str] = "broken"
    base: ClassVar[str] = "memory"
    persistent: ClassVar[bool] = False
    multi_process: ClassVar[bool] = False

    def __init__(self, url: BackendURL, inner: Backend) -> None:
        self.url = url
        self.inner = inner

    @classmethod
    def from_url(cls, url: BackendURL) -> Backend:
        rest = url.raw.split("://", 1)[1]
        return cls(url, open_backend(f"{cls.base}://{rest}"))

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

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        self.inner.delete_object(ref, epoch)

    def due_alarms(self, now: float, limit: int = 100) -> list[tuple[ObjectRef, float]]:
        return self.inner.due_alarms(now, limit)

    def list_objects(self, namespace: str, *, after: str | None = None,
                     limit: int = 100) -> list[ObjectInfo]:
        return self.inner.list_objects(namespace, after=after, limit=limit)

    def namespaces(self) -> list[str]:
        return self.inner.namespaces()

    def close(self) -> None:
        self.inner.close()


class SqliteWrapped(Wrapped):
    """:class:`Wrapped` over SQLite: persistent and shared between processes."""

    base = "sqlite"
    persistent = True
    multi_process = True
