"""Workloads and both run modes against real backends: determinism, linearizability, counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from duro.backends import open_backend
from duro.consistency.checker import check_history
from duro.consistency.runner import overlap, run_check, scale_counts
from duro.consistency.scheduler import DataChooser, RandomChooser, run_deterministic
from duro.consistency.workloads import MAX_CLIENTS_PER_OBJECT, Program, programs, random_program
from duro.testing import make_backend_url

FAULTS = frozenset({"kill", "pause", "errors"})


def fast(url: str) -> str:
    """In-process deterministic runs cannot lose the page cache: skip fsync there."""
    if url.startswith(("sqlite:", "lmdb:")) and "sync=" not in url:
        return url + ("&" if "?" in url else "?") + "sync=off"
    return url


def fresh_url(request: pytest.FixtureRequest, name: str, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    endpoint = request.getfixturevalue("duro_s3_endpoint") if name == "s3" else None
    return fast(make_backend_url(name, directory, endpoint))


def record(name: str, figures: dict[str, object]) -> None:
    """Append the run's figures to DURO_CONSISTENCY_FIGURES (if set) for the report."""
    import os

    out = os.environ.get("DURO_CONSISTENCY_FIGURES")
    if out:
        with Path(out).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": name, **figures}) + "\n")


def test_programs_respect_the_limits() -> None:
    p = random_program(3, objects=3, clients=MAX_CLIENTS_PER_OBJECT, ops=500, processes=2)
    assert len(p.objects) == 3 and len(p.clients) == 3 * MAX_CLIENTS_PER_OBJECT
    assert {c.home for c in p.clients} == {0, 1}
    assert 400 <= p.ops <= 500
    with pytest.raises(ValueError):
        random_program(0, objects=1, clients=MAX_CLIENTS_PER_OBJECT + 1, ops=10)
    assert random_program(5, objects=2, clients=4, ops=100) == random_program(
        5, objects=2, clients=4, ops=100)


def test_same_seed_gives_a_byte_identical_history(request: pytest.FixtureRequest,
                                                  duro_backend_url: str, duro_backend_name: str,
                                                  tmp_path: Path) -> None:
    def once(seed: int, sub: str) -> bytes:
        backend = open_backend(fresh_url(request, duro_backend_name, tmp_path / sub))
        try:
            prog = random_program(seed, objects=2, clients=4, ops=150, processes=2)
            run = run_deterministic(prog, backend, RandomChooser(seed), processes=2,
                                    faults=FAULTS, seed=seed)
        finally:
            backend.close()
        return run.history.dumps().encode()

    first, second = once(7, "a"), once(7, "b")
    assert first == second
    assert len(first.splitlines()) > 300
    assert once(8, "c") != first


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(program=programs(objects=(1, 2), clients=(2, 5), ops=(10, 80), processes=2),
       data=st.data())
def test_hypothesis_chosen_schedules_are_linearizable(program: Program,
                                                      data: st.DataObject) -> None:
    backend = open_backend("memory://")
    try:
        run = run_deterministic(program, backend, DataChooser(data), processes=2,
                                faults=FAULTS, seed=1)
    finally:
        backend.close()
    result = check_history(run.history)
    assert result.ok, result.explain()
    assert run.hung == 0


def test_hypothesis_shrinks_a_broken_runtime_to_a_small_program() -> None:
    shrunk: list[Program] = []

    @settings(max_examples=100, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(program=programs(objects=(1, 2), clients=(1, 4), ops=(1, 40)), data=st.data())
    def broken(program: Program, data: st.DataObject) -> None:
        backend = open_backend("memory://")
        try:
            run = run_deterministic(program, backend, DataChooser(data), processes=1,
                                    unsafe=frozenset({"drop_coalesced_write"}))
        finally:
            backend.close()
        if not check_history(run.history, shrink=False).ok:
            shrunk.append(program)
            raise AssertionError("not linearizable")

    with pytest.raises(AssertionError, match="not linearizable"):
        broken()
    assert shrunk[-1].ops <= 10, shrunk[-1]


def test_overlap_counts_concurrent_ops() -> None:
    from duro.consistency.history import History

    seq = History.from_dicts([
        {"process": 0, "type": t, "f": "put", "object": "o", "key": "k", "value": v, "time": i}
        for i, (t, v) in enumerate([("invoke", "a"), ("ok", "a"), ("invoke", "b"), ("ok", "b")])])
    assert overlap(seq) == 1.0
    par = History.from_dicts([
        {"process": p, "type": t, "f": "put", "object": "o", "key": "k", "value": f"v{p}",
         "time": 0} for t, p in [("invoke", 0), ("invoke", 1), ("ok", 0), ("ok", 1)]])
    assert overlap(par) == 2.0


def test_deterministic_histories(duro_backend_url: str, duro_backend_name: str) -> None:
    counts = scale_counts(duro_backend_name)
    summary = run_check(fast(duro_backend_url), seed=10_000, ops=counts.ops,
                        histories=counts.deterministic, mode="deterministic",
                        faults="kill,pause,errors", progress=False)
    record(f"deterministic-{duro_backend_name}", summary.to_json())
    assert summary.verdict == "ok", summary.explanation
    assert summary.histories == counts.deterministic
    assert summary.median_overlap >= 2
    assert summary.hung == 0 and summary.unknowns == 0
    assert summary.faults["kill"] > 0 and summary.faults["pause"] > 0
    if counts.deterministic >= 100:
        assert summary.faults["pause"] >= 20  # zombie scenarios
        assert summary.kill_runs >= 0.3 * summary.fault_runs
        assert 0.01 <= summary.faults["errors"] / summary.backend_calls <= 0.05


@pytest.mark.parametrize("mode", ["tasks", "threads"])
def test_free_running_in_process(duro_backend_url: str, duro_backend_name: str,
                                 mode: str) -> None:
    counts = scale_counts(duro_backend_name)
    n = counts.tasks if mode == "tasks" else counts.threads
    summary = run_check(duro_backend_url, seed=20_000, ops=counts.ops, histories=n, mode=mode,
                        faults="errors", progress=False)
    record(f"{mode}-{duro_backend_name}", summary.to_json())
    assert summary.verdict == "ok", summary.explanation
    assert summary.histories == n
    assert summary.median_overlap >= 2
    assert summary.hung == 0 and summary.unknowns == 0


def test_default_run_replays_byte_for_byte(request: pytest.FixtureRequest,
                                           duro_backend_url: str, duro_backend_name: str,
                                           tmp_path: Path) -> None:
    """Every history shape of the default run (large key set, many objects, small keys), with
    its small cache, evictions, faults and reopen: the same seed writes the same file."""
    if duro_backend_name == "s3":
        pytest.skip("moto is slow: replay is checked on memory, sqlite and lmdb")

    def once(seed: int, sub: str) -> bytes:
        url = fresh_url(request, duro_backend_name, tmp_path / sub)
        out = tmp_path / f"{sub}.jsonl"
        summary = run_check(url, seed=seed, histories=1, mode="deterministic",
                            history_out=out, progress=False, probes=False)
        assert summary.verdict == "ok", summary.explanation
        assert summary.faults["evict"] > 0
        return out.read_bytes()

    shapes = []
    for seed in (500, 501, 502):  # one of each shape
        first, second = once(seed, f"{seed}a"), once(seed, f"{seed}b")
        assert first == second
        assert len(first.splitlines()) > 300
        shapes.append(first)
    assert len(set(shapes)) == 3
