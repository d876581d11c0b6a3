"""The plan's unit (:class:`Step`) and the loop that times calls (:func:`drive_async`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from duro.bench.hdr import Histogram
from duro.bench.report import Measurement
from duro.bench.workloads import Op

__all__ = ["Step", "drive_async"]


@dataclass(slots=True)
class Step:
    """One unit of the plan: a description for the progress bar and what to run."""

    description: str
    run: Callable[[], Awaitable[None]]


async def drive_async(
    pools: list[list[Op]],
    call: Callable[[int, Op], Awaitable[object]],
    *,
    duration: float,
    max_ops: int,
    ops_per_call: int = 1,
) -> Measurement:
    """Run one task per op pool (a client), each awaiting ``call(client, op)`` in turn.

    Stops at *duration* seconds or after *max_ops* ops in total; every call's latency (divided
    by *ops_per_call* for in-object loops) goes into one merged histogram.
    """
    budget = [max_ops]
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + duration

    async def client(index: int, pool: list[Op]) -> tuple[Histogram, int]:
        hist = Histogram()
        size = len(pool)
        i = ops = 0
        while budget[0] > 0:
            budget[0] -= ops_per_call
            op = pool[i % size]
            i += 1
            t0 = clock()
            await call(index, op)
            elapsed = clock() - t0
            if ops_per_call == 1:
                hist.record(elapsed)
            else:
                hist.record(elapsed // ops_per_call, ops_per_call)
            ops += ops_per_call
            if time.perf_counter() >= deadline:
                break
        return hist, ops

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(client(i, pool)) for i, pool in enumerate(pools)]
    seconds = time.perf_counter() - start
    total = Histogram()
    ops = 0
    for task in tasks:
        hist, n = task.result()
        total.merge(hist)
        ops += n
    return Measurement(ops, seconds, total)
