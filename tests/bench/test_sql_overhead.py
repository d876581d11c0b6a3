"""pytest-benchmark: the SQL backend's hot path against raw sqlite3 doing the same statements.

Each group holds the duro call and its raw baseline, measured in the same run on a real disk
(``tmp_path``) at ``sync=full``; compare their means (the target is duro <= 1.3 x raw).
``python -m duro.bench.sql_overhead`` prints the ratios directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from duro.bench.sql_overhead import PRELOAD_KEYS, VALUE, Pair, open_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    directory: Path = tmp_path_factory.mktemp("sql-overhead")
    with open_pair(directory, "full") as p:
        yield p


def _last_value(i: int) -> bytes:
    return i.to_bytes(8, "little") + VALUE


@pytest.mark.benchmark(group="sqlite commit, 1 key, sync=full")
def test_commit_duro(benchmark: BenchmarkFixture, pair: Pair) -> None:
    counter = itertools.count()
    benchmark(lambda: pair.duro_commit(next(counter)))
    last = next(counter) - 1
    key = pair.keys[last % PRELOAD_KEYS]
    assert pair.backend.get_many(pair.ref, [key]) == {key: _last_value(last)}


@pytest.mark.benchmark(group="sqlite commit, 1 key, sync=full")
def test_commit_raw_sqlite3(benchmark: BenchmarkFixture, pair: Pair) -> None:
    counter = itertools.count()
    benchmark(lambda: pair.raw_commit(next(counter)))
    last = next(counter) - 1
    key = pair.keys[last % PRELOAD_KEYS]
    assert pair.raw.get_one(pair.ref.namespace, pair.ref.id, key) == _last_value(last)


@pytest.mark.benchmark(group="sqlite point read, 1 key")
def test_get_duro(benchmark: BenchmarkFixture, pair: Pair) -> None:
    key = pair.keys[7]
    result = benchmark(pair.backend.get_many, pair.ref, [key])
    assert list(result) == [key]


@pytest.mark.benchmark(group="sqlite point read, 1 key")
def test_get_raw_sqlite3(benchmark: BenchmarkFixture, pair: Pair) -> None:
    key = pair.keys[7]
    result = benchmark(pair.raw.get_one, pair.ref.namespace, pair.ref.id, key)
    assert result is not None
