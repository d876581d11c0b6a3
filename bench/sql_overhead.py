"""SQL backend hot path vs raw ``sqlite3``: ``python -m duro.bench.sql_overhead``.

Two pairs, run interleaved in one process on a real disk (short alternating slices, so drift in
disk or CPU speed hits both sides alike):

- ``commit``: :meth:`SQLBackend.commit` of a one-key batch vs raw ``sqlite3`` running the same
  statements (``BEGIN IMMEDIATE``; epoch-checked UPDATE; UPSERT; ``COMMIT``);
- ``get``: :meth:`SQLBackend.get_many` of one key vs the raw point ``SELECT``.

Both sides call straight in (no event loop). The table shows ops/s and the ratio
``duro time per op / raw time per op`` (1.0 = no overhead; the target is at most 1.3).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from duro.backends import Batch, ObjectRef, open_backend
from duro.backends._sql import SQLBackend
from duro.bench.baselines_sql import RawSQLite
from duro.bench.interleave import interleave

__all__ = ["PRELOAD_KEYS", "Pair", "Result", "main", "open_pair", "run"]

PRELOAD_KEYS: Final = 1000
VALUE: Final = b"v" * 92  # + an 8-byte counter: 100-byte values that differ on every write
# (SQLite skips writing a page whose bytes an UPDATE leaves unchanged: no WAL frame, no fsync).
REF: Final = ObjectRef("bench", "b" * 64)


@dataclass
class Pair:
    """The backend and the raw baseline, each on its own database file in one directory."""

    backend: SQLBackend
    raw: RawSQLite
    ref: ObjectRef
    epoch: int
    raw_epoch: int
    keys: list[bytes]

    def duro_commit(self, i: int) -> None:
        """One one-key commit through the backend (a new value each time, so pages change)."""
        value = i.to_bytes(8, "little") + VALUE
        self.backend.commit(self.ref, self.epoch, Batch(puts={self.keys[i % PRELOAD_KEYS]: value}))

    def raw_commit(self, i: int) -> None:
        """The same statements through raw sqlite3."""
        value = i.to_bytes(8, "little") + VALUE
        self.raw.commit_one(self.ref.namespace, self.ref.id, self.raw_epoch,
                            self.keys[i % PRELOAD_KEYS], value)

    def duro_get(self, i: int) -> None:
        """One point read through the backend."""
        self.backend.get_many(self.ref, [self.keys[i % PRELOAD_KEYS]])

    def raw_get(self, i: int) -> None:
        """The same point SELECT through raw sqlite3."""
        self.raw.get_one(self.ref.namespace, self.ref.id, self.keys[i % PRELOAD_KEYS])


def _prepare(path: Path, sync: str, keys: list[bytes]) -> tuple[SQLBackend, int]:
    backend = open_backend(f"sqlite:///{path.absolute()}?sync={sync}")
    assert isinstance(backend, SQLBackend)
    lease = backend.acquire(REF, owner="bench", address=None, now=0.0, until=1e12)
    backend.commit(REF, lease.epoch, Batch(puts=dict.fromkeys(keys, VALUE)))
    return backend, lease.epoch


@contextmanager
def open_pair(directory: Path, sync: str = "full") -> Iterator[Pair]:
    """Two fresh databases under *directory* with the same schema and rows; closed afterwards."""
    keys = [f"key-{i:06d}".encode() for i in range(PRELOAD_KEYS)]
    backend, epoch = _prepare(directory / "duro.db", sync, keys)
    other, raw_epoch = _prepare(directory / "raw.db", sync, keys)
    other.close()
    raw = RawSQLite(directory / "raw.db", sync)
    try:
        yield Pair(backend, raw, REF, epoch, raw_epoch, keys)
    finally:
        raw.close()
        backend.close()


@dataclass
class Result:
    """One pair's figures."""

    op: str
    duro_ops_per_s: float
    raw_ops_per_s: float

    @property
    def ratio(self) -> float:
        """duro time per op / raw time per op."""
        return self.raw_ops_per_s / self.duro_ops_per_s


def run(seconds: float = 3.0, sync: str = "full", directory: Path | None = None,
        slice_s: float = 0.1) -> list[Result]:
    """Measure both pairs; data lives under *directory* (a fresh temp dir on /tmp by default)."""
    with tempfile.TemporaryDirectory(prefix="duro-sql-overhead-", dir=directory) as tmp, \
            open_pair(Path(tmp), sync) as pair:
        results = []
        for op, duro, raw in (("commit", pair.duro_commit, pair.raw_commit),
                              ("get", pair.duro_get, pair.raw_get)):
            d, r = interleave(duro, raw, seconds, slice_s, 20)
            results.append(Result(op, d, r))
        return results


def format_table(results: list[Result], sync: str) -> str:
    """A plain-text table of the results."""
    lines = [f"SQL backend hot path vs raw sqlite3 (sync={sync}, 1 key, 100-byte values)",
             f"{'op':<8}{'duro ops/s':>14}{'raw ops/s':>14}{'duro/raw time':>16}"]
    for r in results:
        lines.append(f"{r.op:<8}{r.duro_ops_per_s:>14,.0f}{r.raw_ops_per_s:>14,.0f}"
                     f"{r.ratio:>16.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m duro.bench.sql_overhead",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured time per side and pair (default 3)")
    parser.add_argument("--sync", choices=("full", "normal", "off"), default="full")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the databases go (default: a temp dir; use a real disk)")
    args = parser.parse_args(argv)
    results = run(args.seconds, args.sync, args.dir)
    print(format_table(results, args.sync))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
