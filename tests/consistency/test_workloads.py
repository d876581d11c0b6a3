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


def test_rich_programs_cover_every_op_shape() -> None:
    from duro.consistency.workloads import ALARM_KEY, BIG_PREFIX
    from duro.ids import id_from_string

    ops = [o for seed in range(4) for c in random_program(
        seed, objects=2, clients=4, ops=400, rich=True, big=300).clients for o in c.ops]
    lists = [o.arg for o in ops if o.f == "list"]
    shapes = {tuple(sorted(k for k, v in b.items() if v is not None)) for b in lists}
    assert len(shapes) >= 7
    for bound in ("start", "start_after", "end", "prefix", "reverse", "limit"):
        assert any(bound in b for b in lists), bound
    assert any(o.f == "txn" and isinstance(o.arg, list) and all(m[0] == "r" for m in o.arg)
               for o in ops)  # get_many
    assert {o.f for o in ops if o.key == ALARM_KEY} == {"get", "put", "delete"}
    fills = [o for o in ops if o.f == "txn" and isinstance(o.arg, list) and len(o.arg) > 256]
    assert fills and all(m[1].startswith(BIG_PREFIX) for m in fills[0].arg)
    assert max(o.pad for o in ops) >= 1000
    small = random_program(1, objects=2, clients=4, ops=2000, rich=True)
    assert any(o.f == "txn" and isinstance(o.arg, dict) for c in small.clients for o in c.ops)
    many = random_program(1, objects=2, clients=2, ops=100, rich=True, shared_ids=6)
    raw = [o.removeprefix("id:") for o in many.objects if o.startswith("id:")]
    assert len(raw) == 6 and len({r[:44] for r in raw}) == 1 and len(set(raw)) == 6
    for r in raw:
        id_from_string("KV", r)  # minted by the namespace


def test_default_shapes_reach_every_backend_method_and_argument(tmp_path: Path) -> None:
    """What the default run makes the backend do, logged below the runtime."""
    from duro.backends._proxy import ProxyBackend
    from duro.backends.base import UNCHANGED, Batch, ObjectRef
    from duro.consistency.runner import history_shape

    seen: set[str] = set()

    class Log(ProxyBackend):
        def get_many(self, ref: ObjectRef, keys: object) -> dict[bytes, bytes]:
            seen.add("get_many" + ("+" if len(keys) > 1 else ""))  # type: ignore[arg-type]
            return super().get_many(ref, keys)  # type: ignore[arg-type]

        def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *,
                 reverse: bool = False, limit: int | None = None) -> list[tuple[bytes, bytes]]:
            seen.update({"scan"} | ({"scan-reverse"} if reverse else set())
                        | ({"scan-limit"} if limit is not None and limit < 256 else set())
                        | ({"scan-bounded"} if lo is not None and hi is not None else set()))
            rows = super().scan(ref, lo, hi, reverse=reverse, limit=limit)
            if len(rows) > 256:
                seen.add("scan-large")
            return rows

        def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
            seen.update({"commit"} | ({"delete_all"} if batch.delete_all else set())
                        | ({"alarm"} if batch.alarm is not UNCHANGED else set())
                        | ({"big-batch"} if len(batch.puts) > 256 else set())
                        | ({"big-value"} if any(len(v) > 1000 for v in batch.puts.values())
                           else set()))
            super().commit(ref, epoch, batch)

    url = make_backend_url("sqlite", tmp_path) + "?sync=off"
    for seed in range(8):
        shape = history_shape(seed, 2, 4)
        backend = open_backend(url)
        try:
            prog = random_program(seed, objects=shape.objects, clients=shape.clients, ops=200,
                                  processes=2, prefix=f"s{seed}-", rich=True, big=shape.big,
                                  shared_ids=shape.shared_ids)
            run = run_deterministic(prog, backend, RandomChooser(seed), processes=2,
                                    faults=FAULTS, seed=seed, limits=shape.limits, evict=True,
                                    wrap=Log, reopen=lambda: open_backend(url))
        finally:
            backend.close()
        assert check_history(run.history).ok
    assert seen >= {"get_many", "get_many+", "scan", "scan-reverse", "scan-limit",
                    "scan-bounded", "scan-large", "commit", "delete_all", "alarm",
                    "big-batch", "big-value"}, seen
    # get_alarm is not among them: an activation reads the alarm inside its acquire
    # (AcquireOp with load); the contract stage calls get_alarm directly.
