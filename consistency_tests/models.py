"""Sequential specifications the checker linearizes against.

Two models, both pure (a step never mutates a state) with hashable, immutable states:

* :class:`RegisterModel` — one key. State: the canonical JSON text of the value, or ``ABSENT``.
  Used for a key whose ops are all single-key (get/put/delete/cas).
* :class:`ObjectModel` — a fixed group of keys of one object. State: a tuple with one slot per
  key (sorted by UTF-8 byte order). Needed where ``list`` or ``txn`` ops tie keys together.

``compile(op)`` turns an :class:`~duro.consistency.history.Operation` into a step function
``state -> tuple of possible next states`` (empty tuple = the recorded output is impossible in
that state). Semantics (docs/reference/history.md):

* ``get`` legal iff its value equals the state (``null`` = absent; a stored ``null`` reads as
  ``null`` too); ``put`` sets; ``delete`` sets absent and its ok value must equal "existed";
  ``cas([exp, new])`` ok iff the state equals ``exp`` (``null`` = absent), then sets ``new``;
  a cas that failed with value ``false`` is legal iff the state differs from ``exp``.
* ``list`` returns the present pairs in its range, in UTF-8 byte order (reversed if asked),
  at most ``limit``; ``txn`` applies its ``r``/``w``/``d`` micro-ops atomically, in order, each
  ``r`` checking the value read.
* ``info`` outputs are always legal: an unknown write applies its effect; an unknown cas sets
  ``new`` only if its expectation holds. For an ``info`` op with a bound the step also offers
  "never happened" (the state unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from duro.consistency.history import Operation
from duro.keys import key_range

__all__ = [
    "ABSENT",
    "Model",
    "ObjectModel",
    "RegisterModel",
    "State",
    "Step",
    "freeze",
]

ABSENT: Final = None
State = Any  # str | None for a register, tuple[str | None, ...] for an object
Step = Callable[[State], tuple[State, ...]]


def freeze(value: Any) -> str:
    """Canonical JSON text of *value* (hashable; distinguishes ``1``, ``1.0`` and ``true``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _read_matches(state: str | None, value: Any, fv: str | None) -> bool:
    if value is None:
        return state is None or state == "null"
    return state == fv


def _fmt(v: str | None) -> str:
    return "absent" if v is None else v


class Model:
    """Common interface of the models."""

    name = "model"
    keys: tuple[str, ...] = ()

    def init(self) -> State:
        """The initial state (every key absent)."""
        raise NotImplementedError

    def compile(self, op: Operation) -> Step:
        """The step function of *op* (see the module docstring)."""
        raise NotImplementedError

    def why_illegal(self, state: State, op: Operation) -> str:
        """Why *op*'s recorded output is impossible in *state* (for reports)."""
        raise NotImplementedError

    def describe(self, state: State) -> str:
        """The state, readable."""
        raise NotImplementedError

    @staticmethod
    def participates(op: Operation) -> bool:
        """Whether *op* constrains or changes the state (others are dropped before the search).

        ``fail`` ops certainly did not happen (except a cas mismatch, which observed the state);
        ``info`` reads have no effect and no known output.
        """
        if op.outcome == "ok":
            return True
        if op.outcome == "fail":
            return op.cas_mismatch
        if op.f in ("get", "list"):
            return False
        if op.f == "txn":
            return any(isinstance(m, list) and m[0] in ("w", "d") for m in op.arg)
        return True


class RegisterModel(Model):
    """One key: state = frozen value or ``ABSENT``."""

    name = "register"

    def __init__(self, key: str) -> None:
        self.key = key
        self.keys = (key,)

    def init(self) -> State:
        return ABSENT

    def compile(self, op: Operation) -> Step:
        f, ok, bounded = op.f, op.outcome == "ok", op.outcome == "info" and op.ret is not None
        if f == "get":
            if not ok:
                return lambda s: (s,)
            v = op.result
            fv = None if v is None else freeze(v)
            if v is None:
                return lambda s: (s,) if s is None or s == "null" else ()
            return lambda s: (s,) if s == fv else ()
        if f == "put":
            nv = freeze(op.arg)
            if bounded:
                return lambda s: (nv,) if s == nv else (nv, s)
            return lambda s: (nv,)
        if f == "delete":
            if ok:
                existed = bool(op.result)
                return lambda s: (None,) if (s is not None) is existed else ()
            if bounded:
                return lambda s: (None,) if s is None else (None, s)
            return lambda s: (None,)
        if f == "cas":
            exp, new = op.arg
            fe = None if exp is None else freeze(exp)
            fn = freeze(new)
            if ok:
                return lambda s: (fn,) if s == fe else ()
            if op.outcome == "fail":  # compared and differed
                return lambda s: (s,) if s != fe else ()
            if bounded:
                return lambda s: ((fn, s) if fn != s else (s,)) if s == fe else (s,)
            return lambda s: (fn,) if s == fe else (s,)
        raise ValueError(f"{f} is not a single-key op")

    def why_illegal(self, state: State, op: Operation) -> str:
        k, s = self.key, _fmt(state)
        if op.f == "get":
            return f"get({k}) returned {freeze(op.result)} but {k} was {s}"
        if op.f == "delete":
            return f"delete({k}) returned existed={freeze(op.result)} but {k} was {s}"
        if op.f == "cas":
            exp = _fmt(None if op.arg[0] is None else freeze(op.arg[0]))
            if op.outcome == "ok":
                return f"cas({k}) succeeded expecting {exp} but {k} was {s}"
            return f"cas({k}) reported a mismatch against {exp} but {k} was {s}"
        return f"{op.f}({k}) cannot happen in state {k}={s}"  # pragma: no cover

    def describe(self, state: State) -> str:
        return f"{self.key}={_fmt(state)}"


class ObjectModel(Model):
    """A group of keys of one object: state = tuple of frozen values (``None`` = absent)."""

    name = "object"

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(sorted(set(keys), key=lambda k: k.encode()))
        self.index = {k: i for i, k in enumerate(self.keys)}
        self._bytes = [k.encode() for k in self.keys]

    def init(self) -> State:
        return (None,) * len(self.keys)

    def _range(self, bounds: dict[str, Any]) -> list[int]:
        lo, hi = key_range(start=bounds.get("start"), start_after=bounds.get("start_after"),
                           end=bounds.get("end"), prefix=bounds.get("prefix"))
        idx = [i for i, b in enumerate(self._bytes)
               if (lo is None or b >= lo) and (hi is None or b < hi)]
        if bounds.get("reverse"):
            idx.reverse()
        return idx

    def compile(self, op: Operation) -> Step:
        f, ok, bounded = op.f, op.outcome == "ok", op.outcome == "info" and op.ret is not None
        ix = self.index
        if f in ("get", "put", "delete", "cas"):
            i = ix[op.key or ""]
            fast = self._fast_single(op, i)
            if fast is not None:
                return fast
            reg = RegisterModel(op.key or "").compile(op)

            def single(s: State) -> tuple[State, ...]:
                return tuple(s if r == s[i] else (*s[:i], r, *s[i + 1:]) for r in reg(s[i]))

            return single
        if f == "list":
            if not ok:
                return lambda s: (s,)
            bounds = op.arg if isinstance(op.arg, dict) else {}
            order = self._range(bounds)
            limit = bounds.get("limit")
            keys = self.keys
            expected = tuple((k, freeze(v)) for k, v in op.result)
            if limit is not None and len(expected) > limit:
                return lambda s: ()

            def lst(s: State) -> tuple[State, ...]:
                out = tuple((keys[i], s[i]) for i in order if s[i] is not None)
                if limit is not None:
                    out = out[:limit]
                return (s,) if out == expected else ()

            return lst
        if f == "txn":
            micro = op.result if ok else op.arg
            prog = [(m[0], ix[m[1]], m[2], None if m[2] is None else freeze(m[2])) for m in micro]
            check = ok

            def txn(s: State) -> tuple[State, ...]:
                cur = list(s)
                for kind, i, v, fv in prog:
                    if kind == "r":
                        if check and not _read_matches(cur[i], v, fv):
                            return ()
                    elif kind == "w":
                        cur[i] = fv
                    else:
                        cur[i] = None
                t = tuple(cur)
                if bounded and t != s:
                    return (t, s)
                return (t,)

            return txn
        raise ValueError(f"unknown op {f}")  # pragma: no cover

    @staticmethod
    def _fast_single(op: Operation, i: int) -> Step | None:
        """Specialised steps for the common ok/unbounded single-key ops (the hot path)."""
        f, outcome = op.f, op.outcome
        j = i + 1
        if f == "get" and outcome == "ok" and op.result is not None:
            fv = freeze(op.result)
            return lambda s: (s,) if s[i] == fv else ()
        if f == "put" and (outcome == "ok" or op.ret is None):
            nv = freeze(op.arg)
            return lambda s: ((*s[:i], nv, *s[j:]),)
        if f == "delete" and outcome == "ok":
            existed = bool(op.result)
            return lambda s: ((*s[:i], None, *s[j:]),) if (s[i] is not None) is existed else ()
        if f == "cas" and outcome == "ok":
            exp, new = op.arg
            fe = None if exp is None else freeze(exp)
            fn = freeze(new)
            return lambda s: ((*s[:i], fn, *s[j:]),) if s[i] == fe else ()
        return None

    def why_illegal(self, state: State, op: Operation) -> str:
        if op.f in ("get", "put", "delete", "cas"):
            i = self.index[op.key or ""]
            return RegisterModel(op.key or "").why_illegal(state[i], op)
        if op.f == "list":
            bounds = op.arg if isinstance(op.arg, dict) else {}
            order = self._range(bounds)
            out = [[self.keys[i], json.loads(state[i])] for i in order if state[i] is not None]
            if bounds.get("limit") is not None:
                out = out[: bounds["limit"]]
            return f"list returned {freeze(op.result)} but the range held {freeze(out)}"
        if op.f == "txn":
            cur = list(state)
            for m in op.result if isinstance(op.result, list) else []:
                i = self.index[m[1]]
                v = m[2]
                if m[0] == "r":
                    if not _read_matches(cur[i], v, None if v is None else freeze(v)):
                        return f"txn read {m[1]}={freeze(v)} but {m[1]} was {_fmt(cur[i])}"
                elif m[0] == "w":
                    cur[i] = freeze(v)
                else:
                    cur[i] = None
        return f"{op.f} cannot happen in state {self.describe(state)}"  # pragma: no cover

    def describe(self, state: State) -> str:
        pairs = zip(self.keys, state, strict=True)
        return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in pairs) + "}"
