"""Deliberately broken duro builds the suite must catch (test-only; never use them for data).

Each mutant breaks the *real* runtime or the *real* backend, not a toy copy: either through a
test-only :class:`~duro.app.AppConfig` ``unsafe`` flag of the runtime, or through a
:class:`~duro.backends._proxy.ProxyBackend` subclass wrapped around the real backend.

=====================  =========================================================================
``skip-epoch-check``   the backend's commit, when fenced, steals the lease under a new epoch and
                       commits anyway: a stale owner's writes land
``stale-read``         the runtime serves cached reads after its lease ran out
                       (``unsafe={"skip_lease_check"}``)
``steal-lease``        acquire ignores a live lease (passes ``now=+inf``) instead of waiting for
                       it or forwarding to the owner: two live owners
``drop-write``         a flush that coalesced several writes loses one
                       (``unsafe={"drop_coalesced_write"}``)
``ack-early``          results leave before their writes are durable
                       (``unsafe={"ack_before_durable"}``), shown by a failed flush or a kill
``half-batch``         the backend commits the first half of a multi-write batch, then fails
``group-skip-fence``   the backend's group transaction (``commit_many``) lands a fenced object's
                       writes together with the others'
=====================  =========================================================================

``duro check --mutant NAME`` runs the suite against one of them; it must report an anomaly
(exit 1). :data:`MUTANTS` maps each name to its :class:`Mutant`.

:data:`CLUSTER_MUTANTS` break what only the cluster mode (:mod:`duro.consistency.cluster_mode`,
``duro check --mode cluster --mutant NAME``) can show, since it needs a host cut off from its
storage by the network:

=====================  =========================================================================
``lost-lease-read``    an owner that can no longer renew its lease (storage unreachable) keeps
                       answering from its cache instead of refusing; it renews as usual
                       otherwise (``unsafe={"ignore_lost_lease"}``)
=====================  =========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from duro.backends._proxy import ProxyBackend
from duro.backends.base import Backend, Batch, Lease, ObjectRef
from duro.errors import BackendUnavailable, ConfigError, Fenced

__all__ = [
    "CLUSTER_MUTANTS",
    "MUTANTS",
    "GroupSkipFenceBackend",
    "HalfBatchBackend",
    "Mutant",
    "SkipEpochCheckBackend",
    "StealLeaseBackend",
    "get_mutant",
]


class SkipEpochCheckBackend(ProxyBackend):
    """On ``Fenced``, re-acquires with a stolen lease and commits under the new epoch."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        try:
            super().commit(ref, epoch, batch)
        except Fenced:
            lease = self.inner.acquire(ref, owner="mutant-zombie", address=None, now=math.inf,
                                       until=0.0)
            self.inner.commit(ref, lease.epoch, batch)


class StealLeaseBackend(ProxyBackend):
    """Acquire ignores a live lease held by someone else (``now=+inf``)."""

    def acquire(self, ref: ObjectRef, *, owner: str, address: str | None, now: float,
                until: float, name: str | None = None) -> Lease:
        return super().acquire(ref, owner=owner, address=address, now=math.inf, until=until,
                               name=name)


class HalfBatchBackend(ProxyBackend):
    """Commits the first half of a batch with more than one write, then raises."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        writes = sorted([*batch.puts.items(), *((k, None) for k in batch.deletes)],
                        key=lambda kv: kv[0])
        if len(writes) < 2 or batch.delete_all:
            super().commit(ref, epoch, batch)
            return
        half = writes[: len(writes) // 2]
        part = Batch(puts={k: v for k, v in half if v is not None},
                     deletes={k for k, v in half if v is None},
                     lease_until=batch.lease_until, active_at=batch.active_at)
        super().commit(ref, epoch, part)
        raise BackendUnavailable("mutant: half of the batch landed, then the commit failed")


class GroupSkipFenceBackend(ProxyBackend):
    """Switches on the real backend's test-only ``_mutant_group_skip_fence``: its shared
    transaction applies a fenced object's batch instead of failing that object alone."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        real = inner
        while isinstance(real, ProxyBackend):
            real = real.inner
        if not real.group_commit:
            raise ConfigError(
                f"the group-skip-fence mutant breaks group commit, but {real.url.scheme}:// "
                "commits each object alone (no shared transaction): it does not apply here")
        real._mutant_group_skip_fence = True


@dataclass(frozen=True)
class Mutant:
    """A broken duro: runtime ``unsafe`` flags and/or a wrapper around the real backend.

    *faults*: faults the mutant needs to show (added to the run's faults); *processes*: the
    least number of Apps/processes it needs.
    """

    name: str
    description: str
    unsafe: frozenset[str] = frozenset()
    wrap: Callable[[Backend], Backend] | None = None
    faults: frozenset[str] = frozenset()
    processes: int = 1


MUTANTS: Final[dict[str, Mutant]] = {m.name: m for m in (
    Mutant("skip-epoch-check", "a fenced commit steals the lease and lands anyway",
           wrap=SkipEpochCheckBackend, faults=frozenset({"pause"}), processes=2),
    Mutant("stale-read", "serves cached reads after losing its lease",
           unsafe=frozenset({"skip_lease_check"}), faults=frozenset({"pause"}), processes=2),
    Mutant("steal-lease", "steals a live lease instead of forwarding",
           wrap=StealLeaseBackend, processes=2),
    Mutant("drop-write", "a flush of coalesced writes drops one",
           unsafe=frozenset({"drop_coalesced_write"})),
    Mutant("ack-early", "acknowledges writes before they are durable",
           unsafe=frozenset({"ack_before_durable"}), faults=frozenset({"errors", "kill"})),
    Mutant("half-batch", "commits half of a batch, then fails", wrap=HalfBatchBackend),
    Mutant("group-skip-fence", "a group transaction lands a fenced object's writes",
           wrap=GroupSkipFenceBackend, faults=frozenset({"pause"}), processes=2),
)}


CLUSTER_MUTANTS: Final[dict[str, Mutant]] = {m.name: m for m in (
    Mutant("lost-lease-read", "keeps answering from its cache after its lease is lost",
           unsafe=frozenset({"ignore_lost_lease"})),
)}


def get_mutant(name: str | None, *, cluster: bool = False) -> Mutant | None:
    """The mutant called *name* (None for none); ``ValueError`` naming the known ones. With
    *cluster*, the cluster mode's own mutants (:data:`CLUSTER_MUTANTS`) are known too."""
    if name is None or name in ("", "none"):
        return None
    known = {**MUTANTS, **CLUSTER_MUTANTS} if cluster else MUTANTS
    try:
        return known[name]
    except KeyError:
        raise ValueError(f"unknown mutant {name!r}; known: {', '.join(known)}") from None
