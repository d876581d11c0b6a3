"""LMDB backend hot path vs raw ``lmdb``: ``python -m duro.bench.lmdb_overhead``.

Measured in one process on a real disk, in short alternating slices (so drift in disk or CPU
speed hits both sides alike), at each sync level asked for:

- ``commit``: a lone :meth:`LMDBBackend.commit` of a one-key batch, called directly (so it
  includes the hand-over to the writer thread and back) vs a raw ``lmdb`` write transaction
  doing the same work (read the object's epoch record, put the key) at the same sync level;
- ``get``: :meth:`LMDBBackend.get_many` of one key vs a raw read transaction and ``get``;
- ``64 writers``: 64 threads committing one-key batches to 64 objects through one backend
  (their commits share LMDB transactions) vs raw commit-per-write on one thread.

The table shows ops/s and ``duro time per op / raw time per op`` (1.0 = no overhead; the
target for ``commit`` is at most 1.3); for ``64 writers`` the last column is the throughput
gain ``duro ops/s / raw ops/s``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import lmdb

from duro.backends import Batch, ObjectRef, open_backend
from duro.backends import _lmdb_keys as lk
from duro.backends._lmdb import LMDBBackend
from duro.bench.interleave import interleave

__all__ = ["PRELOAD_KEYS", "Pair", "Result", "main", "open_pair", "run"]

PRELOAD_KEYS: Final = 1000
VALUE: Final = b"v" * 92  # + an 8-byte counter: 100-byte values that differ on every write
REF: Final = ObjectRef("bench", "b" * 64)
SYNC_FLAGS: Final = {"full": (True, True), "normal": (True, False), "off": (False, False)}


class RawLMDB:
    """Plain ``lmdb`` with the same sub-databases and key layout, no duro around it."""

    def __init__(self, path: Path, sync: str, prefix: bytes, keys: list[bytes]) -> None:
        sync_flag, metasync = SYNC_FLAGS[sync]
        self.env = lmdb.open(str(path), map_size=1 << 30, max_dbs=4, sync=sync_flag,
                             metasync=metasync)
        self.objects = self.env.open_db(b"objects")
        self.kv = self.env.open_db(b"kv")
        self.prefix = prefix
        with self.env.begin(write=True) as txn:
            txn.put(prefix, b"\x01" * 40, db=self.objects)  # an epoch record
            for k in keys:
                txn.put(prefix + k, VALUE, db=self.kv)

    def commit_one(self, key: bytes, value: bytes) -> None:
        """One write transaction: read the epoch record, put the key."""
        with self.env.begin(write=True) as txn:
            if txn.get(self.prefix, db=self.objects) is None:
                raise RuntimeError("epoch record missing")
            txn.put(self.prefix + key, value, db=self.kv)

    def get_one(self, key: bytes) -> bytes | None:
        """One read transaction with one get."""
        with self.env.begin() as txn:
            return txn.get(self.prefix + key, db=self.kv)

    def close(self) -> None:
        """Close the environment."""
        self.env.close()


@dataclass
class Pair:
    """The backend and the raw baseline, each in its own environment in one directory."""

    backend: LMDBBackend
    raw: RawLMDB
    ref: ObjectRef
    epoch: int
    keys: list[bytes]

    def duro_commit(self, i: int) -> None:
        """One one-key commit through the backend (a new value each time)."""
        value = i.to_bytes(8, "little") + VALUE
        self.backend.commit(self.ref, self.epoch, Batch(puts={self.keys[i % PRELOAD_KEYS]: value}))

    def raw_commit(self, i: int) -> None:
        """The same write through raw lmdb."""
        self.raw.commit_one(self.keys[i % PRELOAD_KEYS], i.to_bytes(8, "little") + VALUE)

    def duro_get(self, i: int) -> None:
        """One point read through the backend."""
        self.backend.get_many(self.ref, [self.keys[i % PRELOAD_KEYS]])

    def raw_get(self, i: int) -> None:
        """The same point read through raw lmdb."""
        self.raw.get_one(self.keys[i % PRELOAD_KEYS])


@contextmanager
def open_pair(directory: Path, sync: str = "full") -> Iterator[Pair]:
    """Two fresh environments under *directory* holding the same rows; closed afterwards."""
    keys = [f"key-{i:06d}".encode() for i in range(PRELOAD_KEYS)]
    backend = open_backend(f"lmdb:///{(directory / 'duro').absolute()}?sync={sync}")
    assert isinstance(backend, LMDBBackend)
    lease = backend.acquire(REF, owner="bench", address=None, now=0.0, until=1e12)
    backend.commit(REF, lease.epoch, Batch(puts=dict.fromkeys(keys, VALUE)))
    raw = RawLMDB(directory / "raw", sync, lk.object_prefix(REF), keys)
    try:
        yield Pair(backend, raw, REF, lease.epoch, keys)
    finally:
        raw.close()
        backend.close()


@dataclass
class Result:
    """One pair's figures."""

    op: str
    sync: str
    duro_ops_per_s: float
    raw_ops_per_s: float

    @property
    def ratio(self) -> float:
        """duro time per op / raw time per op (for ``64 writers``: duro ops/s / raw ops/s)."""
        if self.op == "64 writers":
            return self.duro_ops_per_s / self.raw_ops_per_s
        return self.raw_ops_per_s / self.duro_ops_per_s


def concurrent_commits(backend: LMDBBackend, threads: int, seconds: float) -> float:
    """Commits per second of *threads* threads, each writing its own object."""
    refs = [ObjectRef("bench-fan", f"{n:064x}") for n in range(1, threads + 1)]
    epochs = [backend.acquire(r, owner="bench", address=None, now=0.0, until=1e12).epoch
              for r in refs]
    counts = [0] * threads
    stop = threading.Event()
    start = threading.Barrier(threads + 1)

    def work(n: int) -> None:
        start.wait()
        i = 0
        while not stop.is_set():
            backend.commit(refs[n], epochs[n], Batch(puts={b"k%d" % (i % 100): VALUE}))
            i += 1
        counts[n] = i

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def run(seconds: float = 2.0, levels: tuple[str, ...] = ("full", "normal", "off"),
        directory: Path | None = None, slice_s: float = 0.1) -> list[Result]:
    """Measure every pair at every level, in fresh temp dirs under *directory*."""
    results = []
    for sync in levels:
        with tempfile.TemporaryDirectory(prefix="duro-lmdb-overhead-", dir=directory) as tmp, \
                open_pair(Path(tmp), sync) as pair:
            for op, duro, raw in (("commit", pair.duro_commit, pair.raw_commit),
                                  ("get", pair.duro_get, pair.raw_get)):
                d, r = interleave(duro, raw, seconds, slice_s, 10)
                results.append(Result(op, sync, d, r))
            raw_rate = interleave(pair.raw_commit, pair.raw_commit, seconds / 2, slice_s)[0]
            fan = concurrent_commits(pair.backend, 64, seconds)
            results.append(Result("64 writers", sync, fan, raw_rate))
    return results


def format_table(results: list[Result]) -> str:
    """A plain-text table of the results."""
    lines = ["LMDB backend vs raw lmdb (1 key, 100-byte values; ratio = duro/raw time per op, "
             "for 64 writers duro/raw ops/s)",
             f"{'op':<12}{'sync':<8}{'duro ops/s':>14}{'raw ops/s':>14}{'ratio':>10}"]
    for r in results:
        lines.append(f"{r.op:<12}{r.sync:<8}{r.duro_ops_per_s:>14,.0f}{r.raw_ops_per_s:>14,.0f}"
                     f"{r.ratio:>10.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m duro.bench.lmdb_overhead",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="measured time per side, pair and level (default 2)")
    parser.add_argument("--sync", default="full,normal,off",
                        help="comma-separated sync levels (default full,normal,off)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the environments go (default: a temp dir; use a real disk)")
    args = parser.parse_args(argv)
    levels = tuple(s.strip() for s in args.sync.split(",") if s.strip())
    bad = [s for s in levels if s not in SYNC_FLAGS]
    if bad or not levels:
        parser.error(f"--sync takes full, normal and/or off, not {args.sync!r}")
    print(format_table(run(args.seconds, levels, args.dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
