"""Run two callables in alternating short slices in one process, so drift (a noisy disk, other
load) hits both sides alike: the helper behind the backend-overhead benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["interleave"]


def interleave(
    duro: Callable[[int], None],
    raw: Callable[[int], None],
    seconds: float,
    slice_s: float,
    batch: int = 10,
) -> tuple[float, float]:
    """Alternate slices of *duro* and *raw* for about *seconds* each; return both ops/s.

    Both are warmed up first (connections, page cache, statement cache); each call gets a
    fresh integer so values differ (SQLite skips rewriting unchanged rows).
    """
    totals = {"duro": [0, 0.0], "raw": [0, 0.0]}
    i = 0
    for fn in (duro, raw):
        for _ in range(50):
            fn(i)
            i += 1
    while min(float(totals["duro"][1]), float(totals["raw"][1])) < seconds:
        for name, fn in (("duro", duro), ("raw", raw)):
            n = 0
            t0 = time.perf_counter()
            deadline = t0 + slice_s
            now = t0
            while now < deadline:
                for _ in range(batch):
                    fn(i)
                    i += 1
                n += batch
                now = time.perf_counter()
            totals[name][0] += n
            totals[name][1] += now - t0
    return (totals["duro"][0] / totals["duro"][1], totals["raw"][0] / totals["raw"][1])
