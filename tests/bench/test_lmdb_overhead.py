"""pytest-benchmark: the LMDB backend's hot path against raw lmdb doing the same work.

Each group holds the duro call and its raw baseline, measured in the same run on a real disk
(``tmp_path``) at ``sync=full``; compare their means (the target for a lone commit is duro <=
1.3 x raw). ``python -m duro.bench.lmdb_overhead`` prints the ratios directly, at every sync
level, plus the throughput of 64 concurrent writers against raw commit-per-write.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from duro.bench.lmdb_overhead import PRELOAD_KEYS, VALUE, Pair, open_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    directory: Path = tmp_path_factory.mktemp("lmdb-overhead")
    with open_pair(directory, "full") as p:
        yield p


def _last_value(i: int) -> bytes:
    return i.to_bytes(8, "little") + VALUE


@pytest.mark.benchmark(group="lmdb commit, 1 key, sync=full")
def test_commit_duro(benchmark: BenchmarkFixture, pair: Pair) -> None:
    counter = itertools.count()
    benchmark(lambda: pair.duro_commit(next(counter)))
    last = next(counter) - 1
    key = pair.keys[last % PRELOAD_KEYS]
    assert pair.backend.get_many(pair.ref, [key]) == {key: _last_value(last)}


@pytest.mark.benchmark(group="lmdb commit, 1 key, sync=full")
def test_commit_raw_lmdb(benchmark: BenchmarkFixture, pair: Pair) -> None:
    counter = itertools.count()
    benchmark(lambda: pair.raw_commit(next(counter)))
    last = next(counter) - 1
    key = pair.keys[last % PRELOAD_KEYS]
    assert pair.raw.get_one(key) == _last_value(last)


@pytest.mark.benchmark(group="lmdb point read, 1 key")
def test_get_duro(benchmark: BenchmarkFixture, pair: Pair) -> None:
    key = pair.keys[7]
    result = benchmark(pair.backend.get_many, pair.ref, [key])
    assert list(result) == [key]


@pytest.mark.benchmark(group="lmdb point read, 1 key")
def test_get_raw_lmdb(benchmark: BenchmarkFixture, pair: Pair) -> None:
    key = pair.keys[7]
    result = benchmark(pair.raw.get_one, key)
    assert result is not None


@pytest.mark.benchmark(group="lmdb long-key scan (100 keys of 1 KiB sharing 600 bytes)")
def test_scan_long_keys_duro(benchmark: BenchmarkFixture, pair: Pair) -> None:
    from duro.backends import Batch, ObjectRef

    ref = ObjectRef("bench-long", "c" * 64)
    lease = pair.backend.acquire(ref, owner="bench", address=None, now=0.0, until=1e12)
    keys = [b"p" * 600 + b"%0424d" % i for i in range(100)]
    pair.backend.commit(ref, lease.epoch, Batch(puts=dict.fromkeys(keys, VALUE)))
    rows = benchmark(pair.backend.scan, ref, None, None)
    assert [k for k, _ in rows] == keys
