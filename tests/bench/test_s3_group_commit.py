"""S3 backend throughput against the serialized moto server with S3-like latency (50 ms).

Two comparisons, each measured in the same run against its own baseline:

- **group commit**: one object, 64 concurrent writers doing durable writes. Baseline: one PUT
  per write (each writer commits its own one-key batch; the object's commits serialize, one
  PUT in flight). Group commit: writes that arrive while a PUT is in flight go together into
  the next PUT (leader-based group commit over :meth:`S3Backend.commit`, exactly what the
  runtime's flush does). Also measured through the runtime: 64 concurrent stub calls on one
  ``duro.App`` object, each a durable ``storage.put``.
- **parallel objects**: 32 objects, each with its own writer committing one write per PUT,
  against the same on one object.

``python tests/bench/test_s3_group_commit.py [--latency-ms 50] [--seconds 3]`` prints the ratios
(targets from issue 6: group commit >= 20x, 32 objects >= 8x). The pytest-benchmark tests run the
same workloads with fixed work per round; compare means within a group. No timing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest

from duro.backends import Batch, ObjectRef, open_backend
from duro.backends._s3 import S3Backend
from duro.testing.moto_server import MotoServer, start_moto_server

__all__ = ["GroupCommitter", "acquire_all", "group_commit", "main", "objects_in_parallel",
           "one_put_per_write", "runtime_calls"]

BUCKET: Final = "duro-bench"
VALUE: Final = b"v" * 100


class GroupCommitter:
    """Leader-based group commit for one object: one PUT in flight, the rest wait and join."""

    def __init__(self, backend: S3Backend, ref: ObjectRef, epoch: int) -> None:
        self.backend, self.ref, self.epoch = backend, ref, epoch
        self._lock = threading.Lock()
        self._pending: list[tuple[bytes, bytes, threading.Event]] = []
        self._flushing = False
        self.puts = 0

    def write(self, key: bytes, value: bytes) -> None:
        """Return once the write is durable."""
        done = threading.Event()
        with self._lock:
            self._pending.append((key, value, done))
            leader = not self._flushing
            self._flushing = True
        while leader:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._flushing = False
                    break
            self.backend.commit(self.ref, self.epoch,
                                Batch(puts={k: v for k, v, _ in batch}))
            self.puts += 1
            for _, _, ev in batch:
                ev.set()
        done.wait()


def _run_threads(n: int, body: Callable[[int], None]) -> float:
    """Run *body(i)* in *n* threads at once; return the wall time."""
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            body(i)
        except BaseException as exc:  # report after join
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def acquire_all(backend: S3Backend, refs: list[ObjectRef]) -> list[int]:
    """Acquire *refs* in parallel (not part of any timed span); return their epochs."""
    now = time.time()
    epochs = [0] * len(refs)

    def body(i: int) -> None:
        epochs[i] = backend.acquire(refs[i], owner="bench", address=None, now=now,
                                    until=now + 3600).epoch

    _run_threads(len(refs), body)
    return epochs


def one_put_per_write(backend: S3Backend, ref: ObjectRef, epoch: int, writers: int,
                      writes_each: int) -> float:
    """Writes/s with *writers* threads each committing its own writes to one object."""
    def body(i: int) -> None:
        for j in range(writes_each):
            backend.commit(ref, epoch, Batch(puts={b"w%d-%d" % (i, j): VALUE}))

    return writers * writes_each / _run_threads(writers, body)


def group_commit(backend: S3Backend, ref: ObjectRef, epoch: int, writers: int,
                 writes_each: int) -> tuple[float, float]:
    """Writes/s and writes per PUT with *writers* threads sharing one object's group commit."""
    gc = GroupCommitter(backend, ref, epoch)

    def body(i: int) -> None:
        for j in range(writes_each):
            gc.write(b"w%d-%d" % (i, j), VALUE)

    total = writers * writes_each
    return total / _run_threads(writers, body), total / max(gc.puts, 1)


def objects_in_parallel(backend: S3Backend, refs: list[ObjectRef], epochs: list[int],
                        writes_each: int) -> float:
    """Writes/s with one writer per object, one PUT per write, all objects at once."""
    def body(i: int) -> None:
        for j in range(writes_each):
            backend.commit(refs[i], epochs[i], Batch(puts={b"k%d" % j: VALUE}))

    return len(refs) * writes_each / _run_threads(len(refs), body)


def runtime_calls(url: str, callers: int, calls_each: int) -> float:
    """Durable writes/s through ``duro.App``: *callers* concurrent stub calls on one object."""
    import duro

    class Writer(duro.DurableObject):
        async def write(self, key: str) -> None:
            self.storage.put(key, "v" * 100)

    async def run() -> float:
        async with duro.App(backend=url, listen=None) as app:
            stub = app.namespace(Writer).get_by_name("one")
            await stub.write("warm-up")

            async def caller(i: int) -> None:
                for j in range(calls_each):
                    await stub.write(f"w{i}-{j}")

            start = time.perf_counter()
            await asyncio.gather(*(caller(i) for i in range(callers)))
            return callers * calls_each / (time.perf_counter() - start)

    return asyncio.run(run())


# -- pytest-benchmark ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    srv = start_moto_server(latency=0.05)
    srv.create_bucket(BUCKET)
    yield srv
    srv.stop()


def _url(server: MotoServer) -> str:
    return (f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}?endpoint_url={server.endpoint}"
            "&region=us-east-1")


@pytest.fixture
def backend(server: MotoServer) -> Iterator[S3Backend]:
    b = open_backend(_url(server))
    assert isinstance(b, S3Backend)
    yield b
    b.close()


def _prepared(backend: S3Backend, n: int) -> tuple[list[ObjectRef], list[int]]:
    refs = [ObjectRef("bench", uuid.uuid4().hex * 2) for _ in range(n)]
    return refs, acquire_all(backend, refs)


@pytest.mark.benchmark(group="s3 one object, 64 writers, 128 durable writes")
def test_one_put_per_write(benchmark: Any, backend: S3Backend) -> None:
    [ref], [epoch] = _prepared(backend, 1)
    rate = benchmark.pedantic(one_put_per_write, args=(backend, ref, epoch, 64, 2), rounds=1,
                              iterations=1)
    benchmark.extra_info["writes_per_s"] = rate


@pytest.mark.benchmark(group="s3 one object, 64 writers, 128 durable writes")
def test_group_commit(benchmark: Any, backend: S3Backend) -> None:
    [ref], [epoch] = _prepared(backend, 1)
    rate, per_put = benchmark.pedantic(group_commit, args=(backend, ref, epoch, 64, 2),
                                       rounds=1, iterations=1)
    benchmark.extra_info["writes_per_s"] = rate
    benchmark.extra_info["writes_per_put"] = per_put
    assert per_put > 1


@pytest.mark.benchmark(group="s3 128 one-PUT writes: 1 object vs 32 in parallel")
def test_one_object(benchmark: Any, backend: S3Backend) -> None:
    refs, epochs = _prepared(backend, 1)
    benchmark.pedantic(objects_in_parallel, args=(backend, refs, epochs, 128), rounds=1,
                       iterations=1)


@pytest.mark.benchmark(group="s3 128 one-PUT writes: 1 object vs 32 in parallel")
def test_32_objects(benchmark: Any, backend: S3Backend) -> None:
    refs, epochs = _prepared(backend, 32)
    benchmark.pedantic(objects_in_parallel, args=(backend, refs, epochs, 4), rounds=1,
                       iterations=1)


# -- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Print writes/s and the ratios against their baselines."""
    parser = argparse.ArgumentParser(prog="python tests/bench/test_s3_group_commit.py")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--writes", type=int, default=4, help="writes per writer")
    parser.add_argument("--runtime", action="store_true", help="also measure through duro.App")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    srv = start_moto_server(latency=args.latency_ms / 1000)
    srv.create_bucket(BUCKET)
    try:
        url = _url(srv)
        with open_backend(url) as b:
            assert isinstance(b, S3Backend)
            w = args.writes
            refs, epochs = _prepared(b, 34)
            base = one_put_per_write(b, refs[0], epochs[0], 64, max(1, w // 2))
            grouped, per_put = group_commit(b, refs[1], epochs[1], 64, w * 4)
            one = objects_in_parallel(b, refs[2:3], epochs[2:3], 8 * w)
            many = objects_in_parallel(b, refs[2:], epochs[2:], w)
        print(f"latency {args.latency_ms:.0f} ms per request (outside moto's lock)")
        print(f"one object, 64 writers, one PUT per write : {base:8.1f} writes/s")
        print(f"one object, 64 writers, group commit      : {grouped:8.1f} writes/s "
              f"({per_put:.1f} writes/PUT)  ratio {grouped / base:5.1f}x  (target >= 20x)")
        if args.runtime:
            rt = runtime_calls(_url(srv), 64, w * 4)
            print(f"one object, 64 stub callers via duro.App  : {rt:8.1f} writes/s "
                  f"ratio {rt / base:5.1f}x")
        print(f"1 object, one PUT per write               : {one:8.1f} writes/s")
        print(f"32 objects in parallel, one PUT per write : {many:8.1f} writes/s "
              f"ratio {many / one:5.1f}x  (target >= 8x)")
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
