"""Time the checker on a large history: ``python -m duro.consistency.checker_speed``.

The default is the issue's target shape: 10,000 ops over 20 objects, 8 clients per object, half
the objects with ``list``/``txn`` (whole-object model), 1 % bounded ``info`` ops and 1 % failed
writes. It writes the history as JSONL to a temporary file, then times loading it (parse +
validate, the baseline) and loading + checking it, and prints both and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from duro.consistency.checker import check_history
from duro.consistency.history import History
from duro.consistency.synth import simulate

__all__ = ["main", "make_history", "measure"]


def make_history(ops: int = 10_000, objects: int = 20, clients: int = 8, seed: int = 1
                 ) -> History:
    """The benchmark history (see the module docstring)."""
    return simulate(seed=seed, ops=ops, objects=objects, keys=4, clients=clients, multi=0.5,
                    info_rate=0.01, fail_rate=0.01, bounded=True)


def measure(path: Path, repeat: int = 3) -> tuple[list[float], list[float], str]:
    """Seconds to load *path*, and to load + check it, *repeat* times each; and the summary."""
    load, full = [], []
    summary = ""
    for _ in range(repeat):
        t = time.perf_counter()
        History.load(path)
        load.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = check_history(path)
        full.append(time.perf_counter() - t)
        if not r.ok:
            raise SystemExit(f"benchmark history should be linearizable:\n{r.explain()}")
        summary = r.summary()
    return load, full, summary


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m duro.consistency.checker_speed",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ops", type=int, default=10_000)
    ap.add_argument("--objects", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    h = make_history(a.ops, a.objects, a.clients, a.seed)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "history.jsonl"
        h.dump(path)
        load, full, summary = measure(path, a.repeat)
    print(summary)
    print(f"load (parse + validate): median {statistics.median(load):.3f} s")
    print(f"load + check:            median {statistics.median(full):.3f} s, "
          f"best {min(full):.3f} s over {a.repeat} runs "
          f"({statistics.median(full) / statistics.median(load):.1f}x the load alone)")


if __name__ == "__main__":
    main()
