"""Per-operation costs with pytest-benchmark: get (cache hit and miss), put, list, txn, a stub
call and activation, parametrized and grouped by backend.

Run: ``pytest tests/bench/test_per_op.py --benchmark-only`` (add ``--benchmark-json=FILE`` to keep
the figures). Backends come from ``DURO_BENCH_BACKENDS`` (default ``memory,sqlite,lmdb``; add
``s3`` to include a local moto server).

pytest-benchmark has no native asyncio support, so one event loop serves the whole module and
each round is one ``loop.run_until_complete`` of a batch: storage ops run *inside* the object
(one stub call per batch of ``extra_info["ops_per_round"]`` ops), so a round's time divided by
that number is the per-op cost. Durable ops (put, txn) await durability one op at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import duro
from duro.bench.objects import BenchObject
from duro.bench.workloads import key_name, payload_ring
from duro.testing import make_backend_url

BATCH = 100
DURABLE_BATCH = 20
ROUNDS = 20
PRELOADED = 256  # the runtime preloads up to this many keys on activation
VALUE_SIZE = 100


def _backend_names() -> list[str]:
    raw = os.environ.get("DURO_BENCH_BACKENDS") or "memory,sqlite,lmdb"
    return [n.strip() for n in raw.split(",") if n.strip()]


@dataclass
class Env:
    """One backend's App on the module's event loop."""

    name: str
    loop: asyncio.AbstractEventLoop
    app: Any
    ns: Any
    url: str

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module", params=_backend_names())
def env(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    name: str = request.param
    endpoint = request.getfixturevalue("duro_s3_endpoint") if name == "s3" else None
    directory: Path = tmp_path_factory.mktemp(f"perop-{name}")
    url = make_backend_url(name, directory, endpoint)
    values = payload_ring(VALUE_SIZE)
    miss_keys = PRELOADED + ROUNDS * BATCH
    if name != "memory":  # write the keys the get-miss test reads, through a first App
        async def preload() -> None:
            async with duro.App(backend=url) as first:
                stub = first.namespace(BenchObject).get_by_name("miss")
                for start in range(0, miss_keys, 500):
                    await stub.load(start, min(500, miss_keys - start), values[0])

        loop.run_until_complete(preload())
    app = duro.App(backend=url)
    loop.run_until_complete(app.__aenter__())
    ns = app.namespace(BenchObject)
    yield Env(name, loop, app, ns, url)
    loop.run_until_complete(app.close())


def _setup(benchmark: Any, env: Env, op: str, ops_per_round: int) -> None:
    benchmark.group = env.name
    benchmark.name = op
    benchmark.extra_info.update(backend=env.name, op=op, ops_per_round=ops_per_round,
                                value_size=VALUE_SIZE)


def test_get_hit(benchmark: Any, env: Env) -> None:
    _setup(benchmark, env, "get_hit", BATCH)
    stub = env.ns.get_by_name("hit")
    keys = [key_name(i) for i in range(BATCH)]
    env.run(stub.load(0, BATCH, payload_ring(VALUE_SIZE)[0]))
    env.run(stub.read_loop(keys))
    hits = benchmark(lambda: env.run(stub.read_loop(keys)))
    assert hits == BATCH


def test_get_miss(benchmark: Any, env: Env) -> None:
    if env.name == "memory":
        pytest.skip("the memory backend keeps no state outside the App: every get is a hit")
    _setup(benchmark, env, "get_miss", BATCH)
    stub = env.ns.get_by_name("miss")
    batches = iter(range(ROUNDS))

    def setup() -> tuple[tuple[list[str]], dict[str, Any]]:
        b = next(batches)
        first = PRELOADED + b * BATCH
        return ([key_name(i) for i in range(first, first + BATCH)],), {}

    hits = benchmark.pedantic(lambda keys: env.run(stub.read_loop(keys)), setup=setup,
                              rounds=ROUNDS, iterations=1)
    assert hits == BATCH


def test_put(benchmark: Any, env: Env) -> None:
    _setup(benchmark, env, "put_durable", DURABLE_BATCH)
    stub = env.ns.get_by_name("put")
    values = payload_ring(VALUE_SIZE)
    counter = itertools.count()

    def one_round() -> int:
        idx = [next(counter) for _ in range(DURABLE_BATCH)]
        result: int = env.run(stub.put_loop([key_name(i % 1000) for i in idx],
                                            [values[i % len(values)] for i in idx]))
        return result

    assert benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1) == DURABLE_BATCH


def test_list(benchmark: Any, env: Env) -> None:
    _setup(benchmark, env, "list_10", BATCH)
    stub = env.ns.get_by_name("list")
    env.run(stub.load(0, 1000, payload_ring(VALUE_SIZE)[0]))
    starts = [key_name(i * 7 % 990) for i in range(BATCH)]
    rows = benchmark(lambda: env.run(stub.scan_loop(starts, 10)))
    assert rows == BATCH * 10


def test_txn(benchmark: Any, env: Env) -> None:
    _setup(benchmark, env, "txn_rmw_durable", DURABLE_BATCH)
    stub = env.ns.get_by_name("txn")
    env.run(stub.load(0, 100, payload_ring(VALUE_SIZE)[0]))
    keys = [key_name(i) for i in range(DURABLE_BATCH)]
    done = benchmark.pedantic(lambda: env.run(stub.txn_loop(keys)), rounds=ROUNDS, iterations=1)
    assert done == DURABLE_BATCH


def test_stub_call(benchmark: Any, env: Env) -> None:
    _setup(benchmark, env, "stub_call", BATCH)
    stub = env.ns.get_by_name("calls")
    env.run(stub.noop())

    async def calls() -> int:
        for _ in range(BATCH):
            await stub.noop()
        return BATCH

    assert benchmark(lambda: env.run(calls())) == BATCH


def test_activation(benchmark: Any, env: Env) -> None:
    per_round = 10
    _setup(benchmark, env, "activation", per_round)
    counter = itertools.count()

    async def activate() -> int:
        stubs = [env.ns.get_by_name(f"act-{next(counter)}") for _ in range(per_round)]
        for stub in stubs:
            await stub.noop()
        return per_round

    assert benchmark.pedantic(lambda: env.run(activate()), rounds=ROUNDS,
                              iterations=1) == per_round
