"""Tests of the linearizability checker: known histories, generated ones, mutants, a brute-force
oracle (differential, Hypothesis), budgets, shrinking, reports and the ``duro check`` CLI."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from duro.consistency.checker import check_history
from duro.consistency.cli import register
from duro.consistency.history import Event, History, Operation
from duro.consistency.report import ascii_timeline, html_report
from duro.consistency.synth import MUTATIONS, mutate, simulate

HISTORIES = Path(__file__).resolve().parents[2] / "consistency_tests" / "histories"

EXPECTED_KIND = {
    "bad-garbage-read": "garbage-read",
    "bad-read-of-failed-write": "aborted-read",
    "bad-read-from-future": "future-read",
}


def hist(rows: list[tuple[Any, ...]], obj: str = "o") -> History:
    """Rows ``(process, type, f, key, value[, extra])``; time = row index."""
    evs = []
    for t, r in enumerate(rows):
        p, typ, f, k, v = r[:5]
        extra = r[5] if len(r) > 5 else {}
        evs.append(Event(p, typ, f, obj, k, v, t, extra))
    return History(evs)


# ---------------------------------------------------------------------------------------------
# shipped hand-written histories
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.jsonl")), ids=lambda p: p.stem)
def test_shipped_history(path: Path) -> None:
    r = check_history(path)
    if path.stem.startswith("good-"):
        assert r.verdict == "ok", r.explain()
        assert not r.anomalies and r.witness is None
    else:
        assert path.stem.startswith("bad-")
        assert r.verdict == "anomaly"
        kind = EXPECTED_KIND.get(path.stem, "not-linearizable")
        assert r.anomalies[0].kind == kind, r.explain()
        w = r.witness
        assert w is not None and len(w.ops) <= 6
        # the witness on its own is still an anomaly
        assert check_history(w.history).verdict == "anomaly"


def test_equal_times_follow_the_listing() -> None:
    good = check_history(HISTORIES / "good-equal-times-concurrent.jsonl")
    bad = check_history(HISTORIES / "bad-equal-times-ordered.jsonl")
    assert [e.time for e in good.history] == [e.time for e in bad.history]
    assert good.ok and bad.verdict == "anomaly"


def test_info_bound_matters() -> None:
    bounded = History.load(HISTORIES / "bad-info-after-bound.jsonl")
    unbounded = History([Event(e.process, e.type, e.f, e.object, e.key, e.value, e.time)
                         for e in bounded])
    assert check_history(bounded).verdict == "anomaly"
    assert check_history(unbounded).ok


def test_fail_without_false_is_did_not_happen() -> None:
    rows: list[tuple[Any, ...]] = [(0, "invoke", "put", "x", "a"), (0, "ok", "put", "x", "a"),
                                   (1, "invoke", "cas", "x", ["a", "b"]),
                                   (1, "fail", "cas", "x", None)]
    assert check_history(hist(rows)).ok
    rows[-1] = (1, "fail", "cas", "x", False)
    assert check_history(hist(rows)).verdict == "anomaly"


def test_stored_null_reads_as_null_and_exists() -> None:
    rows: list[tuple[Any, ...]] = [
        (0, "invoke", "put", "x", None), (0, "ok", "put", "x", None),
        (0, "invoke", "get", "x", None), (0, "ok", "get", "x", None),
        (0, "invoke", "list", None, {}), (0, "ok", "list", None, [["x", None]]),
        (0, "invoke", "delete", "x", None), (0, "ok", "delete", "x", True)]
    assert check_history(hist(rows)).ok


def test_values_compare_as_json() -> None:
    rows: list[tuple[Any, ...]] = [(0, "invoke", "put", "x", 1), (0, "ok", "put", "x", 1),
                                   (0, "invoke", "get", "x", None), (0, "ok", "get", "x", True)]
    assert check_history(hist(rows)).verdict == "anomaly"
    rows[-1] = (0, "ok", "get", "x", 1)
    assert check_history(hist(rows)).ok


def test_partitioning() -> None:
    rows: list[tuple[Any, ...]] = [
        (0, "invoke", "put", "a/1", "v1"), (0, "ok", "put", "a/1", "v1"),
        (0, "invoke", "put", "b/1", "v2"), (0, "ok", "put", "b/1", "v2"),
        (0, "invoke", "put", "c", "v3"), (0, "ok", "put", "c", "v3"),
        (0, "invoke", "list", None, {"prefix": "a/"}), (0, "ok", "list", None, [["a/1", "v1"]]),
        (0, "invoke", "txn", None, [["r", "b/1", None], ["w", "c", "v4"]]),
        (0, "ok", "txn", None, [["r", "b/1", "v2"], ["w", "c", "v4"]]),
        (0, "invoke", "list", None, {"prefix": "z/"}), (0, "ok", "list", None, []),
    ]
    r = check_history(hist(rows))
    assert r.ok
    parts = sorted((p.keys, p.model) for p in r.partitions)
    assert parts == [((), "object"), (("a/1",), "object"), (("b/1", "c"), "object")]
    single = check_history(hist(rows[:6]))
    assert sorted((p.keys, p.model) for p in single.partitions) == [
        (("a/1",), "register"), (("b/1",), "register"), (("c",), "register")]


def test_input_forms(tmp_path: Path) -> None:
    h = History.load(HISTORIES / "bad-stale-read.jsonl")
    dicts = [e.to_json() for e in h]
    p = tmp_path / "h.jsonl"
    h.dump(p)
    for form in (h, p, str(p), list(h), dicts):
        assert check_history(form).verdict == "anomaly"


# ---------------------------------------------------------------------------------------------
# generated histories and mutants
# ---------------------------------------------------------------------------------------------
CONFIGS = [
    dict(objects=4, keys=3, clients=4),
    dict(objects=3, keys=4, clients=6, multi=True),
    dict(objects=4, keys=4, clients=5, multi=0.5, info_rate=0.05, fail_rate=0.03),
    dict(objects=2, keys=4, clients=6, multi=True, info_rate=0.04, bounded=False),
]


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
@pytest.mark.parametrize("seed", range(5))
def test_generated_linearizable_histories_pass(cfg: int, seed: int) -> None:
    h = simulate(seed=seed, ops=400, **CONFIGS[cfg])  # type: ignore[arg-type]
    r = check_history(h)
    assert r.ok, r.explain()
    assert r.ops == len(h.ops())


def test_large_generated_history_passes() -> None:
    h = simulate(seed=42, ops=5000, objects=10, keys=4, clients=8, multi=0.5, info_rate=0.01)
    r = check_history(h)
    assert r.ok, r.explain()
    assert len(r.partitions) >= 10


@pytest.mark.parametrize("kind", MUTATIONS)
@pytest.mark.parametrize("seed", range(6))
def test_mutants_fail(kind: str, seed: int) -> None:
    cfg = CONFIGS[seed % 3]
    h = simulate(seed=seed, ops=300, **cfg)  # type: ignore[arg-type]
    m = mutate(h, kind, random.Random(seed))
    if m is None:
        pytest.skip(f"no spot for {kind} in this history")
    r = check_history(m)
    assert r.verdict == "anomaly", kind
    w = r.witness
    assert w is not None
    assert len(w.ops) <= 10, w.to_text()
    assert check_history(w.history).verdict == "anomaly"
    # without prechecks the search alone must also reject it
    assert check_history(m, prechecks=False).verdict == "anomaly"


def test_mutants_found_in_every_config() -> None:
    found = {k: 0 for k in MUTATIONS}
    for seed in range(4):
        h = simulate(seed=100 + seed, ops=300, objects=2, keys=3, clients=5, multi=0.5)
        for k in MUTATIONS:
            m = mutate(h, k, random.Random(seed))
            if m is not None:
                assert check_history(m).verdict == "anomaly"
                found[k] += 1
    assert all(found.values()), found


# ---------------------------------------------------------------------------------------------
# brute-force oracle (independent of models.py) and the differential test
# ---------------------------------------------------------------------------------------------
def _brute_object(ops: list[Operation], times: list[int]) -> bool:
    def last_at_or_before(b: int) -> int:
        return max(i for i, t in enumerate(times) if t <= b)

    must, maybe = [], []
    for op in ops:
        if op.outcome == "ok" or (op.f == "cas" and op.outcome == "fail" and op.result is False):
            must.append((op, op.done))
        elif op.outcome == "info":
            b = op.completion_event.bound if op.completion_event is not None else None
            maybe.append((op, None if b is None else max(op.call, last_at_or_before(b))))

    def run(seq: list[tuple[Operation, int | None]]) -> bool:
        state: dict[str, Any] = {}
        for op, _ in seq:
            known = op.outcome != "info"
            if op.f == "get":
                v = state.get(op.key or "")
                if known and op.result != v:
                    return False
            elif op.f == "put":
                state[op.key or ""] = op.arg
            elif op.f == "delete":
                existed = (op.key or "") in state
                if known and op.result is not existed:
                    return False
                state.pop(op.key or "", None)
            elif op.f == "cas":
                exp, new = op.arg
                k = op.key or ""
                if exp is None:
                    match = k not in state
                else:
                    match = k in state and json.dumps(state[k]) == json.dumps(exp)
                if op.outcome == "ok" and not match:
                    return False
                if op.outcome == "fail" and match:
                    return False
                if match and op.outcome != "fail":
                    state[k] = new
            elif op.f == "list":
                bd = op.arg or {}
                items = sorted((k, v) for k, v in state.items()
                               if k.startswith(bd.get("prefix") or "")
                               and (bd.get("start") is None or k >= bd["start"])
                               and (bd.get("start_after") is None or k > bd["start_after"])
                               and (bd.get("end") is None or k < bd["end"]))
                if bd.get("reverse"):
                    items.reverse()
                if bd.get("limit") is not None:
                    items = items[: bd["limit"]]
                if known and [[k, v] for k, v in items] != op.result:
                    return False
            else:
                micro = op.result if known else op.arg
                for kind, k, v in micro:
                    if kind == "r":
                        if known and state.get(k) != v:
                            return False
                    elif kind == "w":
                        state[k] = v
                    else:
                        state.pop(k, None)
        return True

    for r in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, r):
            group = must + list(chosen)
            for perm in itertools.permutations(group):
                ok = True
                for i, (a, _) in enumerate(perm):
                    for _b, bret in perm[i + 1:]:  # b after a: b must not have ended before a began
                        if bret is not None and bret < a.call:
                            ok = False
                            break
                    if not ok:
                        break
                if ok and run(list(perm)):
                    return True
    return False


def brute_force(h: History) -> bool:
    """Linearizable iff some order of the ops (and subset of info ops) fits real time and a dict."""
    times = [e.time for e in h]
    by_obj: dict[str, list[Operation]] = {}
    for op in h.ops():
        by_obj.setdefault(op.object, []).append(op)
    return all(_brute_object(ops, times) for ops in by_obj.values())


VALS = st.sampled_from([1, 2])
KEYS = st.sampled_from(["a", "b"])


@st.composite
def small_op(draw: st.DrawFn) -> tuple[str, str | None, Any, str, Any]:
    """(f, key, invoke value, outcome, completion value)."""
    f = draw(st.sampled_from(["get", "get", "put", "put", "delete", "cas", "list", "txn"]))
    outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info", "open"]))
    key: str | None = draw(KEYS)
    arg: Any = None
    res: Any = None
    if f == "get":
        res = draw(st.sampled_from([None, 1, 2]))
    elif f == "put":
        arg = draw(VALS)
    elif f == "delete":
        res = draw(st.booleans())
    elif f == "cas":
        arg = [draw(st.sampled_from([None, 1, 2])), draw(VALS)]
        if outcome == "fail":
            res = draw(st.sampled_from([False, None]))
    elif f == "list":
        key = None
        arg = draw(st.fixed_dictionaries({}, optional={
            "prefix": st.sampled_from(["a", "b", ""]), "reverse": st.booleans(),
            "limit": st.integers(0, 2), "end": st.sampled_from(["b", "c"])}))
        pairs = draw(st.lists(st.tuples(KEYS, VALS), max_size=2, unique_by=lambda p: p[0]))
        res = [[k, v] for k, v in sorted(pairs, reverse=bool(arg.get("reverse")))]
    else:
        key = None
        micro = draw(st.lists(st.tuples(st.sampled_from(["r", "w", "d"]), KEYS, VALS),
                              min_size=1, max_size=2))
        arg = [[m, k, v if m == "w" else None] for m, k, v in micro]
        read = st.sampled_from([None, 1, 2])
        res = [[m, k, v if m == "w" else (draw(read) if m == "r" else None)]
               for m, k, v in micro]
    if outcome == "ok" and f in ("put", "cas"):
        res = None
    return f, key, arg, outcome, res


@st.composite
def small_history(draw: st.DrawFn) -> History:
    n_proc = draw(st.integers(1, 3))
    per = [draw(st.lists(small_op(), min_size=1, max_size=4)) for _ in range(n_proc)]
    while sum(len(p) for p in per) > 8:  # the brute force enumerates permutations: <= 8 ops
        max(per, key=len).pop()
    # each op is two steps: invoke, complete (an "open" op is never completed)
    cursor = [0] * n_proc
    phase = [0] * n_proc
    events: list[Event] = []
    t = 0
    pid = list(range(n_proc))
    nxt = n_proc
    pending_bounds: list[tuple[int, int]] = []
    while True:
        live = [p for p in range(n_proc) if cursor[p] < len(per[p])]
        if not live:
            break
        p = draw(st.sampled_from(live))
        t += draw(st.integers(0, 1))
        f, key, arg, outcome, res = per[p][cursor[p]]
        if phase[p] == 0:
            events.append(Event(pid[p], "invoke", f, "o", key, arg, t))  # type: ignore[arg-type]
            phase[p] = 1
            if outcome == "open":
                cursor[p] = len(per[p])  # the process hangs forever
            continue
        extra: dict[str, Any] = {}
        if outcome == "info":
            if draw(st.booleans()):
                extra["bound"] = t + draw(st.integers(0, 3))
                pending_bounds.append((len(events), extra["bound"]))
            events.append(Event(pid[p], "info", f, "o", key, None, t, extra))  # type: ignore[arg-type]
            pid[p] = nxt  # a crashed process continues under a new ID
            nxt += 1
        else:
            events.append(Event(pid[p], outcome, f, "o", key, res, t))  # type: ignore[arg-type]
        phase[p] = 0
        cursor[p] += 1
    return History(events)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_history())
def test_differential_against_brute_force(h: History) -> None:
    assert check_history(h).ok == brute_force(h), h.dumps()


def test_brute_force_agrees_on_shipped_histories() -> None:
    for path in sorted(HISTORIES.glob("*.jsonl")):
        h = History.load(path)
        if len(h.ops()) <= 8:
            assert brute_force(h) == path.stem.startswith("good-"), path.stem


# ---------------------------------------------------------------------------------------------
# budget, shrinking, reports
# ---------------------------------------------------------------------------------------------
def test_budget_gives_unknown() -> None:
    h = simulate(seed=7, ops=400, objects=1, keys=2, clients=8, info_rate=0.1, bounded=False)
    r = check_history(h, budget=5)
    assert r.verdict == "unknown"
    assert r.unknown() and "budget exhausted" in r.explain()
    assert check_history(h).ok


def test_shrinks_to_small_witness() -> None:
    h = simulate(seed=3, ops=2000, objects=2, keys=4, clients=8, multi=True)
    m = mutate(h, "stale-read", random.Random(1))
    assert m is not None
    r = check_history(m)
    w = r.witness
    assert w is not None
    assert 2 <= len(w.ops) <= 6, w.to_text()
    unshrunk = check_history(m, shrink=False)
    assert unshrunk.witness is not None and len(unshrunk.witness.ops) > 100
    text = r.explain()
    assert "ANOMALY not-linearizable" in text and "longest linearizable prefix" in text
    assert "✗" in text


def test_ascii_timeline_shape() -> None:
    h = History.load(HISTORIES / "bad-stale-read.jsonl")
    pic = ascii_timeline(h.ops())
    lines = pic.splitlines()
    assert lines[0].startswith("P0: |") and "put(x, \"a\")" in lines[0]
    assert lines[1].startswith("P1:") and "get(x) → \"a\"" in lines[1]
    # P1's get starts after both of P0's puts end
    assert lines[1].index("|") > lines[0].rindex("|")
    info = ascii_timeline(History.load(HISTORIES / "good-info-never-happened.jsonl").ops())
    assert "?>" in info


def test_html_report_is_self_contained() -> None:
    r = check_history(HISTORIES / "bad-torn-txn.jsonl")
    page = html_report(r)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<svg" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in page and "txn read b=" in page


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "check" a subcommand
        pass

    return app


def test_cli_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    app = _app()
    ok = runner.invoke(app, ["check", "--history", str(HISTORIES / "good-cas.jsonl")])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["check", "--history", str(HISTORIES / "bad-double-cas.jsonl"),
                              "--report", str(tmp_path / "r.html")])
    assert bad.exit_code == 1
    assert "not-linearizable" in bad.output and "cas(x" in bad.output
    assert "<svg" in (tmp_path / "r.html").read_text()
    broken = tmp_path / "broken.jsonl"
    broken.write_text((HISTORIES / "good-cas.jsonl").read_text() + '{"process": 1}\n')
    res = runner.invoke(app, ["check", "--history", str(broken)])
    assert res.exit_code == 2 and "line 11" in res.output
    res = runner.invoke(app, ["check", "--backend", "memory://", "--histories", "2",
                              "--ops", "60", "--mode", "deterministic"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["check", "--backend", "memory://", "--clients", "9"])
    assert res.exit_code == 2 and "--clients" in res.output
    res = runner.invoke(app, ["check", "--backend", "nosuch://x"])
    assert res.exit_code == 2 and "unknown backend scheme" in res.output
    res = runner.invoke(app, ["check", "--history", str(broken), "--backend", "memory://"])
    assert res.exit_code == 2 and "cannot be combined with --backend" in res.output
    h = simulate(seed=7, ops=400, objects=1, keys=2, clients=8, info_rate=0.1, bounded=False)
    hp = tmp_path / "hard.jsonl"
    h.dump(hp)
    res = runner.invoke(app, ["check", "--history", str(hp), "--budget", "5",
                              "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 3, res.output
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "unknown"
    res = runner.invoke(app, ["check", "--history", str(HISTORIES / "bad-stale-read.jsonl"),
                              "--report", str(tmp_path / "r.txt")])
    assert res.exit_code == 1 and "ANOMALY" in (tmp_path / "r.txt").read_text()


def test_duro_console_entry_point() -> None:
    cmd = [sys.executable, "-c", "from duro.cli import main; main()", "check", "--history"]
    good = subprocess.run([*cmd, str(HISTORIES / "good-list-txn.jsonl")], capture_output=True,
                          text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    bad = subprocess.run([*cmd, str(HISTORIES / "bad-list-misses-write.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "list" in bad.stdout
