"""Synthetic histories: a simulated linearizable store, and mutations that break them.

Used to test the checker (generated histories must pass, mutated ones must fail) and to
benchmark it. :func:`simulate` gives every client a sequence of ops with random, overlapping
``[invoke, complete]`` intervals on an integer clock (so equal times happen), picks each op's
linearization point inside its interval, applies the ops to a dict in that order to compute the
outputs, and lists the events in time order (invokes before completions at equal times, which
keeps them concurrent). Every written value is unique.

Options: ``info_rate`` (op's outcome unknown; it took effect or not, at random; the client then
continues under a new process ID), ``bounded`` (those ``info`` events carry a ``bound``),
``fail_rate`` (a write certainly did not happen), ``multi`` (objects also see ``list`` and ``txn``).

:func:`mutate` injects one anomaly that provably makes the history non-linearizable:
``stale-read``, ``lost-update``, ``swapped-cas``, ``garbage-read`` (returns None if the history
has no suitable spot).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final, Literal

from duro.consistency.history import Event, History, Operation

__all__ = ["MUTATIONS", "mutate", "simulate"]

MUTATIONS: Final = ("stale-read", "lost-update", "swapped-cas", "garbage-read")


@dataclass
class _Op:
    process: int
    f: Literal["get", "put", "delete", "cas", "list", "txn"]
    obj: str
    key: str | None
    arg: Any
    call: int
    ret: int
    lin: float
    outcome: str = "ok"
    applies: bool = True
    result: Any = None
    bound: int | None = None


def _keys(n: int) -> list[str]:
    return [f"{'ab'[i % 2]}/{i // 2}" for i in range(n)]


def simulate(*, seed: int, ops: int, objects: int = 1, keys: int = 4, clients: int = 4,
             multi: bool | float = False, info_rate: float = 0.0, bounded: bool = True,
             fail_rate: float = 0.0, max_duration: int = 12) -> History:
    """A linearizable history of about *ops* ops (see the module docstring).

    ``multi`` may be a fraction: that share of the objects also gets ``list``/``txn`` ops.
    """
    rng = random.Random(seed)
    per_obj = max(ops // objects, 1)
    all_ops: list[_Op] = []
    next_pid = 0
    vseq = 0
    share = float(multi) if not isinstance(multi, bool) else (1.0 if multi else 0.0)
    n_multi = round(objects * share)
    for o in range(objects):
        obj = f"obj{o}"
        ks = _keys(keys)
        is_multi = o < n_multi
        pids = list(range(next_pid, next_pid + clients))
        next_pid += clients
        clock = [rng.randrange(0, 3) for _ in range(clients)]
        written: dict[str, list[Any]] = {k: [] for k in ks}
        mine: list[_Op] = []
        for _ in range(per_obj):
            c = min(range(clients), key=lambda i: (clock[i], rng.random()))
            call = clock[c]
            dur = rng.randrange(0, max_duration)
            ret = call + dur
            clock[c] = ret + rng.randrange(1, 4)
            lin = rng.uniform(call, ret)
            r = rng.random()
            key: str | None = rng.choice(ks)
            arg: Any = None
            f: Any
            if is_multi and r < 0.12:
                f, key = "list", None
                prefixes: list[str | None] = ["a/", "b/", None]
                arg = {"prefix": rng.choice(prefixes), "reverse": rng.random() < 0.3,
                       "limit": rng.choice([None, None, 1, 2])}
                if rng.random() < 0.2:
                    arg["start"] = rng.choice(ks)
            elif is_multi and r < 0.24:
                f, key = "txn", None
                micro: list[list[str | None]] = []
                for _ in range(rng.randrange(2, 5)):
                    k = rng.choice(ks)
                    kind = rng.choice("rrwwd")
                    if kind == "w":
                        vseq += 1
                        micro.append(["w", k, f"v{vseq}"])
                    else:
                        micro.append([kind, k, None])
                arg = micro
            elif r < 0.5:
                f = "get"
            elif r < 0.75:
                f = "put"
                vseq += 1
                arg = f"v{vseq}"
            elif r < 0.83:
                f = "delete"
            else:
                f = "cas"
                vseq += 1
                hist = written[key or ""]
                exp = rng.choice(hist[-3:]) if hist and rng.random() < 0.85 else None
                arg = [exp, f"v{vseq}"]
            if f in ("put", "cas") and key is not None:
                written[key].append(arg[1] if f == "cas" else arg)
            op = _Op(pids[c], f, obj, key, arg, call, ret, lin)
            writes = f in ("put", "delete", "cas") or (
                f == "txn" and any(m[0] != "r" for m in arg))
            x = rng.random()
            if writes and x < info_rate:
                op.outcome = "info"
                op.applies = rng.random() < 0.5
                if bounded:
                    op.bound = ret
                next_pid += 1
                pids[c] = next_pid - 1
                clock[c] += rng.randrange(0, 3)
            elif writes and f != "cas" and x < info_rate + fail_rate:
                op.outcome = "fail"
                op.applies = False
            mine.append(op)
        # apply in linearization order
        state: dict[str, Any] = {}
        for op in sorted(mine, key=lambda op: op.lin):
            if not op.applies:
                continue
            if op.f == "get":
                op.result = state.get(op.key or "")
            elif op.f == "put":
                state[op.key or ""] = op.arg
            elif op.f == "delete":
                op.result = (op.key or "") in state
                state.pop(op.key or "", None)
            elif op.f == "cas":
                exp, new = op.arg
                cur = state.get(op.key or "")
                if cur == exp and (exp is not None or (op.key or "") not in state):
                    state[op.key or ""] = new
                elif op.outcome == "ok":
                    op.outcome, op.result = "fail", False
            elif op.f == "list":
                b = op.arg
                items = sorted((k, v) for k, v in state.items()
                               if (b["prefix"] is None or k.startswith(b["prefix"]))
                               and (b.get("start") is None or k >= b["start"]))
                if b["reverse"]:
                    items.reverse()
                if b["limit"] is not None:
                    items = items[: b["limit"]]
                op.result = [[k, v] for k, v in items]
            else:
                res = []
                for kind, k, v in op.arg:
                    if kind == "r":
                        res.append(["r", k, state.get(k)])
                    elif kind == "w":
                        state[k] = v
                        res.append(["w", k, v])
                    else:
                        state.pop(k, None)
                        res.append(["d", k, None])
                op.result = res
        all_ops.extend(mine)
    events: list[tuple[int, int, int, Event]] = []
    for n, op in enumerate(all_ops):
        events.append((op.call, 0, n, Event(op.process, "invoke", op.f, op.obj, op.key,
                                            op.arg, op.call)))
        if op.outcome == "info":
            extra = {"bound": op.bound} if op.bound is not None else {}
            events.append((op.ret, 1, n, Event(op.process, "info", op.f, op.obj, op.key, None,
                                               op.ret, extra)))
        else:
            val = op.result if op.f not in ("put", "cas") or op.outcome == "fail" else op.arg
            if op.f == "cas" and op.outcome == "ok":
                val = None
            if op.outcome == "fail" and op.f != "cas":
                val = None
            events.append((op.ret, 1, n, Event(op.process, op.outcome, op.f, op.obj, op.key,  # type: ignore[arg-type]
                                               val, op.ret)))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return History([e[3] for e in events], source=f"simulated history seed={seed}")


def _write_val(op: Operation) -> Any:
    if op.f == "put":
        return op.arg
    if op.f == "cas":
        return op.arg[1]
    return None


def _replace(hist: History, changes: dict[int, Event]) -> History:
    return History([changes.get(i, e) for i, e in enumerate(hist.events)], source=hist.source)


def _with_value(ev: Event, value: Any, typ: str | None = None) -> Event:
    return Event(ev.process, typ or ev.type, ev.f, ev.object, ev.key, value, ev.time,  # type: ignore[arg-type]
                 dict(ev.extra))


def mutate(hist: History, kind: str, rng: random.Random) -> History | None:
    """Inject one anomaly of *kind* (see :data:`MUTATIONS`); None if there is no spot for it."""
    ops = hist.ops()
    puts = [o for o in ops if o.f == "put" and o.outcome == "ok"]
    reads = [o for o in ops if o.f == "get" and o.outcome == "ok"]
    rng.shuffle(reads)
    if kind == "garbage-read":
        if not reads:
            return None
        r = reads[0]
        assert r.done is not None
        return _replace(hist, {r.done: _with_value(hist.events[r.done], "never-written")})
    if kind in ("stale-read", "lost-update"):
        by_key: dict[tuple[str, str | None], list[Operation]] = {}
        for w in puts:
            by_key.setdefault((w.object, w.key), []).append(w)
        cands = []
        for key, ws in by_key.items():
            for w_new in ws:
                olds = [w for w in ws if w.ret is not None and w.ret < w_new.call]
                if not olds:
                    continue
                w_old = max(olds, key=lambda w: w.call)
                later = [r for r in reads if (r.object, r.key) == key and w_new.ret is not None
                         and w_new.ret < r.call]
                if kind == "lost-update":
                    later = [r for r in later if r.result == w_new.arg]
                if later:
                    cands.append((w_old, w_new, later))
        if not cands:
            return None
        w_old, w_new, later = rng.choice(cands)
        if kind == "stale-read":
            r = rng.choice(later)
            assert r.done is not None
            return _replace(hist, {r.done: _with_value(hist.events[r.done], w_old.arg)})
        changes = {}
        for r in ops:  # the write is lost: everyone who saw it sees the previous value instead
            same_key = (r.object, r.key) == (w_new.object, w_new.key)
            if r.f == "get" and r.outcome == "ok" and same_key and r.result == w_new.arg \
                    and r.done is not None:
                changes[r.done] = _with_value(hist.events[r.done], w_old.arg)
        return _replace(hist, changes)
    if kind == "swapped-cas":
        seen = {(o.object, o.key, o.result) for o in reads}
        cas = [o for o in ops if o.f == "cas" and o.outcome == "ok" and o.done is not None
               and (o.object, o.key, o.arg[1]) in seen]
        if not cas:
            return None
        c = rng.choice(cas)
        assert c.done is not None
        return _replace(hist, {c.done: _with_value(hist.events[c.done], False, "fail")})
    raise ValueError(f"unknown mutation {kind!r}; choose from {', '.join(MUTATIONS)}")
