"""The linearizability checker: prechecks, P-compositional WGL search, shrinking, verdicts.

Public API (what workloads call)::

    from duro.consistency.checker import check_history

    result = check_history(history, budget=1_000_000, timeout=30.0)
    result.verdict        # "ok" | "anomaly" | "unknown"
    result.ok             # verdict == "ok"
    result.partitions     # [PartitionResult(object, keys, model, ops, verdict, steps, seconds)]
    result.anomalies      # [Anomaly(kind, object, keys, message, witness)]
    result.witness        # the first anomaly's Witness (shrunk sub-history), or None
    print(result.explain())  # verdict, per-partition summary, each witness as an ASCII timeline

``history`` may be a :class:`~duro.consistency.history.History`, a path to a JSONL file, or an
iterable of :class:`~duro.consistency.history.Event` / JSON dicts.

Pipeline (Lowe, "Testing for linearizability", 2017; Porcupine):

1. **Prechecks**, O(n) per object: a read of a value no op wrote ("garbage read"), of a value
   only failed ops wrote ("aborted read"), or of a value whose every writer was invoked after
   the read completed ("read from the future"). Each is an anomaly with a tiny witness.
2. **Partitioning**: by object, then by key; keys tied by a ``txn`` or lying in a ``list``'s
   range are merged (union-find), and such groups use the whole-group :class:`ObjectModel`,
   single keys the :class:`RegisterModel`. A history is linearizable iff every partition is.
3. **Search** per partition: Wing-Gong/Lowe over a dancing-links list of call/return entries
   with a memo of ``(linearized bitset, model state)`` (Porcupine's ``checkSingle``). ``info``
   ops have no return entry (they may take effect any time after their invoke, or never) unless
   they carry a ``bound``; a step budget (and optional wall-clock timeout) yields ``unknown``.
4. **Shrinking** a failing partition: greedy chunk-then-single removal, keeping a removal only if
   the rest is still non-linearizable *and* every value read still has a producing write.
   The witness carries the longest linearizable prefix found and, for the ops that could come
   next, the model's complaint.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from duro.consistency.history import Event, History, Operation
from duro.consistency.models import Model, ObjectModel, RegisterModel, State, freeze
from duro.consistency.results import (
    _ILLEGAL,
    _OK,
    _UNKNOWN,
    Anomaly,
    CheckResult,
    PartitionResult,
    Verdict,
    Witness,
)
from duro.keys import key_range

__all__ = [
    "DEFAULT_BUDGET",
    "Anomaly",
    "CheckResult",
    "PartitionResult",
    "Witness",
    "check_history",
    "check_ops",
]

DEFAULT_BUDGET: Final = 1_000_000


# ---------------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------------
@dataclass
class _Search:
    verdict: Verdict
    steps: int
    best: list[tuple[int, State]] = field(default_factory=list)
    """With ``trace``: the longest linearized prefix, (op index, state after) in order."""
    best_lin: int = 0
    """Bitset of the ops in the longest linearized prefix."""
    best_state: State = None


def _wgl(ops: Sequence[Operation], model: Model, budget: int, deadline: float | None,
         trace: bool = False) -> _Search:
    """Wing-Gong/Lowe search with a (bitset, state) memo over *ops* of one partition."""
    n = len(ops)
    steps = [model.compile(op) for op in ops]
    ent: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        ent.append((op.call, 0, i))
        if op.ret is not None:
            ent.append((op.ret, 1, i))
    ent.sort()
    m = len(ent)
    tail = m + 1
    nxt = [*list(range(1, m + 2)), tail]
    prv = [0, *range(0, m + 1)]
    op_of = [0] * (m + 2)
    is_call = [False] * (m + 2)
    ret_of = [0] * (m + 2)
    call_ent = [0] * n
    for j, (_, kind, i) in enumerate(ent, 1):
        op_of[j] = i
        if kind == 0:
            is_call[j] = True
            call_ent[i] = j
    for j, (_, kind, i) in enumerate(ent, 1):
        if kind == 1:
            ret_of[call_ent[i]] = j
    n_ret = sum(1 for e in ent if e[1] == 1)
    bits = [1 << i for i in range(n)]

    lin = 0
    state = model.init()
    stack: list[tuple[int, State, int]] = []
    seen: set[tuple[int, State]] = set()
    best: list[tuple[int, State]] = []
    depth = 0
    best_lin, best_state = 0, state
    count = 0
    e = nxt[0]
    while n_ret:
        count += 1
        if count > budget or (deadline is not None and not count & 0xFFFF
                              and time.monotonic() > deadline):
            return _Search(_UNKNOWN, count, best, best_lin, best_state)
        if is_call[e]:
            i = op_of[e]
            nexts = steps[i](state)
            took = False
            if nexts:
                nl = lin | bits[i]
                for a, s2 in enumerate(nexts):
                    k = (nl, s2)
                    if k not in seen:
                        seen.add(k)
                        stack.append((e, state, a))
                        lin, state = nl, s2
                        # lift the call entry and its return entry
                        p, q = prv[e], nxt[e]
                        nxt[p], prv[q] = q, p
                        r = ret_of[e]
                        if r:
                            p, q = prv[r], nxt[r]
                            nxt[p], prv[q] = q, p
                            n_ret -= 1
                        took = True
                        break
            if took:
                if len(stack) > depth:
                    depth, best_lin, best_state = len(stack), lin, state
                    if trace:
                        best = [(op_of[x[0]], stack[j + 1][1] if j + 1 < depth else state)
                                for j, x in enumerate(stack)]
                e = nxt[0]
            else:
                e = nxt[e]
            continue
        # a return entry (or the tail): dead end, backtrack
        if not stack:
            return _Search(_ILLEGAL, count, best, best_lin, best_state)
        ce, ps, a = stack.pop()
        i = op_of[ce]
        lin ^= bits[i]
        state = ps
        r = ret_of[ce]
        if r:
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            n_ret += 1
        nxt[prv[ce]] = ce
        prv[nxt[ce]] = ce
        nexts = steps[i](state)
        e = nxt[ce]
        nl = lin | bits[i]
        for a2 in range(a + 1, len(nexts)):
            k = (nl, nexts[a2])
            if k not in seen:
                seen.add(k)
                stack.append((ce, state, a2))
                lin, state = nl, nexts[a2]
                p, q = prv[ce], nxt[ce]
                nxt[p], prv[q] = q, p
                if r:
                    p, q = prv[r], nxt[r]
                    nxt[p], prv[q] = q, p
                    n_ret -= 1
                e = nxt[0]
                break
    return _Search(_OK, count, best, lin, state)


# ---------------------------------------------------------------------------------------------
# prechecks
# ---------------------------------------------------------------------------------------------
def _writes(op: Operation) -> list[tuple[str, str]]:
    """(key, frozen value) pairs *op* would write."""
    if op.f == "put":
        return [(op.key or "", freeze(op.arg))]
    if op.f == "cas":
        return [(op.key or "", freeze(op.arg[1]))]
    if op.f == "txn":
        return [(m[1], freeze(m[2])) for m in op.arg if m[0] == "w"]
    return []


def _reads(op: Operation) -> list[tuple[str, str]]:
    """(key, frozen value) pairs *op* observed as present (absent/null reads excluded)."""
    if op.outcome != "ok":
        return []
    if op.f == "get":
        return [] if op.result is None else [(op.key or "", freeze(op.result))]
    if op.f == "cas":
        return [] if op.arg[0] is None else [(op.key or "", freeze(op.arg[0]))]
    if op.f == "list":
        return [(k, freeze(v)) for k, v in op.result]
    if op.f == "txn":
        return [(m[1], freeze(m[2])) for m in op.result if m[0] == "r" and m[2] is not None]
    return []


def _is_writer(op: Operation) -> bool:
    return op.outcome in ("ok", "info")


def _prechecks(obj: str, ops: Sequence[Operation], hist: History) -> list[Anomaly]:
    good: dict[tuple[str, str], list[Operation]] = defaultdict(list)
    failed: dict[tuple[str, str], list[Operation]] = defaultdict(list)
    for op in ops:
        for kv in dict.fromkeys(_writes(op)):
            (good if _is_writer(op) else failed)[kv].append(op)
    out: list[Anomaly] = []
    flagged: set[tuple[str, str]] = set()
    for op in ops:
        for kv in _reads(op):
            k, v = kv
            writers = good.get(kv)
            if writers is None:
                if kv in flagged:
                    continue
                flagged.add(kv)
                fw = failed.get(kv, [])
                if fw:
                    msg = (f"{op.label()} (process {op.process}) read {k}={v}, which only failed "
                           f"ops wrote ({fw[0].label()} by process {fw[0].process})")
                    kind = "aborted-read"
                else:
                    msg = f"{op.label()} (process {op.process}) read {k}={v}, which no op wrote"
                    kind = "garbage-read"
                w = sorted([op, *fw[:3]], key=lambda o: o.call)
                out.append(Anomaly(kind, obj, (k,), msg, _plain_witness(w, hist)))
                continue
            first = min(writers, key=lambda o: o.call)
            if op.ret is not None and op.ret < first.call:
                msg = (f"{op.label()} (process {op.process}) read {k}={v} before any write of it "
                       f"began ({first.label()} by process {first.process} was invoked later)")
                out.append(Anomaly("future-read", obj, (k,), msg,
                                   _plain_witness(sorted([op, first], key=lambda o: o.call), hist)))
    return out


def _plain_witness(ops: list[Operation], hist: History) -> Witness:
    return Witness(ops=ops, history=hist.restrict(ops))


# ---------------------------------------------------------------------------------------------
# partitioning
# ---------------------------------------------------------------------------------------------
@dataclass
class _Part:
    object: str
    keys: tuple[str, ...]
    ops: list[Operation]
    whole: bool

    def model(self) -> Model:
        if self.whole:
            return ObjectModel(self.keys)
        return RegisterModel(self.keys[0])


def _op_keys(op: Operation) -> list[str]:
    if op.f == "txn":
        micro = op.result if op.outcome == "ok" else op.arg
        return [m[1] for m in micro]
    if op.f == "list":
        return [k for k, _ in op.result] if op.outcome == "ok" else []
    return [op.key or ""]


def _partition(obj: str, ops: Sequence[Operation]) -> list[_Part]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    for op in ops:
        for k in _op_keys(op):
            parent.setdefault(k, k)
    all_keys = sorted(parent, key=lambda k: k.encode())
    kbytes = [k.encode() for k in all_keys]
    multi: set[str] = set()
    loose: list[_Part] = []
    op_root: list[str | None] = []
    for op in ops:
        keys: list[str] = _op_keys(op)
        if op.f == "list":
            b = op.arg if isinstance(op.arg, dict) else {}
            lo, hi = key_range(start=b.get("start"), start_after=b.get("start_after"),
                               end=b.get("end"), prefix=b.get("prefix"))
            keys = keys + [k for k, kb in zip(all_keys, kbytes, strict=True)
                           if (lo is None or kb >= lo) and (hi is None or kb < hi)]
        if not keys:
            op_root.append(None)
            loose.append(_Part(obj, (), [op], True))
            continue
        for k in keys[1:]:
            union(keys[0], k)
        op_root.append(keys[0])
        if op.f in ("list", "txn"):
            multi.add(keys[0])
    groups: dict[str, list[Operation]] = defaultdict(list)
    for op, root in zip(ops, op_root, strict=True):
        if root is not None:
            groups[find(root)].append(op)
    members: dict[str, list[str]] = defaultdict(list)
    for k in all_keys:
        members[find(k)].append(k)
    multi_roots = {find(k) for k in multi}
    parts = [_Part(obj, tuple(members[r]), g, r in multi_roots or len(members[r]) > 1)
             for r, g in groups.items()]
    return parts + loose


# ---------------------------------------------------------------------------------------------
# shrinking and witnesses
# ---------------------------------------------------------------------------------------------
def _absence_reads(op: Operation) -> list[str]:
    """Keys *op* observed absent."""
    if op.outcome == "fail" or (op.outcome == "info" and op.f != "cas"):
        return []
    if op.f == "get":
        return [op.key or ""] if op.result is None else []
    if op.f == "delete":
        return [op.key or ""] if op.result is False else []
    if op.f == "cas":
        return [op.key or ""] if op.arg[0] is None and op.outcome == "ok" else []
    if op.f == "txn":
        return [m[1] for m in op.result if m[0] == "r" and m[2] is None]
    return []


def _deletes(op: Operation) -> list[str]:
    if op.outcome == "fail":
        return []
    if op.f == "delete":
        return [op.key or ""]
    if op.f == "txn":
        return [m[1] for m in op.arg if m[0] == "d"]
    return []


def _closed(ops: Sequence[Operation]) -> bool:
    """Every value read has a producing write; every absence or existence seen has a cause.

    Absence of k (get → null, delete → false, cas expecting null, txn read null) needs a
    delete of k invoked before the read returned, or no write of k invoked before it (the
    initial state); existence (delete → true) needs a write of k invoked before it returned.
    This keeps removals from manufacturing anomalies the full history does not have.
    """
    written = {kv for op in ops if _is_writer(op) for kv in _writes(op)}
    if not all(kv in written for op in ops for kv in _reads(op)):
        return False
    first_write: dict[str, int] = {}
    first_delete: dict[str, int] = {}
    for op in ops:
        if _is_writer(op):
            for k, _ in _writes(op):
                first_write[k] = min(first_write.get(k, op.call), op.call)
        for k in _deletes(op):
            first_delete[k] = min(first_delete.get(k, op.call), op.call)
    for op in ops:
        end = op.ret if op.ret is not None else op.call
        for k in _absence_reads(op):
            if first_write.get(k, end + 1) < end and first_delete.get(k, end + 1) >= end:
                return False
        if (op.f == "delete" and op.outcome == "ok" and op.result is True
                and first_write.get(op.key or "", end + 1) >= end):
            return False
    return True


def _frontier(ops: Sequence[Operation], model: Model, s: _Search
              ) -> tuple[State, list[tuple[Operation, str, bool]]]:
    """State after the longest prefix, and each op that could come next: (op, why, legal)."""
    state = model.init() if s.best_lin == 0 else s.best_state
    rest = [op for i, op in enumerate(ops) if not s.best_lin >> i & 1]
    req = [op.ret for op in rest if op.ret is not None]
    first_ret = min(req) if req else None
    out: list[tuple[Operation, str, bool]] = []
    for op in rest:
        if first_ret is not None and op.call > first_ret:
            continue
        if not model.compile(op)(state):
            out.append((op, model.why_illegal(state, op), False))
        else:
            out.append((op, "legal here, but no linearization continues after it", True))
    return state, out


def _culprits(part: _Part, s: _Search, budget: int, deadline: float | None
              ) -> list[Operation] | None:
    """Ops refused at the search frontier whose removal makes the partition linearizable.

    First each op refused at the frontier alone; failing that, greedily the first refused op of
    each successive search (up to 8), e.g. for several corrupted reads. None if that fails.
    """
    model = part.model()
    _, front = _frontier(part.ops, model, s)
    cands = [op for op, _, legal in front if not legal] + [op for op, _, legal in front if legal]
    for c in cands[:6]:
        if _wgl([o for o in part.ops if o is not c], model, budget, deadline).verdict == _OK:
            return [c]
    chosen: list[Operation] = []
    rest = list(part.ops)
    for _ in range(8):
        if not cands:
            return None
        chosen.append(cands[0])
        rest = [o for o in rest if o is not cands[0]]
        s2 = _wgl(rest, model, budget, deadline)
        if s2.verdict == _OK:
            return chosen
        if s2.verdict != _ILLEGAL:
            return None
        _, front = _frontier(rest, model, s2)
        cands = ([op for op, _, legal in front if not legal]
                 + [op for op, _, legal in front if legal])
    return None


def _closure(ops: Sequence[Operation], pool: Sequence[Operation]) -> list[Operation]:
    """*ops* plus, from *pool*, a producing write for every value read (to a fixpoint)."""
    have = {id(o) for o in ops}
    out = list(ops)
    producers: dict[tuple[str, str], list[Operation]] = defaultdict(list)
    for o in pool:
        if _is_writer(o):
            for kv in _writes(o):
                producers[kv].append(o)
    todo = list(ops)
    written = {kv for o in ops if _is_writer(o) for kv in _writes(o)}
    while todo:
        o = todo.pop()
        for kv in _reads(o):
            if kv not in written:
                for w in producers.get(kv, [])[:1]:
                    if id(w) not in have:
                        have.add(id(w))
                        out.append(w)
                        todo.append(w)
                        written.update(_writes(w))
    return sorted(out, key=lambda o: o.call)


def _shrink(part: _Part, s: _Search, budget: int, total: int, deadline: float | None
            ) -> list[Operation]:
    """Greedy removal keeping the sub-history illegal, closed under reads, and about its culprits.

    If culprits Cs are found (ops whose removal makes the partition linearizable), a candidate
    must keep at least one of them and become linearizable without them, so the witness shows
    why those ops in particular cannot be placed.
    """
    spent = 0
    culprits = _culprits(part, s, budget, deadline)
    cids = {id(c) for c in culprits or ()}

    def run(ops: list[Operation]) -> Verdict:
        nonlocal spent
        s = _wgl(ops, _Part(part.object, part.keys, ops, part.whole).model(),
                 min(budget, max(total - spent, 1)), deadline)
        spent += s.steps
        return s.verdict

    def still_bad(ops: list[Operation]) -> bool:
        if not ops or not _closed(ops):
            return False
        if culprits is not None and not any(id(o) in cids for o in ops):
            return False
        if run(ops) != _ILLEGAL:
            return False
        return culprits is None or run([o for o in ops if id(o) not in cids]) == _OK

    cur = list(part.ops)
    if culprits is not None:
        # grow a window of ops ending at the first culprit (plus the writes its reads need)
        # until it explains the anomaly: far cheaper than cutting down the whole partition
        culprit = min(culprits, key=lambda o: o.call)
        end = culprit.ret if culprit.ret is not None else culprit.call
        before = [o for o in cur if o.call <= end]
        idx = next(i for i, o in enumerate(before) if o is culprit)
        w = 8
        while w < len(before):
            lo = before[max(idx - w, 0)].call
            cand = _closure([o for o in before if o.ret is None or o.ret >= lo], cur)
            if len(cand) >= len(cur):
                break
            if still_bad(cand):
                cur = cand
                break
            w *= 2
        else:
            if len(before) < len(cur) and still_bad(before):
                cur = before
    chunk = max(len(cur) // 2, 1)
    while spent < total:
        i, removed = 0, False
        while i < len(cur) and spent < total:
            cand = cur[:i] + cur[i + chunk:]
            if still_bad(cand):
                cur, removed = cand, True
            else:
                i += chunk
        if chunk == 1 and not removed:
            break  # a fixpoint: no single op can go
        chunk = max(chunk // 2, 1)
    return cur


def _explain(ops: list[Operation], part: _Part, hist: History, budget: int) -> Witness:
    model = _Part(part.object, part.keys, ops, part.whole).model()
    s = _wgl(ops, model, budget, None, trace=True)
    state, front = _frontier(ops, model, s)
    return Witness(ops=ops, history=hist.restrict(ops),
                   linearized=[(ops[i], model.describe(st)) for i, st in s.best],
                   state=model.describe(state),
                   frontier=[(op, why) for op, why, _ in front])


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def _as_history(history: History | str | os.PathLike[str] | Iterable[Event | Mapping[str, Any]]
                ) -> History:
    if isinstance(history, History):
        return history
    if isinstance(history, str | os.PathLike):
        return History.load(history)
    items = list(history)
    if all(isinstance(x, Event) for x in items):
        return History([x for x in items if isinstance(x, Event)])
    return History.from_dicts([x for x in items if isinstance(x, Mapping)])


def check_history(
    history: History | str | os.PathLike[str] | Iterable[Event | Mapping[str, Any]],
    *,
    budget: int = DEFAULT_BUDGET,
    timeout: float | None = None,
    prechecks: bool = True,
    shrink: bool = True,
    shrink_budget: int = 2_000_000,
) -> CheckResult:
    """Check *history* for per-object linearizability.

    ``budget`` caps the search steps per partition (exhausted → that partition is
    ``unknown``); ``timeout`` caps the wall-clock seconds for the whole check. ``prechecks``
    runs the O(n) read checks first (a partition they condemn is not searched). ``shrink``
    minimises each failing partition's witness within ``shrink_budget`` total steps.
    """
    hist = _as_history(history)
    t0 = time.monotonic()
    deadline = None if timeout is None else t0 + timeout
    by_obj: dict[str, list[Operation]] = defaultdict(list)
    for op in hist.ops():
        by_obj[op.object].append(op)
    partitions: list[PartitionResult] = []
    anomalies: list[Anomaly] = []
    for obj, ops in by_obj.items():
        partitions_obj, anoms = check_ops(obj, ops, hist, budget=budget, deadline=deadline,
                                          prechecks=prechecks, shrink=shrink,
                                          shrink_budget=shrink_budget)
        partitions.extend(partitions_obj)
        anomalies.extend(anoms)
    verdict: Verdict = _OK
    if anomalies:
        verdict = _ILLEGAL
    elif any(p.verdict == _UNKNOWN for p in partitions):
        verdict = _UNKNOWN
    return CheckResult(verdict, partitions, anomalies, hist, time.monotonic() - t0,
                       len(hist.ops()), len(by_obj))


def check_ops(obj: str, ops: Sequence[Operation], hist: History, *, budget: int = DEFAULT_BUDGET,
              deadline: float | None = None, prechecks: bool = True, shrink: bool = True,
              shrink_budget: int = 2_000_000) -> tuple[list[PartitionResult], list[Anomaly]]:
    """Check the ops of one object; returns its partition results and anomalies."""
    pre = _prechecks(obj, ops, hist) if prechecks else []
    condemned: dict[str, Anomaly] = {}
    for a in pre:
        for k in a.keys:
            condemned.setdefault(k, a)
    results: list[PartitionResult] = []
    anomalies = list(pre)
    for part in _partition(obj, [op for op in ops if Model.participates(op)]):
        model = part.model()
        hit = next((condemned[k] for k in part.keys if k in condemned), None)
        if hit is not None:
            results.append(PartitionResult(obj, part.keys, model.name, len(part.ops), _ILLEGAL,
                                           anomaly=hit))
            continue
        t = time.monotonic()
        s = _wgl(part.ops, model, budget, deadline)
        pr = PartitionResult(obj, part.keys, model.name, len(part.ops), s.verdict, s.steps,
                             time.monotonic() - t)
        if s.verdict == _ILLEGAL:
            ops_w = _shrink(part, s, budget, shrink_budget, deadline) if shrink else part.ops
            w = _explain(ops_w, part, hist, budget)
            msg = _headline(w)
            pr.anomaly = Anomaly("not-linearizable", obj, part.keys, msg, w)
            anomalies.append(pr.anomaly)
        results.append(pr)
    return results, anomalies


def _headline(w: Witness) -> str:
    bad = [(op, why) for op, why in w.frontier if not why.startswith("legal")]
    n = len(w.ops)
    if bad:
        _op, why = bad[0]
        return f"no linearization of these {n} ops: {why}"
    return f"no linearization of these {n} ops exists"
