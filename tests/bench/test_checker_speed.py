"""pytest-benchmark: the linearizability checker on 10,000 ops over 20 objects.

Target (issue 7): load + check in <= 2 s on a 2-core machine. The group holds the baseline
(loading the JSONL history: parse + validate) and the full check (load + check), measured in the
same run; compare their means. ``python -m duro.consistency.checker_speed`` prints the same
figures directly. No timing is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from duro.consistency.checker import check_history
from duro.consistency.checker_speed import make_history
from duro.consistency.history import History


@pytest.fixture(scope="module")
def history_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checker-speed") / "history.jsonl"
    make_history().dump(path)
    return path


@pytest.mark.benchmark(group="checker 10k ops / 20 objects")
def test_load_baseline(benchmark: BenchmarkFixture, history_file: Path) -> None:
    h = benchmark.pedantic(History.load, args=(history_file,), rounds=3,  # type: ignore[no-untyped-call]
                           iterations=1)
    assert len(h.ops()) == 10_000


@pytest.mark.benchmark(group="checker 10k ops / 20 objects")
def test_load_and_check(benchmark: BenchmarkFixture, history_file: Path) -> None:
    r = benchmark.pedantic(check_history, args=(history_file,), rounds=3,  # type: ignore[no-untyped-call]
                           iterations=1)
    assert r.ok, r.explain()
    assert r.ops == 10_000 and r.objects == 20
    benchmark.extra_info["partitions"] = len(r.partitions)
