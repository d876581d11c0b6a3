"""Histories: the JSON-lines event format (docs/reference/history.md), its validation, and the
recorder.

One event per line, Jepsen's shape::

    {"process": 3, "type": "invoke", "f": "put", "object": "o", "key": "k", "value": 7, "time": 12}
    {"process": 3, "type": "ok", "f": "put", "object": "o", "key": "k", "value": 7, "time": 19}

``type`` is ``invoke`` | ``ok`` | ``fail`` | ``info``; ``f`` is ``get`` | ``put`` | ``delete`` |
``cas`` | ``list`` | ``txn``. Events are listed in the order they happened: ``time`` never
decreases, and at equal times the *listing* decides (a completion listed before an invoke
happened first; an invoke listed before a completion overlaps it). The checker therefore orders
events by their position in the file, which is exactly the happened-before order.

Values (docs/reference/history.md): ``get`` → ok value is the value read (``null`` if absent);
``put`` → the value written (taken from the invoke); ``delete`` → ok value is whether the key
existed; ``cas`` → invoke value ``[expected, new]`` (expected ``null`` = key absent), completed
``ok`` (swapped) or ``fail``; ``list`` → ``key`` null, invoke value ``{"prefix", "start",
"start_after", "end", "reverse", "limit"}`` (missing = null), ok value ``[[k, v], ...]``; ``txn`` →
``key`` null, value a list of micro-ops ``[["r", k, v], ["w", k, v], ["d", k, null]]`` (the ok event
carries the values read).

Two refinements, both optional extra fields (extra fields are kept and otherwise ignored):

* a ``cas`` completed ``fail`` with ``"value": false`` means "compared and found a different
  value" — the checker then requires the state to differ from the expectation at some point of
  the op's interval. Any other ``fail`` means the op certainly did not happen.
* an ``info`` event may carry ``"bound": T``: the op took effect at a time ``<= T`` or never
  (e.g. ``T`` = the time its worker process was reaped). Without a bound an ``info`` op may take
  effect at any time after its invoke, or never. An invoke left open at the end of a history is
  an unbounded ``info``.

API::

    hist = History.load("run.jsonl")          # validates; HistoryError names the line
    hist.ops()                                # paired Operation records
    hist.dump("copy.jsonl")
    merge_histories([h1, h2])                 # per-process files → one (equal times: concurrent)

    rec = Recorder()                          # monotonic ns; Recorder(logical=True): steps
    with rec.op(process=1, f="put", object="o1", key="k", value="v1") as op:
        stub_result = ...                     # do the call
        op.ok()                               # or op.ok(value) / op.fail() / op.info(); an
                                              # exception leaving the block records ``info``
    rec.history()                             # a History

``Recorder`` is thread-safe (one lock; the stamp is taken under it so the listing order is the
true order), usable from asyncio tasks (it never awaits), and from OS processes: give each
process its own ``Recorder(path=...)`` (each event is written and flushed as one line, so a
``kill -9`` loses nothing already recorded) and merge the files afterwards.
"""

from __future__ import annotations

import bisect
import builtins
import heapq
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TextIO

from duro.errors import DuroError

__all__ = [
    "COMPLETIONS",
    "FUNCTIONS",
    "TYPES",
    "Event",
    "History",
    "HistoryError",
    "OpHandle",
    "Operation",
    "Recorder",
    "merge_histories",
]

EventType = Literal["invoke", "ok", "fail", "info"]
Function = Literal["get", "put", "delete", "cas", "list", "txn"]

TYPES: Final = ("invoke", "ok", "fail", "info")
COMPLETIONS: Final = frozenset({"ok", "fail", "info"})
FUNCTIONS: Final = ("get", "put", "delete", "cas", "list", "txn")
FIELDS: Final = ("process", "type", "f", "object", "key", "value", "time")
_FIELDSET: Final = frozenset(FIELDS)
LIST_BOUNDS: Final = ("prefix", "start", "start_after", "end", "reverse", "limit")


class HistoryError(DuroError, ValueError):
    """A history file or event is malformed; the message names the line (or event index)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history."""

    process: int
    type: EventType
    f: Function
    object: str
    key: str | None
    value: Any
    time: int
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this event (the documented fields first, then any extras)."""
        d: dict[str, Any] = {
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "object": self.object,
            "key": self.key,
            "value": self.value,
            "time": self.time,
        }
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def to_line(self) -> str:
        """The event as one JSON line (no trailing newline)."""
        return json.dumps(self.to_json(), separators=(", ", ": "), ensure_ascii=False)

    @property
    def bound(self) -> int | None:
        """For an ``info`` event: the time by which the op took effect, if it did (else None)."""
        b = self.extra.get("bound")
        return b if isinstance(b, int) and not isinstance(b, bool) else None

    @classmethod
    def from_json(cls, obj: builtins.object, where: str = "event") -> Event:
        """Build an event from a decoded JSON object, checking every field."""
        if not isinstance(obj, dict):
            raise HistoryError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if len(obj) < len(FIELDS) or not _FIELDSET.issubset(obj):
            missing = [k for k in FIELDS if k not in obj]
            raise HistoryError(f"{where}: missing field(s) {', '.join(missing)}")
        process, typ, f = obj["process"], obj["type"], obj["f"]
        ob, key, t = obj["object"], obj["key"], obj["time"]
        if not isinstance(process, int) or isinstance(process, bool):
            raise HistoryError(f"{where}: 'process' must be an integer, got {process!r:.60}")
        if typ not in TYPES:
            raise HistoryError(
                f"{where}: 'type' must be one of {', '.join(TYPES)}; got {typ!r:.60}")
        if f not in FUNCTIONS:
            raise HistoryError(
                f"{where}: 'f' must be one of {', '.join(FUNCTIONS)}; got {f!r:.60}")
        if not isinstance(ob, str):
            raise HistoryError(f"{where}: 'object' must be a string, got {ob!r:.60}")
        if not isinstance(t, int) or isinstance(t, bool):
            raise HistoryError(f"{where}: 'time' must be an integer, got {t!r:.60}")
        if f in ("list", "txn"):
            if key is not None:
                raise HistoryError(f"{where}: 'key' must be null for {f}, got {key!r:.60}")
        elif not isinstance(key, str):
            raise HistoryError(f"{where}: 'key' must be a string for {f}, got {key!r:.60}")
        extra = {k: v for k, v in obj.items() if k not in _FIELDSET} if len(obj) > 7 else {}
        if "bound" in extra:
            b = extra["bound"]
            if typ != "info":
                raise HistoryError(f"{where}: 'bound' is only meaningful on an info event")
            if b is not None and (not isinstance(b, int) or isinstance(b, bool)):
                raise HistoryError(f"{where}: 'bound' must be an integer time, got {b!r:.60}")
        return cls(process, typ, f, ob, key, obj["value"], t, extra)


@dataclass(frozen=True, slots=True)
class Operation:
    """An invoke paired with its completion.

    ``call``/``ret`` are positions in the event listing (the checker's time axis); ``ret`` is
    None for an unbounded ``info`` op (it may take effect at any later point, or never). For a
    bounded ``info`` op ``ret`` is the position of the last event at or before its bound.
    ``outcome`` is ``ok``, ``fail`` or ``info``; ``result`` the completion value (None for
    ``info``/open ops); ``arg`` the invoke value; ``done`` the completion event's position.
    """

    index: int
    process: int
    f: Function
    object: str
    key: str | None
    arg: Any
    outcome: Literal["ok", "fail", "info"]
    result: Any
    call: int
    ret: int | None
    call_time: int
    ret_time: int | None
    invoke_event: Event
    completion_event: Event | None
    done: int | None = None

    def events(self) -> list[Event]:
        """The op's events (invoke, and completion if any)."""
        if self.completion_event is None:
            return [self.invoke_event]
        return [self.invoke_event, self.completion_event]

    @property
    def cas_mismatch(self) -> bool:
        """True for a ``cas`` that completed ``fail`` with value ``false`` (compared, differed)."""
        return self.f == "cas" and self.outcome == "fail" and self.result is False

    def label(self) -> str:
        """A short human label, e.g. ``put(k1, "v3")`` or ``get(k1) → "v2"``."""
        return describe_op(self)


def _short(v: Any, limit: int = 24) -> str:
    s = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def describe_op(op: Operation) -> str:
    """A label: ``put(k, 3)``, ``get(k) → 3``, ``cas(k, 1→2) ok``, ``txn[r k 3, w j 4]``…"""
    f, k = op.f, op.key
    res = op.result if op.outcome == "ok" else None
    tail = {"ok": "", "fail": " ✗", "info": " ?"}[op.outcome]
    if f == "get":
        return f"get({k}) → {_short(res)}" if op.outcome == "ok" else f"get({k}){tail}"
    if f == "put":
        return f"put({k}, {_short(op.arg)}){tail}"
    if f == "delete":
        return f"delete({k}) → {_short(res)}" if op.outcome == "ok" else f"delete({k}){tail}"
    if f == "cas":
        exp, new = op.arg if isinstance(op.arg, list) and len(op.arg) == 2 else (None, None)
        mark = {"ok": " ok", "fail": " ✗", "info": " ?"}[op.outcome]
        if op.cas_mismatch:
            mark = " ≠"
        return f"cas({k}, {_short(exp, 12)}→{_short(new, 12)}){mark}"
    if f == "list":
        bounds = op.arg if isinstance(op.arg, dict) else {}
        b = ",".join(f"{n}={_short(bounds[n], 12)}" for n in LIST_BOUNDS
                     if bounds.get(n) is not None)
        if op.outcome == "ok":
            return f"list({b}) → {_short(res, 40)}"
        return f"list({b}){tail}"
    micro = res if op.outcome == "ok" and isinstance(res, list) else op.arg
    parts = []
    for m in micro if isinstance(micro, list) else []:
        if isinstance(m, list) and len(m) == 3:
            kind, mk, mv = m
            if kind == "d":
                parts.append(f"d {mk}")
            elif kind == "r" and op.outcome != "ok":
                parts.append(f"r {mk}")
            else:
                parts.append(f"{kind} {mk} {_short(mv, 12)}")
    return f"txn[{', '.join(parts)}]{tail}"


def _check_arg(ev: Event, where: str) -> None:
    f, v = ev.f, ev.value
    if f == "cas" and not (isinstance(v, list) and len(v) == 2):
        raise HistoryError(f"{where}: cas invoke value must be [expected, new], got {v!r:.60}")
    if f == "list":
        if v is None:
            return
        if not isinstance(v, dict):
            raise HistoryError(
                f"{where}: list invoke value must be an object of bounds, got {v!r:.60}")
        bad = [k for k in v if k not in LIST_BOUNDS]
        if bad:
            raise HistoryError(f"{where}: unknown list bound(s) {', '.join(map(repr, bad))}")
        for name in ("prefix", "start", "start_after", "end"):
            if v.get(name) is not None and not isinstance(v[name], str):
                raise HistoryError(f"{where}: list bound {name!r} must be a string or null")
        if v.get("start") is not None and v.get("start_after") is not None:
            raise HistoryError(f"{where}: list bounds give both start and start_after")
        lim = v.get("limit")
        if lim is not None and (not isinstance(lim, int) or isinstance(lim, bool) or lim < 0):
            raise HistoryError(f"{where}: list limit must be a non-negative integer or null")
        if v.get("reverse") not in (None, True, False):
            raise HistoryError(f"{where}: list reverse must be a boolean or null")
    if f == "txn":
        _check_micro(v, where)


def _check_micro(v: Any, where: str) -> None:
    if not isinstance(v, list):
        raise HistoryError(f"{where}: txn value must be a list of micro-ops, got {v!r:.60}")
    for i, m in enumerate(v):
        if not (isinstance(m, list) and len(m) == 3 and m[0] in ("r", "w", "d")
                and isinstance(m[1], str)):
            raise HistoryError(
                f"{where}: txn micro-op {i} must be [\"r\"|\"w\"|\"d\", key, value], got {m!r:.60}")


def _check_result(inv: Event, ev: Event, where: str) -> None:
    f, v = ev.f, ev.value
    if ev.type != "ok":
        return
    if f == "delete" and not isinstance(v, bool):
        raise HistoryError(f"{where}: delete ok value must be true/false (existed), got {v!r:.60}")
    if f == "list" and (not isinstance(v, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in v)):
        raise HistoryError(f"{where}: list ok value must be [[key, value], ...], got {v!r:.60}")
    if f == "txn":
        _check_micro(v, where)
        a = inv.value
        if len(v) != len(a) or any(x[0] != y[0] or x[1] != y[1] for x, y in zip(v, a, strict=True)):
            raise HistoryError(f"{where}: txn ok micro-ops do not match those of its invoke")


class History:
    """A validated, ordered list of events (see the module docstring)."""

    def __init__(self, events: Iterable[Event], *, source: str = "history") -> None:
        self.events: list[Event] = list(events)
        self.source = source
        self._ops: list[Operation] | None = None
        self._validate()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def parse(cls, lines: Iterable[str], *, source: str = "history") -> History:
        """Parse JSON lines (blank lines are skipped); errors name ``source line N``."""
        events: list[Event] = []
        lineno: list[int] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{source} line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HistoryError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})",
                                   orig=exc) from exc
            except RecursionError as exc:
                raise HistoryError(f"{where}: a value is nested too deeply to read "
                                   "(more levels of lists/objects than Python's recursion "
                                   "limit)", orig=exc) from exc
            events.append(Event.from_json(obj, where))
            lineno.append(n)
        h = cls.__new__(cls)
        h.events, h.source, h._ops = events, source, None
        h._validate(lineno)
        return h

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        """Read a JSONL history file."""
        p = Path(path)
        try:
            with p.open(encoding="utf-8") as fh:
                history = cls.parse(fh, source=str(p))
        except OSError as exc:
            raise HistoryError(f"cannot read history {p}: {exc.strerror or exc}", orig=exc) from exc
        except UnicodeDecodeError as exc:
            raise HistoryError(f"{p}: not UTF-8 text: {exc}", orig=exc) from exc
        if not history.events:
            raise HistoryError(f"{p} holds no events (the file is empty or has blank lines "
                               "only): nothing to check")
        return history

    @classmethod
    def from_dicts(cls, objs: Iterable[Mapping[str, Any]], *, source: str = "history") -> History:
        """Build from decoded JSON objects (errors name ``event N``, counted from 1)."""
        return cls([Event.from_json(dict(o), f"{source} event {i}") for i, o in enumerate(objs, 1)],
                   source=source)

    def dumps(self) -> str:
        """The history as JSONL text."""
        return "".join(e.to_line() + "\n" for e in self.events)

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the history as a JSONL file."""
        Path(path).write_text(self.dumps(), encoding="utf-8")

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    # -- validation and pairing ---------------------------------------------------------
    def _validate(self, lineno: Sequence[int] | None = None) -> None:
        def where(i: int) -> str:
            if lineno is not None:
                return f"{self.source} line {lineno[i]}"
            return f"{self.source} event {i + 1}"

        open_: dict[int, int] = {}
        last_t: int | None = None
        for i, ev in enumerate(self.events):
            if last_t is not None and ev.time < last_t:
                raise HistoryError(f"{where(i)}: time {ev.time} goes backwards (previous event "
                                   f"has time {last_t}); events must be listed in time order")
            last_t = ev.time
            if ev.type == "invoke":
                if ev.process in open_:
                    raise HistoryError(
                        f"{where(i)}: process {ev.process} invokes {ev.f} while its "
                        f"{where(open_[ev.process])} is still open (a process does one thing at "
                        "a time)")
                _check_arg(ev, where(i))
                open_[ev.process] = i
            else:
                j = open_.pop(ev.process, None)
                if j is None:
                    raise HistoryError(f"{where(i)}: {ev.type} for process {ev.process}, which has "
                                       "no open invoke")
                inv = self.events[j]
                if (inv.f, inv.object, inv.key) != (ev.f, ev.object, ev.key):
                    raise HistoryError(
                        f"{where(i)}: {ev.type} {ev.f}({ev.object}, {ev.key}) does not match the "
                        f"open invoke {inv.f}({inv.object}, {inv.key}) of process {ev.process} "
                        f"({where(j)})")
                b = ev.bound
                if b is not None and b < inv.time:
                    raise HistoryError(f"{where(i)}: bound {b} is before the op's invoke time "
                                       f"{inv.time}")
                _check_result(inv, ev, where(i))

    def ops(self) -> list[Operation]:
        """Pair invokes with completions; open invokes become unbounded ``info`` ops."""
        if self._ops is not None:
            return self._ops
        evs = self.events
        times = [e.time for e in evs]
        open_: dict[int, int] = {}
        pairs: list[tuple[int, int | None]] = []
        for i, ev in enumerate(evs):
            if ev.type == "invoke":
                open_[ev.process] = len(pairs)
                pairs.append((i, None))
            else:
                k = open_.pop(ev.process)
                pairs[k] = (pairs[k][0], i)
        ops: list[Operation] = []
        for n, (ci, ri) in enumerate(pairs):
            inv = evs[ci]
            comp = evs[ri] if ri is not None else None
            outcome: Literal["ok", "fail", "info"] = "info" if comp is None else comp.type  # type: ignore[assignment]
            ret: int | None = ri
            ret_time = comp.time if comp is not None else None
            result = comp.value if comp is not None and outcome != "info" else None
            if outcome == "info":
                b = comp.bound if comp is not None else None
                if b is None:
                    ret, ret_time = None, None
                else:
                    ret = max(ci, bisect.bisect_right(times, b) - 1)
                    ret_time = b
            ops.append(Operation(n, inv.process, inv.f, inv.object, inv.key, inv.value, outcome,
                                 result, ci, ret, inv.time, ret_time, inv, comp, ri))
        self._ops = ops
        return ops

    def objects(self) -> list[str]:
        """Object IDs in order of first appearance."""
        return list(dict.fromkeys(e.object for e in self.events))

    def open_processes(self) -> list[int]:
        """Processes whose last invoke has no completion."""
        open_: dict[int, None] = {}
        for ev in self.events:
            if ev.type == "invoke":
                open_[ev.process] = None
            else:
                open_.pop(ev.process, None)
        return list(open_)

    def close_open(self, time: int, *, bounded: bool = True) -> History:
        """A copy with an ``info`` completion for every open invoke, appended at the end.

        With ``bounded`` (the default) each carries ``"bound": time`` — use it when the
        processes serving those ops are known to be gone (e.g. reaped after ``kill -9``).
        """
        open_: dict[int, Event] = {}
        for ev in self.events:
            if ev.type == "invoke":
                open_[ev.process] = ev
            else:
                open_.pop(ev.process, None)
        extra = {"bound": time} if bounded else {}
        at = max(time, self.events[-1].time) if self.events else time
        add = [Event(p, "info", e.f, e.object, e.key, None, at, dict(extra))
               for p, e in open_.items()]
        return History([*self.events, *add], source=self.source)

    def restrict(self, ops: Iterable[Operation]) -> History:
        """The sub-history holding only the events of *ops* (in their original order)."""
        keep = sorted({i for op in ops for i in (op.call, op.done) if i is not None})
        return History([self.events[i] for i in keep], source=self.source)


def merge_histories(histories: Iterable[History | Iterable[Event]]) -> History:
    """Merge per-source histories (e.g. one per OS process) into one, ordered by time.

    Each source keeps its own order. At equal times, invokes from any source are listed before
    completions, so ops stamped with equal times in different processes count as concurrent
    (the sound choice: their true order is unknown).
    """
    sources = [list(h.events if isinstance(h, History) else h) for h in histories]
    heap: list[tuple[int, int, int, int]] = []
    for s, evs in enumerate(sources):
        if evs:
            heap.append((evs[0].time, evs[0].type != "invoke", s, 0))
    heapq.heapify(heap)
    out: list[Event] = []
    while heap:
        _, _, s, i = heapq.heappop(heap)
        out.append(sources[s][i])
        if i + 1 < len(sources[s]):
            ev = sources[s][i + 1]
            heapq.heappush(heap, (ev.time, ev.type != "invoke", s, i + 1))
    return History(out, source="merged history")


class OpHandle:
    """An op in flight, returned by :meth:`Recorder.op` / :meth:`Recorder.invoke`."""

    __slots__ = ("_rec", "done", "f", "key", "object", "process")

    def __init__(self, rec: Recorder, process: int, f: Function, object: str,
                 key: str | None) -> None:
        self._rec, self.process, self.f, self.object, self.key = rec, process, f, object, key
        self.done = False

    def _complete(self, typ: EventType, value: Any, extra: Mapping[str, Any]) -> None:
        if self.done:
            raise RuntimeError(f"op {self.f} of process {self.process} already completed")
        self.done = True
        self._rec._emit(self.process, typ, self.f, self.object, self.key, value, extra)

    def ok(self, value: Any = None, **extra: Any) -> None:
        """Record success with the completion value (the value read, existed flag, …)."""
        self._complete("ok", value, extra)

    def fail(self, value: Any = None, **extra: Any) -> None:
        """Record that the op certainly did not happen (``cas`` mismatch: ``fail(False)``)."""
        self._complete("fail", value, extra)

    def info(self, value: Any = None, *, bound: int | None = None, **extra: Any) -> None:
        """Record an unknown outcome (optionally ``bound``: it took effect by then or never)."""
        if bound is not None:
            extra["bound"] = bound
        self._complete("info", value, extra)

    def __enter__(self) -> OpHandle:
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.done:
            extra = {"error": type(exc).__name__} if exc is not None else {}
            self._complete("info", None, extra)


class Recorder:
    """Records events from threads, asyncio tasks or (one recorder each) OS processes.

    * ``Recorder()`` stamps ``time.monotonic_ns()`` (CLOCK_MONOTONIC: comparable across the
      processes of one Linux host); the stamp is taken under the recorder's lock, so the
      listing order is the real order.
    * ``Recorder(logical=True)``: deterministic mode; ``time`` is a logical step that advances by
      one per event, unless the scheduler supplies ``clock`` (e.g. its step counter).
    * ``path``: also append every event to that file as one flushed line.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, logical: bool = False,
                 clock: Callable[[], int] | None = None, first_process: int = 0) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._step = itertools.count()
        if clock is not None:
            self._clock = clock
        elif logical:
            self._clock = self._step.__next__
        else:
            self._clock = time.monotonic_ns
        self._last = -(1 << 62)
        self._pids = itertools.count(first_process)
        self._fh: TextIO | None = None
        if path:
            self._fh = Path(path).open("a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def new_process(self) -> int:
        """A process number not handed out before by this recorder."""
        with self._lock:
            return next(self._pids)

    def _emit(self, process: int, typ: EventType, f: Function, object: str, key: str | None,
              value: Any, extra: Mapping[str, Any]) -> None:
        with self._lock:
            t = max(self._clock(), self._last)  # never backwards, even with a custom clock
            self._last = t
            ev = Event(process, typ, f, object, key, value, t, dict(extra))
            self._events.append(ev)
            if self._fh is not None:
                self._fh.write(ev.to_line() + "\n")
                self._fh.flush()

    def invoke(self, process: int, f: Function, object: str, key: str | None = None,
               value: Any = None, **extra: Any) -> OpHandle:
        """Record an invoke now; complete it through the returned handle."""
        if f not in FUNCTIONS:
            raise ValueError(f"unknown function {f!r}")
        self._emit(process, "invoke", f, object, key, value, extra)
        return OpHandle(self, process, f, object, key)

    op = invoke  # ``with rec.op(...) as h:`` reads better

    def events(self) -> list[Event]:
        """A snapshot of the events so far."""
        with self._lock:
            return list(self._events)

    def history(self) -> History:
        """The events so far as a validated :class:`History`."""
        return History(self.events(), source="recorded history")

    def close(self) -> None:
        """Close the output file, if any."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
