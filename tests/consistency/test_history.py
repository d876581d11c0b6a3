"""History format, validation and merging; the recorder in threads, tasks and OS processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from duro.consistency.history import Event, History, HistoryError, Recorder, merge_histories

HISTORIES = Path(__file__).resolve().parents[2] / "consistency_tests" / "histories"


def line(**kw: object) -> str:
    base: dict[str, object] = {"process": 0, "type": "invoke", "f": "get", "object": "o",
                               "key": "k", "value": None, "time": 0}
    base.update(kw)
    return json.dumps(base)


def test_shipped_histories_round_trip() -> None:
    files = sorted(HISTORIES.glob("*.jsonl"))
    assert len(files) >= 20
    for f in files:
        h = History.load(f)
        again = History.parse(h.dumps().splitlines())
        assert again.events == h.events
        assert [json.loads(x) for x in h.dumps().splitlines()] == [
            json.loads(x) for x in f.read_text().splitlines()]


def test_event_fields_in_design_order() -> None:
    e = Event(3, "ok", "put", "o1", "k1", "v", 7, {"bound": 9})
    assert list(e.to_json()) == ["process", "type", "f", "object", "key", "value", "time",
                                 "bound"]


@pytest.mark.parametrize(("lines", "match"), [
    (["{not json"], r"src line 1: invalid JSON"),
    ([line(), "", line(process=1), "[1, 2]"], r"src line 4: expected a JSON object"),
    ([json.dumps({"process": 0, "type": "invoke"})], r"line 1: missing field\(s\) f, object"),
    ([line(type="done")], r"line 1: 'type' must be one of invoke, ok, fail, info"),
    ([line(f="incr")], r"line 1: 'f' must be one of get"),
    ([line(process="p1")], r"line 1: 'process' must be an integer"),
    ([line(time=1.5)], r"line 1: 'time' must be an integer"),
    ([line(key=None)], r"line 1: 'key' must be a string for get"),
    ([line(f="list", key="k")], r"line 1: 'key' must be null for list"),
    ([line(time=5), line(process=1, time=4)], r"line 2: time 4 goes backwards"),
    ([line(type="ok")], r"line 1: ok for process 0, which has no open invoke"),
    ([line(), line(time=1)], r"line 2: process 0 invokes get while its src line 1 is still open"),
    ([line(), line(type="ok", f="put")], r"line 2: ok put\(o, k\) does not match the open invoke"),
    ([line(f="cas", value=1)], r"line 1: cas invoke value must be \[expected, new\]"),
    ([line(f="list", key=None, value={"start": "a", "start_after": "b"})],
     r"line 1: list bounds give both start and start_after"),
    ([line(f="list", key=None, value={"from": "a"})], r"line 1: unknown list bound"),
    ([line(f="txn", key=None, value=[["x", "k", 1]])], r"line 1: txn micro-op 0 must be"),
    ([line(f="txn", key=None, value=[["r", "k", None]]),
      line(type="ok", f="txn", key=None, value=[["r", "j", 1]])],
     r"line 2: txn ok micro-ops do not match"),
    ([line(f="delete"), line(type="ok", f="delete", value=1)],
     r"line 2: delete ok value must be true/false"),
    ([line(f="list", key=None), line(type="ok", f="list", key=None, value=[["a"]])],
     r"line 2: list ok value must be"),
    ([line(), json.dumps({**json.loads(line(type="ok")), "bound": 3})],
     r"line 2: 'bound' is only meaningful on an info event"),
    ([line(time=5), json.dumps({**json.loads(line(type="info", time=6)), "bound": 2})],
     r"line 2: bound 2 is before the op's invoke time 5"),
])
def test_validation_names_the_line(lines: list[str], match: str) -> None:
    with pytest.raises(HistoryError, match=match):
        History.parse(lines, source="src")


def test_load_errors_are_history_errors(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="cannot read history"):
        History.load(tmp_path / "missing.jsonl")
    bad = tmp_path / "bin.jsonl"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HistoryError, match="not UTF-8"):
        History.load(bad)


def test_from_dicts_names_the_event() -> None:
    with pytest.raises(HistoryError, match="history event 2: 'type'"):
        History.from_dicts([json.loads(line()), json.loads(line(type="x"))])


def test_pairing_open_and_bounded_info() -> None:
    h = History.parse([
        line(process=1, f="put", value="a", time=0),
        line(process=2, f="put", value="b", time=1),
        line(process=3, time=2),
        json.dumps({**json.loads(line(process=1, type="info", f="put", time=3)), "bound": 4}),
        line(process=3, type="ok", value="a", time=4),
        line(process=4, time=9),
        line(process=4, type="ok", time=9),
    ])
    ops = {op.process: op for op in h.ops()}
    assert ops[1].outcome == "info" and ops[1].ret == 4 and ops[1].ret_time == 4
    assert ops[2].outcome == "info" and ops[2].ret is None  # never completed
    assert ops[3].outcome == "ok" and ops[3].result == "a" and (ops[3].call, ops[3].ret) == (2, 4)
    assert h.open_processes() == [2]
    closed = h.close_open(10)
    assert closed.events[-1].type == "info" and closed.events[-1].bound == 10
    assert closed.open_processes() == []
    sub = h.restrict([ops[3]])
    assert [e.type for e in sub] == ["invoke", "ok"]


def test_recorder_threads() -> None:
    rec = Recorder()
    n_threads, n_ops = 8, 200

    def worker(p: int) -> None:
        for i in range(n_ops):
            h = rec.invoke(p, "put", "o", f"k{p}", f"{p}-{i}")
            if i % 2:
                time.sleep(0)
            h.ok()

    ts = [threading.Thread(target=worker, args=(p,)) for p in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    hist = rec.history()
    assert len(hist) == 2 * n_threads * n_ops
    times = [e.time for e in hist]
    assert times == sorted(times)
    for p in range(n_threads):
        vals = [op.arg for op in hist.ops() if op.process == p]
        assert vals == [f"{p}-{i}" for i in range(n_ops)]


def test_recorder_asyncio_and_context_manager() -> None:
    rec = Recorder(logical=True)

    async def client(p: int) -> None:
        for i in range(3):
            with rec.op(p, "get", "o", "k") as h:
                await asyncio.sleep(0)
                if i == 2 and p == 0:
                    raise_timeout()
                h.ok(i)

    def raise_timeout() -> None:
        raise TimeoutError("slow")

    async def main() -> None:
        res = await asyncio.gather(*(client(p) for p in range(3)), return_exceptions=True)
        assert isinstance(res[0], TimeoutError)

    asyncio.run(main())
    hist = rec.history()
    assert [e.time for e in hist] == list(range(len(hist)))
    infos = [e for e in hist if e.type == "info"]
    assert len(infos) == 1 and infos[0].extra == {"error": "TimeoutError"}
    with pytest.raises(RuntimeError, match="already completed"):
        h = rec.invoke(9, "get", "o", "k")
        h.ok(None)
        h.ok(None)


def test_logical_mode_is_deterministic() -> None:
    def run() -> str:
        rec = Recorder(logical=True)
        a = rec.invoke(0, "put", "o", "k", 1)
        b = rec.invoke(1, "get", "o", "k")
        a.ok()
        b.ok(1)
        return rec.history().dumps()

    assert run() == run()


def test_custom_clock_never_goes_backwards() -> None:
    ticks = iter([5, 3, 8, 8])
    rec = Recorder(clock=lambda: next(ticks))
    rec.invoke(0, "get", "o", "k").ok(None)
    rec.invoke(0, "get", "o", "k").ok(None)
    assert [e.time for e in rec.events()] == [5, 5, 8, 8]


def test_merge_equal_times_are_concurrent_and_sources_keep_order() -> None:
    a = [Event(0, "invoke", "put", "o", "k", 1, 1), Event(0, "ok", "put", "o", "k", None, 5),
         Event(0, "invoke", "get", "o", "k", None, 5), Event(0, "ok", "get", "o", "k", 1, 6)]
    b = [Event(1, "invoke", "get", "o", "k", None, 5), Event(1, "ok", "get", "o", "k", None, 7)]
    m = merge_histories([a, b])
    assert [(e.process, e.type) for e in m] == [
        (0, "invoke"), (1, "invoke"), (0, "ok"), (0, "invoke"), (0, "ok"), (1, "ok")]


_CHILD = r"""
import sys, time
from duro.consistency.history import Recorder
path, pid, n, hang = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
with Recorder(path) as rec:
    for i in range(n):
        h = rec.invoke(pid, "put", "o", "k", f"{pid}-{i}")
        h.ok()
    if hang:
        rec.invoke(pid, "put", "o", "k", f"{pid}-last")
        print("ready", flush=True)
        time.sleep(60)
"""


def test_recorder_os_processes_merge_and_kill(tmp_path: Path) -> None:
    procs = []
    for p in range(3):
        path = tmp_path / f"p{p}.jsonl"
        procs.append((path, subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(p), "50", "1" if p == 2 else "0"],
            stdout=subprocess.PIPE, text=True)))
    victim = procs[2][1]
    assert victim.stdout is not None
    assert victim.stdout.readline().strip() == "ready"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    reaped = time.monotonic_ns()
    for _, pr in procs[:2]:
        assert pr.wait(timeout=60) == 0
    merged = merge_histories(History.load(path) for path, _ in procs)
    assert merged.open_processes() == [2]
    final = merged.close_open(reaped)
    ops = final.ops()
    assert len(ops) == 151
    last = next(op for op in ops if op.arg == "2-last")
    assert last.outcome == "info" and last.ret_time == reaped
    times = [e.time for e in final]
    assert times == sorted(times)
