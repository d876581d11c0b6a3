"""Faults against real backends: kill -9, SIGSTOP zombies, injected errors; sound info bounds.

kill -9 does not test power loss: the OS keeps what a killed process wrote, and surviving a
power cut rests on the backend's sync level, which these tests do not exercise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from duro.backends import Batch, ObjectRef, open_backend
from duro.consistency.faults import AcquireLog, FaultyBackend, bound_infos, parse_faults
from duro.consistency.history import History
from duro.consistency.runner import run_check, scale_counts
from duro.errors import BackendUnavailable


def test_parse_faults() -> None:
    assert parse_faults("kill,pause") == {"kill", "pause"}
    assert parse_faults("none") == frozenset()
    with pytest.raises(ValueError, match="unknown fault"):
        parse_faults("kill,meteor")


def test_timeout_after_the_write_landed(duro_backend_url: str) -> None:
    inner = open_backend(duro_backend_url)
    faulty = FaultyBackend(inner, rate=1.0, seed=3)
    ref = ObjectRef("KV", "ab" * 32)
    try:
        lease = inner.acquire(ref, owner="t", address=None, now=0.0, until=1e12)
        outcomes = []
        for i in range(20):
            try:
                faulty.commit(ref, lease.epoch, Batch(puts={b"k": str(i).encode()}))
                outcomes.append("ok")
            except BackendUnavailable as exc:
                landed = inner.get_many(ref, [b"k"]).get(b"k") == str(i).encode()
                outcomes.append("landed" if landed else "refused")
                assert ("after" in str(exc)) == landed
        assert {"landed", "refused"} <= set(outcomes)
        assert faulty.injected["commit-after"] == outcomes.count("landed")
    finally:
        inner.close()


def _ev(p: int, t: str, time: int, **kw: object) -> dict[str, object]:
    return {"process": p, "type": t, "f": "put", "object": "o", "key": "k",
            "value": kw.pop("value", "v"), "time": time, **kw}


def test_info_bounds() -> None:
    hist = History.from_dicts([
        _ev(1, "invoke", 10, value="a"),
        _ev(1, "info", 20, error="ObjectReset"),       # turn ran under epoch <= 2
        _ev(2, "invoke", 21, value="b"),
        _ev(2, "info", 22, error="BackendUnavailable"),  # lost connection: end of run
        _ev(3, "invoke", 23, value="c"),                 # open: its process was killed
    ])
    acquires = [(5, "o", 2), (15, "o", 2), (30, "o", 3), (40, "o", 4)]
    out = bound_infos(hist, acquires, end=100)
    infos = {e.process: e.bound for e in out.events if e.type == "info"}
    assert infos == {1: 30, 2: 100, 3: 100}
    killed = bound_infos(hist, acquires, end=100, killed={3: 25})
    assert {e.process: e.bound for e in killed.events if e.type == "info"}[3] == 25


def test_acquire_log_stamps_every_grant(duro_backend_url: str) -> None:
    ticks = iter(range(100))
    log = AcquireLog(open_backend(duro_backend_url), lambda: next(ticks))
    ref = ObjectRef("KV", "cd" * 32)
    try:
        a = log.acquire(ref, owner="x", address=None, now=0.0, until=1.0)
        b = log.acquire(ref, owner="y", address=None, now=2.0, until=3.0)
        assert log.entries == [(0, ref.id, a.epoch), (1, ref.id, b.epoch)]
        assert b.epoch > a.epoch
    finally:
        log.close()


def test_processes_with_kill_pause_and_errors(duro_backend_url: str,
                                              duro_backend_name: str) -> None:
    if duro_backend_name == "memory":
        pytest.skip("memory:// is private to one process; kill/pause need a shared backend")
    counts = scale_counts(duro_backend_name)
    summary = run_check(duro_backend_url, seed=30_000, ops=counts.ops, objects=2, clients=4,
                        processes=2, histories=counts.processes, mode="processes",
                        faults="kill,pause,errors", progress=False)
    out = os.environ.get("DURO_CONSISTENCY_FIGURES")
    if out:
        with Path(out).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": f"processes-{duro_backend_name}",
                                 **summary.to_json()}) + "\n")
    assert summary.verdict == "ok", summary.explanation
    assert summary.histories == counts.processes
    assert summary.hung == 0 and summary.unknowns == 0
    assert summary.faults["kill"] >= 1 and summary.faults["pause"] >= 1
    assert summary.kill_runs >= 0.3 * summary.fault_runs
    assert summary.median_overlap >= 2
