"""The storage contract every backend implements: bytes in, bytes out.

``duro`` validates keys and values and encodes them once, in core; a backend only stores bytes,
orders keys bytewise (which is UTF-8 order for the encoded keys) and enforces the fencing epoch.

Methods are **synchronous and thread-safe**: the runtime calls them from worker threads, so a
backend may block (fsync, network) but must not assume a thread. Every method translates its
driver's exceptions into :mod:`duro.errors` (keeping ``.orig``); nothing else may escape.

Ownership: each object has a lease row ``(epoch, owner, address, until)``. :meth:`Backend.acquire`
bumps the epoch (the fencing token); :meth:`Backend.commit` applies a whole batch atomically
*together with* a check that the stored epoch is still the caller's, raising
:class:`~duro.errors.Fenced` otherwise, so a stale owner never lands a write.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final
from urllib.parse import parse_qsl, urlsplit

from duro.errors import ConfigError, DuroError, Fenced

__all__ = [
    "FORMAT_VERSION",
    "UNCHANGED",
    "AcquireOp",
    "Backend",
    "BackendURL",
    "Batch",
    "CommitOp",
    "Lease",
    "LeaseHeld",
    "Loaded",
    "ObjectInfo",
    "ObjectRef",
    "ReleaseOp",
    "SyncLevel",
    "WriteOp",
    "check_format_version",
]

FORMAT_VERSION: Final = 1
"""Storage-format version this duro writes; backends refuse data with a newer one."""


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
"""``Batch.alarm`` value meaning "leave the alarm as it is"."""

SyncLevel = str  # "full" | "normal" | "off"
SYNC_LEVELS: Final = ("full", "normal", "off")


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Which object: its namespace and its 64-hex ID."""

    namespace: str
    id: str


MIGRATE_OWNER_PREFIX: Final = "duro-migrate:"
"""Lease owners of objects that ``duro migrate`` holds or sealed (``duro-migrate:<run>``)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """An object's ownership record. ``owner is None`` means nobody holds it."""

    epoch: int
    owner: str | None
    address: str | None
    until: float


class LeaseHeld(Exception):
    """Raised by :meth:`Backend.acquire` when another owner's lease is still live."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(f"lease held by {lease.owner} until {lease.until}")
        self.lease = lease


@dataclass(slots=True)
class Batch:
    """One atomic write batch for one object.

    Applied in this order: ``delete_all`` (every key and the alarm), then ``deletes`` and
    ``puts`` (a key is in at most one of them), then ``alarm`` unless it is :data:`UNCHANGED`
    (``None`` clears it). ``lease_until``, if set, renews the lease in the same transaction;
    ``active_at`` (wall seconds), if set, is recorded as the registry's last-active time.
    """

    puts: dict[bytes, bytes] = field(default_factory=dict)
    deletes: set[bytes] = field(default_factory=set)
    delete_all: bool = False
    alarm: float | _Unchanged | None = UNCHANGED
    lease_until: float | None = None
    active_at: float | None = None

    def __bool__(self) -> bool:
        return bool(
            self.puts or self.deletes or self.delete_all or self.alarm is not UNCHANGED
        )


@dataclass(frozen=True, slots=True)
class CommitOp:
    """:meth:`Backend.commit` of *batch* under *epoch*, one item of :meth:`Backend.commit_many`."""

    ref: ObjectRef
    epoch: int
    batch: Batch

    def apply(self, backend: Backend) -> None:
        """Run it alone."""
        backend.commit(self.ref, self.epoch, self.batch)


@dataclass(frozen=True, slots=True)
class Loaded:
    """An :class:`AcquireOp`'s result when it also loads: the lease, then what the object
    holds under it (its alarm and its first rows in key order)."""

    lease: Lease
    alarm: float | None
    rows: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class AcquireOp:
    """:meth:`Backend.acquire`, as one item of :meth:`Backend.commit_many`.

    The result is the :class:`Lease`; with *load* (a row count) it is a :class:`Loaded`: the
    alarm and the first *load* rows, read after the epoch bump (a group-commit backend reads
    them inside the same transaction, so they are exactly the state the new epoch starts
    from: any later write by a stale owner is fenced).
    """

    ref: ObjectRef
    owner: str
    address: str | None
    now: float
    until: float
    name: str | None = None
    load: int | None = None

    def apply(self, backend: Backend) -> Lease | Loaded:
        """Run it alone."""
        lease = backend.acquire(self.ref, owner=self.owner, address=self.address, now=self.now,
                                until=self.until, name=self.name)
        if self.load is None:
            return lease
        return Loaded(lease, backend.get_alarm(self.ref),
                      backend.scan(self.ref, None, None, limit=self.load))


@dataclass(frozen=True, slots=True)
class ReleaseOp:
    """:meth:`Backend.release`, as one item of :meth:`Backend.commit_many`."""

    ref: ObjectRef
    epoch: int

    def apply(self, backend: Backend) -> None:
        """Run it alone."""
        backend.release(self.ref, self.epoch)


WriteOp = CommitOp | AcquireOp | ReleaseOp
"""One object's write that may share a durable transaction with other objects' writes."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the object registry knows about one object."""

    ref: ObjectRef
    name: str | None
    epoch: int
    owner: str | None
    address: str | None
    lease_until: float
    last_active: float | None
    alarm: float | None
    size: int
    keys: int


@dataclass(frozen=True)
class BackendURL:
    """A parsed backend URL: ``scheme://netloc/path?options``.

    For file backends ``path`` follows SQLAlchemy's rule: ``sqlite:///rel.db`` is relative,
    ``sqlite:////abs.db`` absolute.
    """

    raw: str
    scheme: str
    netloc: str
    path: str
    options: Mapping[str, str]

    @classmethod
    def parse(cls, url: str) -> BackendURL:
        """Parse *url*; raise :class:`ConfigError` if it is not a URL."""
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(
                f"{url!r:.200} is not a backend URL; expected e.g. 'sqlite:///data/duro.db', "
                "'lmdb:///data/duro.lmdb', 's3://bucket/prefix' or 'memory://'"
            )
        try:
            parts = urlsplit(url)
            options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        except ValueError as exc:
            raise ConfigError(f"malformed backend URL {url!r:.200}: {exc}", orig=exc) from exc
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(url, parts.scheme.lower(), parts.netloc, path, options)

    def option(self, name: str, default: str, choices: Sequence[str] | None = None) -> str:
        """A string option, checked against *choices*."""
        value = self.options.get(name, default)
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{self.scheme} URL option {name}={value!r} is not one of {', '.join(choices)}"
            )
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """A numeric option; accepts suffixes KiB/MiB/GiB/TiB (and KB/MB/GB/TB) for sizes."""
        raw = self.options.get(name)
        if raw is None:
            return default
        units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
                 "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
        text = raw.strip().lower()
        mult = 1
        for suffix, m in units.items():
            if text.endswith(suffix):
                text, mult = text[: -len(suffix)].strip(), m
                break
        try:
            value = float(text) * mult
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(
                f"{self.scheme} URL option {name}={raw!r} must be a number >= {minimum}"
            )
        return value

    def sync_level(self) -> SyncLevel:
        """The ``sync=full|normal|off`` option, ``full`` by default, the same on every backend."""
        return self.option("sync", "full", SYNC_LEVELS)

    def check_options(self, known: Sequence[str]) -> None:
        """Refuse options this backend does not know (a typo must not be silently ignored)."""
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown {self.scheme} URL option(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )


def check_format_version(found: int, where: str) -> None:
    """Refuse storage written by a newer format version."""
    if found > FORMAT_VERSION:
        raise ConfigError(
            f"{where} holds duro storage format {found}, but this duro reads format "
            f"{FORMAT_VERSION} at most: upgrade duro (pip install -U duro)"
        )


class Backend(ABC):
    """One storage engine behind duro. Subclasses are registered by URL scheme.

    Capability flags tell the runtime and the test suites what the backend can do.
    """

    scheme: ClassVar[str]
    persistent: ClassVar[bool] = True
    """Data survives closing and reopening the backend."""
    multi_process: ClassVar[bool] = True
    """Several OS processes on one host may share it."""
    multi_host: ClassVar[bool] = False
    """Several hosts may share it."""
    group_commit: ClassVar[bool] = False
    """:meth:`commit_many` runs many objects' writes in one durable transaction (one sync), so
    the runtime gathers the writes queued by many objects and hands them over together.
    Without it the runtime commits each object's batch on its own, in parallel (S3)."""

    url: BackendURL
    _mutant_group_skip_fence: bool = False
    """Test-only mutation (consistency mutant ``group-skip-fence``): :meth:`commit_many`
    lands a fenced :class:`CommitOp`'s writes in the shared transaction. Never set it."""

    @classmethod
    @abstractmethod
    def from_url(cls, url: BackendURL) -> Backend:
        """Open the backend that *url* names, creating its storage if needed."""

    # -- leases -------------------------------------------------------------------------------

    @abstractmethod
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
        """Take ownership with a new, strictly greater epoch, atomically.

        Succeeds if nobody holds the lease, its ``until`` is at most *now*, or *owner* holds
        it already (a reset re-acquires under a new epoch). Otherwise raise :class:`LeaseHeld`
        with the current lease. The caller passes ``now`` minus its drift margin.
        *name* is recorded for the registry when known.
        """

    @abstractmethod
    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        """Extend the lease to *until*; raise :class:`~duro.errors.Fenced` if *epoch* is stale."""

    def renew_many(self, leases: Sequence[tuple[ObjectRef, int]],
                   until: float) -> dict[ObjectRef, Fenced]:
        """Extend many leases to *until* at once (the lease keeper's call).

        Returns the leases that are stale (:class:`~duro.errors.Fenced`), by ref; any other
        error fails the whole call. Backends that can should do it in one transaction.
        """
        stale: dict[ObjectRef, Fenced] = {}
        for ref, epoch in leases:
            try:
                self.renew(ref, epoch, until)
            except Fenced as exc:
                stale[ref] = exc
        return stale

    @abstractmethod
    def release(self, ref: ObjectRef, epoch: int) -> None:
        """Give the lease up (keep the epoch); do nothing if *epoch* is no longer current."""

    @abstractmethod
    def read_lease(self, ref: ObjectRef) -> Lease | None:
        """The current lease record, or ``None`` if the object was never owned."""

    # -- reads --------------------------------------------------------------------------------

    @abstractmethod
    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Values of the keys that exist (missing keys are omitted)."""

    @abstractmethod
    def scan(
        self,
        ref: ObjectRef,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Rows with ``lo <= key < hi`` (``None`` = unbounded) in byte order, or reversed."""

    @abstractmethod
    def get_alarm(self, ref: ObjectRef) -> float | None:
        """The alarm time in epoch seconds, or ``None``."""

    # -- writes -------------------------------------------------------------------------------

    @abstractmethod
    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        """Apply *batch* atomically with the epoch check, durably at the URL's sync level.

        Raise :class:`~duro.errors.Fenced` (nothing applied) if the stored epoch is not
        *epoch*. If the outcome is unknown after retries, raise
        :class:`~duro.errors.BackendUnavailable`.
        """

    def commit_many(self, ops: Sequence[WriteOp]) -> list[object]:
        """Run several objects' writes; one result per op, in order, or the exception it raised.

        Every op keeps its own guarantees: a :class:`CommitOp` is atomic and checked against
        its own epoch, an :class:`AcquireOp` bumps its own epoch. A fenced op (or a held
        lease) fails **alone**: its result is the :class:`~duro.errors.Fenced` (or
        :class:`LeaseHeld`) instance, nothing of it is applied, and the other ops still land.
        Nothing is durable before this method returns. If the shared transaction itself fails,
        the method raises (no op is applied, or, for
        :class:`~duro.errors.BackendUnavailable`, the outcome is unknown for all of them).

        A backend with :attr:`group_commit` applies all ops in one transaction, one sync. This
        default runs them one after the other.
        """
        out: list[object] = []
        for op in ops:
            try:
                out.append(op.apply(self))
            except (DuroError, LeaseHeld) as exc:
                out.append(exc)
        return out

    @abstractmethod
    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        """Remove state, alarm and registry metadata atomically (epoch-checked like commit).

        The epoch counter survives as a tombstone, so a stale owner stays fenced.
        """

    # -- alarms and registry ------------------------------------------------------------------

    @abstractmethod
    def due_alarms(self, now: float, limit: int = 100) -> list[tuple[ObjectRef, float]]:
        """Objects whose alarm time is at most *now*, earliest first, via the alarm index."""

    @abstractmethod
    def list_objects(
        self, namespace: str, *, after: str | None = None, limit: int = 100
    ) -> list[ObjectInfo]:
        """Objects of *namespace* with ID greater than *after*, by ID, at most *limit*.

        Every object that was ever acquired is listed, except deleted ones.
        """

    @abstractmethod
    def namespaces(self) -> list[str]:
        """Names of the namespaces that hold objects, sorted."""

    def cluster_key(self, proposed: bytes) -> bytes:
        """The key with which processes sharing this storage sign the calls they forward.

        Stores *proposed* if no key is stored yet and returns the stored key, atomically: of
        processes racing to create it, all get the one that landed first. Whoever can open the
        storage can read it (that is who belongs to the cluster). A backend that cannot keep
        one raises :class:`~duro.errors.ConfigError`.
        """
        raise ConfigError(f"the {self.scheme}:// backend keeps no cluster key: set "
                          "DURO_CLUSTER_SECRET (or cluster_secret=) in every process")

    @abstractmethod
    def close(self) -> None:
        """Release connections and files. Idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
