"""Power loss: a FUSE filesystem drops what was not fsynced; acknowledged writes must survive.

``kill -9`` leaves written data in the page cache, so it cannot show a missing fsync. These tests
run SQLite and LMDB on :mod:`duro.testing.powerloss`, cut the power at seeded random points while
a writer process stores through duro, and check every acknowledged write after a remount
(:mod:`duro.testing.durability`). A known-unsafe mutant (acknowledging before fsync) must be
caught by the same check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from duro.testing.durability import crash_cycles
from duro.testing.powerloss import fuse_available, mounted

REASON = fuse_available()
if REASON is not None and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the power-loss tests, but FUSE is not usable: {REASON}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=str(REASON))]

CYCLES = 5


def test_unsynced_data_is_lost_synced_data_kept_and_io_fails_after_the_crash(
        tmp_path: Path) -> None:
    disk, mnt = tmp_path / "disk", tmp_path / "mnt"
    with mounted(disk, mnt) as fs:
        with open(mnt / "synced", "wb") as f:
            f.write(b"a" * 10_000)
            f.flush()
            os.fsync(f.fileno())
            f.write(b"b" * 5_000)  # after the fsync: lost
            f.flush()
        with open(mnt / "unsynced", "wb") as f:
            f.write(b"c" * 100)
        assert (mnt / "unsynced").read_bytes() == b"c" * 100  # a process sees its own writes
        assert (mnt / "synced").read_bytes() == b"a" * 10_000 + b"b" * 5_000
        assert fs.stats()[1] > 0
        dropped, kept = fs.crash()
        assert dropped > 0 and kept == 0
        with pytest.raises(OSError):
            (mnt / "synced").read_bytes()
    with mounted(disk, mnt):
        assert (mnt / "synced").read_bytes() == b"a" * 10_000
        assert (mnt / "unsynced").read_bytes() == b""  # created (metadata) but never synced


def test_torn_mode_keeps_a_seeded_subset_of_unsynced_pages(tmp_path: Path) -> None:
    disk, mnt = tmp_path / "disk", tmp_path / "mnt"
    with mounted(disk, mnt, torn_seed=7) as fs:
        with open(mnt / "f", "wb") as f:
            for i in range(64):
                f.write(bytes([i]) * 4096)
        dropped, kept = fs.crash()
    assert dropped > 0 and kept > 0 and dropped + kept == 64
    with mounted(disk, mnt):
        data = (mnt / "f").read_bytes()
    pages = {data[i * 4096] for i in range(len(data) // 4096) if data[i * 4096:i * 4096 + 4096]
             == bytes([data[i * 4096]]) * 4096 and data[i * 4096] != 0}
    assert 0 < len(pages) <= kept


@pytest.mark.parametrize("kind", ["sqlite", "lmdb"])
def test_sync_full_keeps_every_acknowledged_write_through_power_loss(
        kind: str, tmp_path: Path) -> None:
    results = crash_cycles(kind, "full", CYCLES, seed=11, workdir=tmp_path)
    acked = sum(r.acked for r in results)
    print(f"\npower loss, {kind} sync=full: {CYCLES} crash cycles, {acked} writes acknowledged, "
          f"{max(r.lost for r in results)} lost, "
          f"{sum(r.pages_dropped for r in results)} unsynced pages dropped")
    assert acked >= CYCLES * 5
    assert [r.lost for r in results] == [0] * CYCLES
    assert all(r.fencing_ok for r in results), [r.detail for r in results]


def test_sqlite_survives_torn_unsynced_pages(tmp_path: Path) -> None:
    """A disk that wrote some unsynced pages before the crash: still nothing acknowledged lost."""
    from duro.testing import durability

    results = durability.crash_cycles("sqlite", "full", 3, seed=5, workdir=tmp_path,
                                      torn_seed=3)
    assert [r.lost for r in results] == [0, 0, 0]
    assert all(r.fencing_ok for r in results), [r.detail for r in results]


@pytest.mark.parametrize("kind", ["sqlite", "lmdb"])
def test_acknowledging_before_fsync_is_caught(kind: str, tmp_path: Path) -> None:
    """The mutant: writes are acknowledged with no fsync behind them (sync=off under a
    sync=full label). The same check must report lost acknowledged writes."""
    results = crash_cycles(kind, "full", 1, seed=11, workdir=tmp_path, mutant=True)
    assert results[0].acked > 0
    assert results[0].lost > 0
