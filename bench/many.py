"""Many-object runs and the floor designs they are compared with.

- :func:`many_objects`: 64 callers writing durably over N objects: first a **cold** pass (the
  first write to each object: activation, lease acquire, first batch), then **warm** puts to
  random objects, all of them resident.
- :func:`resident_memory`: RSS per resident object, and how fast idle objects are evicted when
  a stream of new objects is touched (memory stays bounded by eviction, not by luck).
- :class:`FloorStub`: the minimal correct design of a stub call (one long-lived worker per
  object, one Future per call, a msgpack copy of the arguments and of the result), measured
  in the same run as duro's stub calls.
- :class:`ThreadHandoff`: a raw commit run through the same loop → thread → loop handoff that
  duro's commits take (its dedicated writer thread), the baseline of the lone put.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from duro.bench.hdr import Histogram
from duro.bench.report import Measurement

__all__ = [
    "FloorStub",
    "ThreadHandoff",
    "many_objects",
    "resident_memory",
    "rss_bytes",
    "run_each_once",
]


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


async def run_each_once(lists: list[list[Any]],
                        call: Callable[[Any], Awaitable[object]]) -> Measurement:
    """One client per list, each awaiting ``call(item)`` once per item, all at once."""
    clock = time.perf_counter_ns

    async def client(items: list[Any]) -> Histogram:
        hist = Histogram()
        for item in items:
            t0 = clock()
            await call(item)
            hist.record(clock() - t0)
        return hist

    start = time.perf_counter()
    hists = await asyncio.gather(*(client(items) for items in lists))
    seconds = time.perf_counter() - start
    total = Histogram()
    for h in hists:
        total.merge(h)
    return Measurement(sum(len(x) for x in lists), seconds, total)


async def many_objects(stubs: list[Any], clients: int, values: list[bytes], duration: float,
                       max_ops: int, seed: int) -> tuple[Measurement, Measurement]:
    """Cold then warm durable puts by *clients* callers over *stubs* (never touched before).

    Cold: caller *c* writes once to objects ``c, c + clients, …`` (every object's first
    write, so each one activates). Warm: random objects, for *duration* or *max_ops*.
    """
    import random

    ring = len(values)
    n = len(stubs)
    lists = [list(range(c, n, clients)) for c in range(clients)]
    cold = await run_each_once(lists, lambda i: stubs[i].put("k", values[i % ring]))
    rng = random.Random(seed)
    warm_ops = min(max_ops, 200_000)
    picks = [rng.randrange(n) for _ in range(warm_ops)]
    budget = [warm_ops]
    deadline = time.perf_counter() + duration
    clock = time.perf_counter_ns

    async def client(c: int) -> tuple[Histogram, int]:
        hist = Histogram()
        done = 0
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            i = picks[budget[0]]
            t0 = clock()
            await stubs[i].put("k", values[(i + done) % ring])
            hist.record(clock() - t0)
            done += 1
        return hist, done

    start = time.perf_counter()
    got = await asyncio.gather(*(client(c) for c in range(clients)))
    seconds = time.perf_counter() - start
    hist = Histogram()
    for h, _ in got:
        hist.merge(h)
    return cold, Measurement(sum(d for _, d in got), seconds, hist)


async def resident_memory(app: Any, ns: Any, touched: int, *, wave: int = 2000
                          ) -> dict[str, float]:
    """Touch *touched* new objects (one stub call each, in waves) while idle ones are evicted.

    Returns KB per resident object (Python heap, measured on the first wave), the
    peak number of resident objects and peak RSS over the run, and eviction throughput
    (objects evicted per second while the stream runs and until all are gone).
    """
    import tracemalloc

    gc.collect()
    base = rss_bytes()
    first = [ns.get_by_name(f"r{i}") for i in range(min(wave, touched))]
    # RSS deltas undercount in a process that freed memory before (the allocator reuses it),
    # so the per-object figure is the Python heap the resident objects hold (tracemalloc).
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    await asyncio.gather(*(s.noop() for s in first))
    gc.collect()
    per_object = (tracemalloc.get_traced_memory()[0] - before) / len(first)
    tracemalloc.stop()
    peak_rss = rss_bytes()
    peak_resident = len(ns._instances)
    start = time.perf_counter()
    for lo in range(len(first), touched, wave):
        batch = [ns.get_by_name(f"r{i}") for i in range(lo, min(lo + wave, touched))]
        await asyncio.gather(*(s.noop() for s in batch))
        peak_rss = max(peak_rss, rss_bytes())
        peak_resident = max(peak_resident, len(ns._instances))
    while ns._instances:  # bounded by the idle timeout: every object is idle now
        await asyncio.sleep(0.05)
        if time.perf_counter() - start > 600:
            raise TimeoutError(f"{len(ns._instances)} objects were never evicted")
    seconds = time.perf_counter() - start
    evicted = ns.stats().activations
    return {
        "kb_per_object": per_object / 1024,
        "peak_resident": float(peak_resident),
        "peak_rss_mb": peak_rss / 2**20,
        "base_rss_mb": base / 2**20,
        "evictions_per_s": evicted / seconds if seconds else 0.0,
        "touched": float(touched),
    }


class FloorStub:
    """The floor design of a stub call: what any correct by-value actor call must do.

    One long-lived worker task per object takes calls from a deque; a call packs its arguments
    with msgpack, queues them with one Future, and unpacks the packed result.
    """

    def __init__(self, target: Any) -> None:
        self._target = target
        self._queue: deque[tuple[str, bytes, asyncio.Future[bytes]]] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._worker = asyncio.ensure_future(self._run())

    async def call(self, method: str, *args: Any) -> Any:
        """Call *method* on the target by value."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append((method, msgpack.packb(args), fut))
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        return msgpack.unpackb(await fut)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            while queue:
                method, payload, fut = queue.popleft()
                try:
                    value = await getattr(self._target, method)(*msgpack.unpackb(payload))
                    fut.set_result(msgpack.packb(value))
                except Exception as exc:  # noqa: BLE001 - handed to the caller's future
                    fut.set_exception(exc)
            self._wake = loop.create_future()
            await self._wake
            self._wake = None

    def close(self) -> None:
        """Stop the worker."""
        self._worker.cancel()


class ThreadHandoff:
    """Run a blocking function on a dedicated thread, awaited from the loop: the same handoff
    (:class:`duro.committer.WriterThread`) that carries duro's group commits."""

    def __init__(self) -> None:
        from duro.committer import WriterThread

        self._thread = WriterThread("bench-raw")

    async def run(self, fn: Callable[[], object]) -> object:
        """``await`` *fn* run on the thread."""
        return await self._thread.run(fn)

    def close(self) -> None:
        """Stop the thread."""
        self._thread.close()
