"""Workloads: programs of concurrent clients over several objects and keys, and their clients.

A :class:`Program` gives each client one object and a list of op *specs*. Specs are abstract:
the value a write stores is made unique when the client runs it (``"v<client>.<op>"``), and a
``cas`` expects the last value that client saw for the key (or "absent"), so CAS often succeeds.
Keys live on disjoint prefixes (``a/0``, ``a/1``, ``b/0`` …); a ``list`` covers a whole prefix or
a range inside one and a ``txn`` touches one prefix, so the checker can partition each object by
prefix.

Programs come from one generator written against a tiny :class:`Draw` interface, so the same
code serves Hypothesis (:func:`programs`, which shrinks) and seeded runs of ``duro check``
(:func:`random_program`).

:func:`run_client` runs one client's ops through any call function, recording each op
(invoke, then ``ok``, ``fail`` or ``info``) in a :class:`~duro.consistency.history.Recorder`.
An op whose outcome is unknown (``ObjectReset``, ``Fenced``, ``CallTimeout``,
``BackendUnavailable``, a lost connection, …) is recorded ``info`` and the client carries on
under a new process number, as Jepsen does. A call refused before it started (the App was
closing, ``Overloaded``) is ``fail``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from hypothesis import strategies as st

from duro.consistency.history import Function, OpHandle, Recorder
from duro.errors import DuroError, ObjectError, ObjectReset, Overloaded

__all__ = [
    "MAX_CLIENTS_PER_OBJECT",
    "RESET_ERRORS",
    "ClientPlan",
    "Draw",
    "OpSpec",
    "Program",
    "classify_error",
    "make_program",
    "programs",
    "random_program",
    "run_client",
]

MAX_CLIENTS_PER_OBJECT: Final = 8
PREFIXES: Final = ("a/", "b/")
KEYS_PER_PREFIX: Final = 3
# (function, weight): reads and writes about even; list and txn tie keys together.
MIX: Final = (("get", 24), ("put", 24), ("delete", 7), ("cas", 15), ("list", 12), ("txn", 18))
RESET_ERRORS: Final = frozenset({"ObjectReset", "Fenced"})
"""Errors proving the op's turn ran on an owner that was then reset (its writes, if any, were
staged under that owner's epoch): such an ``info`` op is bounded by the next newer epoch."""


class Draw(Protocol):
    """Where a generator gets its choices: Hypothesis data or a seeded ``random.Random``."""

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``; shrinks towards *lo*."""
        ...


class _RandomDraw:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class _HypothesisDraw:
    def __init__(self, draw: Callable[[st.SearchStrategy[int]], int]) -> None:
        self.draw = draw

    def int(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))


@dataclass(frozen=True)
class OpSpec:
    """One op of a client, before values are made unique.

    ``f`` is the history function; ``key`` its key (None for list/txn); ``arg``: for ``list``
    the bounds dict, for ``txn`` the micro-op template ``[[kind, key], ...]``, for ``cas``
    ``"absent"`` or ``"seen"`` (what to expect), else None.
    """

    f: Function
    key: str | None = None
    arg: Any = None


@dataclass
class ClientPlan:
    """One client: its global number, its object, its home process/App, and its ops."""

    client: int
    object: str
    home: int
    ops: list[OpSpec] = field(default_factory=list)


@dataclass
class Program:
    """What every client will do; objects are names (IDs come from the namespace)."""

    objects: list[str]
    clients: list[ClientPlan]
    processes: int = 1

    @property
    def ops(self) -> int:
        """Total number of client ops (final reads not counted)."""
        return sum(len(c.ops) for c in self.clients)

    def keys(self) -> list[str]:
        """Every key a client may touch."""
        return [f"{p}{i}" for p in PREFIXES for i in range(KEYS_PER_PREFIX)]

    def describe(self) -> str:
        """One line: objects, clients, ops."""
        return (f"{len(self.objects)} objects, {len(self.clients)} clients over "
                f"{self.processes} process(es), {self.ops} ops")


def _key(d: Draw, prefix: str | None = None) -> str:
    p = prefix if prefix is not None else PREFIXES[d.int(0, len(PREFIXES) - 1)]
    return f"{p}{d.int(0, KEYS_PER_PREFIX - 1)}"


def _spec(d: Draw) -> OpSpec:
    total = sum(w for _, w in MIX)
    r = d.int(0, total - 1)
    f: Function = "get"
    for name, w in MIX:
        if r < w:
            f = name  # type: ignore[assignment]
            break
        r -= w
    if f in ("get", "put", "delete"):
        return OpSpec(f, _key(d))
    if f == "cas":
        return OpSpec("cas", _key(d), "absent" if d.int(0, 3) == 0 else "seen")
    prefix = PREFIXES[d.int(0, len(PREFIXES) - 1)]
    if f == "list":
        bounds: dict[str, Any] = {"prefix": prefix}
        shape = d.int(0, 3)
        if shape == 1:
            bounds = {"start": f"{prefix}1", "end": f"{prefix}{KEYS_PER_PREFIX}"}
        elif shape == 2:
            bounds = {"prefix": prefix, "limit": d.int(1, KEYS_PER_PREFIX)}
        elif shape == 3:
            bounds = {"prefix": prefix, "reverse": True, "limit": d.int(1, KEYS_PER_PREFIX)}
        return OpSpec("list", None, bounds)
    micro = []
    for _ in range(d.int(1, 3)):
        kind = ("r", "w", "w", "d")[d.int(0, 3)]
        micro.append([kind, _key(d, prefix)])
    if not any(m[0] == "w" for m in micro):  # every txn writes something
        micro.append(["w", _key(d, prefix)])
    return OpSpec("txn", None, micro)


def make_program(d: Draw, *, objects: int, clients: int, ops: int, processes: int = 1,
                 prefix: str = "") -> Program:
    """A program: *objects* objects, *clients* clients per object (≤ 8), about *ops* ops.

    Clients are spread round-robin over *processes* homes (process index or App index), so
    with more than one home an object gets calls from processes that do not own it. Objects
    are named ``<prefix>obj<i>``.
    """
    if not 1 <= clients <= MAX_CLIENTS_PER_OBJECT:
        raise ValueError(f"clients per object must be 1..{MAX_CLIENTS_PER_OBJECT}, got {clients}")
    if objects < 1 or ops < 1 or processes < 1:
        raise ValueError("objects, ops and processes must be positive")
    names = [f"{prefix}obj{i}" for i in range(objects)]
    per_client = max(1, ops // (objects * clients))
    plans: list[ClientPlan] = []
    for o, name in enumerate(names):
        for c in range(clients):
            n = len(plans)
            plan = ClientPlan(n, name, (o + c) % processes)
            plan.ops = [_spec(d) for _ in range(per_client)]
            plans.append(plan)
    return Program(names, plans, processes)


def random_program(seed: int, *, objects: int, clients: int, ops: int,
                   processes: int = 1, prefix: str = "") -> Program:
    """:func:`make_program` driven by ``random.Random(seed)`` (for ``duro check --seed``)."""
    return make_program(_RandomDraw(random.Random(seed)), objects=objects, clients=clients,
                        ops=ops, processes=processes, prefix=prefix)


@st.composite
def _programs(draw: Any, objects: tuple[int, int], clients: tuple[int, int],
              ops: tuple[int, int], processes: int) -> Program:
    d = _HypothesisDraw(draw)
    n_obj = d.int(*objects)
    n_cli = d.int(*clients)
    n_ops = d.int(*ops)
    return make_program(d, objects=n_obj, clients=n_cli, ops=n_ops, processes=processes)


def programs(*, objects: tuple[int, int] = (1, 3), clients: tuple[int, int] = (2, 6),
             ops: tuple[int, int] = (20, 200), processes: int = 1) -> st.SearchStrategy[Program]:
    """Hypothesis strategy of :class:`Program` (shrinks to fewer objects, clients and ops)."""
    if clients[1] > MAX_CLIENTS_PER_OBJECT:
        raise ValueError(f"at most {MAX_CLIENTS_PER_OBJECT} clients per object")
    return _programs(objects, clients, ops, processes)


# ---------------------------------------------------------------------------------------------
# running a client
# ---------------------------------------------------------------------------------------------

def classify_error(exc: BaseException) -> str:
    """``fail`` (certainly not applied), ``info`` (unknown) or ``bug`` (the harness erred).

    A call refused before it started (``AppClosing``, ``Overloaded``) did not happen; a reset,
    timeout, unavailable backend or lost connection may or may not have.
    """
    from duro.app import AppClosing

    if isinstance(exc, AppClosing | Overloaded):
        return "fail"
    if isinstance(exc, ObjectError) and exc.type_name not in ("BackendUnavailable",):
        return "bug"
    if isinstance(exc, DuroError | ObjectReset | OSError | TimeoutError | ConnectionError
                  | asyncio.CancelledError):  # a reply the runtime dropped
        return "info"
    return "bug"


Call = Callable[[str, str, tuple[Any, ...]], Awaitable[Any]]
"""``call(object_name, method, args)``: invoke a :class:`~duro.consistency.target.KV` method."""


def _materialize(spec: OpSpec, client: int, i: int, seen: dict[str, Any]
                 ) -> tuple[Any, tuple[Any, ...]]:
    """(invoke value, method args) with unique values filled in."""
    value = f"v{client}.{i}"
    if spec.f == "get":
        return None, (spec.key,)
    if spec.f == "put":
        return value, (spec.key, value)
    if spec.f == "delete":
        return None, (spec.key,)
    if spec.f == "cas":
        assert spec.key is not None
        expected = None if spec.arg == "absent" else seen.get(spec.key)
        return [expected, value], (spec.key, expected, value)
    if spec.f == "list":
        bounds = dict(spec.arg)
        return bounds, (bounds,)
    micro: list[list[Any]] = []
    for j, (kind, key) in enumerate(spec.arg):
        micro.append([kind, key, f"{value}.{j}" if kind == "w" else None])
    return micro, (micro,)


def _learn(spec: OpSpec, args: tuple[Any, ...], result: Any, seen: dict[str, Any]) -> None:
    if spec.f == "get":
        seen[args[0]] = result
    elif spec.f == "put":
        seen[args[0]] = args[1]
    elif spec.f == "delete":
        seen[args[0]] = None
    elif spec.f == "cas" and result:
        seen[args[0]] = args[2]
    elif spec.f == "txn":
        for _kind, key, v in result:
            seen[key] = v


async def run_client(plan: ClientPlan, call: Call, rec: Recorder, object_id: str, *,
                     new_process: Callable[[], int],
                     gate: Callable[[], Awaitable[None]] | None = None,
                     on_open: Callable[[int, OpHandle | None], None] | None = None,
                     start: int = 0) -> int:
    """Run *plan*'s ops one after the other, recording each; returns the ops completed ``ok``.

    *gate*, if given, is awaited before each op (the deterministic scheduler's "your turn").
    *on_open(index, handle)* is told about each op in flight (handle ``None`` once it
    completed), so a fault injector can complete the ops of a killed client and restart it at
    the next index (*start*).
    """
    process = new_process()
    seen: dict[str, Any] = {}
    oks = 0
    for i, spec in enumerate(plan.ops):
        if i < start:
            continue
        if gate is not None:
            await gate()
        inv, args = _materialize(spec, plan.client, i, seen)
        h = rec.invoke(process, spec.f, object_id, spec.key, inv)
        if on_open is not None:
            on_open(i, h)
        try:
            result = await call(plan.object, spec.f, args)
        except (Exception, asyncio.CancelledError) as exc:  # every outcome is recorded
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and (task is None or task.cancelling()):
                raise  # this client is being stopped (e.g. its process was killed)
            kind = classify_error(exc)
            if kind == "bug":
                h.info(error=type(exc).__name__)
                raise
            if kind == "fail":
                h.fail(error=type(exc).__name__)
            else:
                h.info(error=type(exc).__name__)
                process = new_process()  # a crashed process: carry on as a new one
            if on_open is not None:
                on_open(i + 1, None)
            continue
        if on_open is not None:
            on_open(i + 1, None)
        if spec.f == "cas" and result is False:
            h.fail(False)
        elif spec.f == "put":
            h.ok(args[1])
        else:
            h.ok(result)
        oks += 1
        _learn(spec, args, result, seen)
    return oks
