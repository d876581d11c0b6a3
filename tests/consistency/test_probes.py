"""The targeted probes: fencing of a zombie owner, and crash atomicity under kill -9.

Each probe passes on the real backends and fails, on every run, on a small broken subclass
of a real backend written here from the public ``Backend`` ABC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from duro.backends import Backend, Batch, ObjectRef, open_backend
from duro.backends._memory import MemoryBackend
from duro.backends._sql import SQLBackend
from duro.backends.base import BackendURL
from duro.consistency.mutants import SkipEpochCheckBackend
from duro.consistency.probes import crash_probe, fencing_probe
from duro.testing import make_backend_url


class IgnoresEpochMemory(MemoryBackend):
    """Commits under whatever epoch is current: a stale owner's batch lands."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        lease = self.read_lease(ref)
        super().commit(ref, lease.epoch if lease is not None else epoch, batch)


class IgnoresEpochSqlite(SQLBackend):
    """The same defect on SQLite (persistent: the probe reopens it for the final reads)."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        lease = self.read_lease(ref)
        super().commit(ref, lease.epoch if lease is not None else epoch, batch)


class TwoCommitSqlite(SQLBackend):
    """Applies a batch as two commits: the first half of its keys, then the rest."""

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        items = sorted(batch.puts.items())
        half = len(items) // 2
        if half:
            super().commit(ref, epoch, Batch(puts=dict(items[:half])))
        super().commit(ref, epoch, replace(batch, puts=dict(items[half:])))


def test_fencing_probe_passes_on_real_backends(duro_backend_url: str,
                                               duro_backend_name: str) -> None:
    backend = open_backend(duro_backend_url)
    reopen = None if duro_backend_name == "memory" else (lambda: open_backend(duro_backend_url))
    result = fencing_probe(backend, seed=1, reopen=reopen)
    backend.close()
    assert result.ok, result.message
    assert result.counts == {"takeovers": 4, "stale_commits": 2}


def test_fencing_probe_catches_a_backend_that_ignores_the_epoch(tmp_path: Path) -> None:
    for seed in range(3):  # deterministic: caught every time
        result = fencing_probe(IgnoresEpochMemory.from_url(BackendURL.parse("memory://")),
                               seed=seed)
        assert not result.ok
        assert "stale owner" in result.message and "ANOMALY" in result.message
    url = make_backend_url("sqlite", tmp_path) + "?sync=off"
    result = fencing_probe(IgnoresEpochSqlite.from_url(BackendURL.parse(url)),
                           reopen=lambda: open_backend(url))
    assert not result.ok


def test_fencing_probe_catches_the_skip_epoch_mutant() -> None:
    result = fencing_probe(open_backend("memory://"), wrap=SkipEpochCheckBackend)
    assert not result.ok


def _opener(cls: type[Backend], url: str) -> Callable[[], Backend]:
    return lambda: cls.from_url(BackendURL.parse(url))


def test_crash_probe_passes_on_real_backends(duro_backend_url: str,
                                             duro_backend_name: str) -> None:
    if duro_backend_name == "memory":
        pytest.skip("memory:// is private to one process: nothing survives a kill -9")
    result = crash_probe(lambda: open_backend(duro_backend_url), seed=3, rounds=4)
    assert result.ok, result.message
    assert result.counts["kills"] == 4
    assert result.counts["batches"] > result.counts["kills"]


def test_crash_probe_catches_a_batch_applied_as_two_commits(tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    result = crash_probe(_opener(TwoCommitSqlite, url), seed=0, rounds=24)
    assert not result.ok
    assert "applied in part" in result.message


@pytest.mark.parametrize("name", ["skip-epoch-check", "stale-read"])
def test_fencing_probe_catches_zombie_mutants_with_small_witnesses(name: str) -> None:
    from duro.consistency.mutants import get_mutant

    m = get_mutant(name)
    assert m is not None
    result = fencing_probe(open_backend("memory://"), wrap=m.wrap, unsafe=m.unsafe)
    assert not result.ok
    assert result.check is not None
    assert min(len(a.witness.ops) for a in result.check.anomalies) <= 10
