"""Workloads: programs of concurrent clients over several objects and keys, and their clients.

A :class:`Program` gives each client one object and a list of op *specs*. Specs are abstract:
the value a write stores is made unique when the client runs it (``"v<client>.<op>"``), and a
``cas`` expects the last value that client saw for the key (or "absent"), so CAS often succeeds.
Keys live on disjoint prefixes (``a/0``, ``a/1``, ``b/0`` …); a ``list`` covers a whole prefix or
a range inside one and a ``txn`` touches one prefix, so the checker can partition each object by
prefix.

Rich programs (``rich=True``, what ``duro check`` runs) add get_many (a read-only ``txn``),
the object's alarm (``get``/``put``/``delete`` of :data:`ALARM_KEY`), ``delete_all`` (a
``txn`` deleting every key in use), ranges of eight shapes (``start``, ``start_after``,
``end``, ``prefix``, ``reverse``, ``limit``), values from a few bytes to 6 KB, and optionally
a large key set (:data:`BIG_KEYS` keys under ``c/``, filled by one batch) and objects with
IDs that share long prefixes.

Programs come from one generator written against a tiny :class:`Draw` interface, so the same
code serves Hypothesis (:func:`programs`, which shrinks) and seeded runs of ``duro check``
(:func:`random_program`).

:func:`run_client` runs one client's ops through any call function, recording each op
(invoke, then ``ok``, ``fail`` or ``info``) in a :class:`~duro.consistency.history.Recorder`.
An op whose outcome is unknown (``ObjectReset``, ``Fenced``, ``CallTimeout``,
``BackendUnavailable``, a lost connection, …) is recorded ``info`` and the client carries on
under a new process number, as Jepsen does. A call refused before it started (the App was
closing, ``Overloaded``, an owner that lost its lease) is ``fail``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from hypothesis import strategies as st

from duro.consistency.history import Function, OpHandle, Recorder
from duro.consistency.target import object_id
from duro.errors import BackendUnavailable, DuroError, ObjectError, ObjectReset, Overloaded

__all__ = [
    "ALARM_KEY",
    "MAX_CLIENTS_PER_OBJECT",
    "RESET_ERRORS",
    "ClientPlan",
    "Draw",
    "OpSpec",
    "Program",
    "big_keys",
    "classify_error",
    "make_program",
    "programs",
    "random_program",
    "read_back",
    "run_client",
]

MAX_CLIENTS_PER_OBJECT: Final = 8
PREFIXES: Final = ("a/", "b/")
KEYS_PER_PREFIX: Final = 3
# (function, weight): reads and writes about even; list and txn tie keys together.
MIX: Final = (("get", 24), ("put", 24), ("delete", 7), ("cas", 15), ("list", 12), ("txn", 18))
# The rich mix adds get_many (a read-only txn), the alarm (ops on ALARM_KEY) and delete_all.
RICH_MIX: Final = (("get", 18), ("put", 18), ("delete", 6), ("cas", 11), ("list", 16),
                   ("txn", 12), ("get_many", 7), ("alarm", 6), ("delete_all", 1))
ALARM_KEY: Final = "!alarm"
"""The object's alarm, recorded as a key: ``get``/``put``/``delete`` of it read, set and delete
the alarm (a float of epoch seconds far in the future, so it never fires). No ``list`` range
covers it: every range lies inside one key prefix."""
ALARM_BASE: Final = 4_000_000_000.0
BIG_PREFIX: Final = "c/"
BIG_KEYS: Final = 300
"""Keys of the large key set: more than the activation scan loads (256 by default), so reads
and ranges of it must reach the backend."""
ODD_BIG_KEYS: Final = ("c/1", "c/15", "c/\u00e9t\u00e9", "c/z\u4e2d")
"""Keys that sort between the numbered ones, or after them only in UTF-8 byte order."""
PADS: Final = (0, 0, 0, 40, 150, 1_000, 6_000)
"""Extra bytes some written values carry (a value's size must not change what is read)."""
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
    pad: int = 0
    """Extra bytes of the value a write stores."""


@dataclass
class ClientPlan:
    """One client: its global number, its object, its home process/App, and its ops."""

    client: int
    object: str
    home: int
    ops: list[OpSpec] = field(default_factory=list)


def _hot_keys() -> list[str]:
    return [f"{p}{i}" for p in PREFIXES for i in range(KEYS_PER_PREFIX)]


def big_keys(n: int = BIG_KEYS) -> list[str]:
    """The large key set: *n* numbered keys under :data:`BIG_PREFIX` and a few odd ones."""
    return [f"{BIG_PREFIX}{i:03d}" for i in range(n)] + list(ODD_BIG_KEYS)


@dataclass
class Program:
    """What every client will do; objects are names (IDs come from the namespace), or raw IDs
    written ``id:<64 hex>`` (see :func:`duro.consistency.target.object_id`)."""

    objects: list[str]
    clients: list[ClientPlan]
    processes: int = 1
    all_keys: list[str] = field(default_factory=_hot_keys)
    """Every key a client may touch (:data:`ALARM_KEY` included when alarms are used)."""

    @property
    def ops(self) -> int:
        """Total number of client ops (final reads not counted)."""
        return sum(len(c.ops) for c in self.clients)

    def keys(self) -> list[str]:
        """Every key a client may touch."""
        return list(self.all_keys)

    def hot_keys(self) -> list[str]:
        """The small, contended keys (``a/0`` …)."""
        return _hot_keys()

    def final_specs(self) -> list[OpSpec]:
        """The reads that check what is stored after the run: a ``get`` of each key outside
        the large set (the alarm included) and a ``list`` of each key prefix."""
        specs = [OpSpec("get", k) for k in self.all_keys if not k.startswith(BIG_PREFIX)]
        prefixes = sorted({k.split("/")[0] + "/" for k in self.all_keys if "/" in k})
        return specs + [OpSpec("list", None, {"prefix": p}) for p in prefixes]

    def describe(self) -> str:
        """One line: objects, clients, ops."""
        return (f"{len(self.objects)} objects, {len(self.clients)} clients over "
                f"{self.processes} process(es), {self.ops} ops")


def _key(d: Draw, prefix: str | None = None) -> str:
    p = prefix if prefix is not None else PREFIXES[d.int(0, len(PREFIXES) - 1)]
    return f"{p}{d.int(0, KEYS_PER_PREFIX - 1)}"


class _Space:
    """The keys of a rich program: the hot prefixes, and maybe the large set."""

    def __init__(self, big: int) -> None:
        self.big = sorted(big_keys(big), key=str.encode) if big else []
        self.prefixes: list[str] = [*PREFIXES, *([BIG_PREFIX] if big else [])]

    def keys_of(self, prefix: str) -> list[str]:
        if prefix == BIG_PREFIX:
            return self.big
        return [f"{prefix}{i}" for i in range(KEYS_PER_PREFIX)]

    def prefix(self, d: Draw) -> str:
        # the large set gets about a third of the ops
        i = d.int(0, 5)
        return self.prefixes[-1] if self.big and i >= 4 else PREFIXES[i % len(PREFIXES)]

    def key(self, d: Draw, prefix: str | None = None) -> str:
        ks = self.keys_of(prefix if prefix is not None else self.prefix(d))
        return ks[d.int(0, len(ks) - 1)]

    def all(self) -> list[str]:
        return [ALARM_KEY, *_hot_keys(), *self.big]


def _bounds(d: Draw, prefix: str, ks: list[str]) -> dict[str, Any]:
    """A ``list`` range inside *prefix*, of one of eight shapes; bounds fall on keys."""
    n = len(ks)
    i = d.int(0, n - 1)
    j = d.int(0, n - 1)
    lo_k, hi_k = ks[min(i, j)], ks[max(i, j)]
    limit = d.int(1, max(1, min(n, 12)))
    shape = d.int(0, 7)
    if shape == 0:
        return {"prefix": prefix}
    if shape == 1:
        return {"prefix": prefix, "limit": limit}
    if shape == 2:
        return {"prefix": prefix, "reverse": True, "limit": limit}
    if shape == 3:
        return {"start": lo_k, "end": hi_k}
    if shape == 4:
        return {"start_after": lo_k, "end": hi_k}
    if shape == 5:
        return {"start": lo_k, "end": hi_k, "reverse": True, "limit": limit}
    if shape == 6:
        return {"prefix": prefix, "start_after": lo_k}
    return {"prefix": prefix, "end": hi_k, "reverse": True}


def _rich_spec(d: Draw, space: _Space, delete_all: bool) -> OpSpec:
    total = sum(w for _, w in RICH_MIX)
    r = d.int(0, total - 1)
    f = "get"
    for name, w in RICH_MIX:
        if r < w:
            f = name
            break
        r -= w
    pad = PADS[d.int(0, len(PADS) - 1)]
    if f == "alarm":
        alarm_f: tuple[Function, ...] = ("get", "put", "put", "delete")
        return OpSpec(alarm_f[d.int(0, 3)], ALARM_KEY)
    if f == "delete_all" and not delete_all:
        f = "get_many"
    if f == "delete_all":
        return OpSpec("txn", None, {"delete_all": space.all()})
    if f in ("get", "put", "delete"):
        return OpSpec(f, space.key(d), pad=pad if f == "put" else 0)  # type: ignore[arg-type]
    if f == "cas":
        return OpSpec("cas", space.key(d), "absent" if d.int(0, 3) == 0 else "seen", pad=pad)
    prefix = space.prefix(d)
    ks = space.keys_of(prefix)
    if f == "list":
        return OpSpec("list", None, _bounds(d, prefix, ks))
    if f == "get_many":
        picked = sorted({ks[d.int(0, len(ks) - 1)] for _ in range(d.int(2, 5))})
        return OpSpec("txn", None, [["r", k] for k in picked])
    micro = []
    for _ in range(d.int(1, 4)):
        kind = ("r", "w", "w", "d")[d.int(0, 3)]
        micro.append([kind, space.key(d, prefix)])
    if not any(m[0] == "w" for m in micro):  # every txn writes something
        micro.append(["w", space.key(d, prefix)])
    return OpSpec("txn", None, micro, pad=pad)


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
                 prefix: str = "", rich: bool = False, big: int = 0,
                 shared_ids: int = 0) -> Program:
    """A program: *objects* objects, *clients* clients per object (≤ 8), about *ops* ops.

    Clients are spread round-robin over *processes* homes (process index or App index), so
    with more than one home an object gets calls from processes that do not own it. Objects
    are named ``<prefix>obj<i>``; *shared_ids* more objects have raw IDs that share all but
    their last body bytes (``id:<hex>``), so storage mixed up between similar IDs shows.

    *rich* adds get_many, alarm ops, ``delete_all`` (when there is no large set), ranges of
    every shape and values of many sizes. *big* > 0 adds a large key set of that many keys,
    written by each object's first op (one batch) and then read, written and ranged over.
    """
    if not 1 <= clients <= MAX_CLIENTS_PER_OBJECT:
        raise ValueError(f"clients per object must be 1..{MAX_CLIENTS_PER_OBJECT}, got {clients}")
    if objects < 1 or ops < 1 or processes < 1:
        raise ValueError("objects, ops and processes must be positive")
    from duro.consistency.target import shared_prefix_ids

    names = [f"{prefix}obj{i}" for i in range(objects)]
    names += shared_prefix_ids(f"{prefix}shared", shared_ids)
    per_client = max(1, ops // (len(names) * clients))
    space = _Space(big if rich else 0)
    plans: list[ClientPlan] = []
    for o, name in enumerate(names):
        for c in range(clients):
            n = len(plans)
            plan = ClientPlan(n, name, (o + c) % processes)
            if rich:
                plan.ops = [_rich_spec(d, space, delete_all=not space.big)
                            for _ in range(per_client)]
                if space.big and c == 0:  # fill the large set in one batch
                    fill = [["w", k] for k in space.big]
                    plan.ops.insert(0, OpSpec("txn", None, fill))
            else:
                plan.ops = [_spec(d) for _ in range(per_client)]
            plans.append(plan)
    if rich:
        return Program(names, plans, processes, space.all())
    return Program(names, plans, processes)


def random_program(seed: int, *, objects: int, clients: int, ops: int,
                   processes: int = 1, prefix: str = "", rich: bool = False, big: int = 0,
                   shared_ids: int = 0) -> Program:
    """:func:`make_program` driven by ``random.Random(seed)`` (for ``duro check --seed``)."""
    return make_program(_RandomDraw(random.Random(seed)), objects=objects, clients=clients,
                        ops=ops, processes=processes, prefix=prefix, rich=rich, big=big,
                        shared_ids=shared_ids)


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

    A call refused before it started (``AppClosing``, ``Overloaded``, an owner's refusal
    after it lost its lease: :data:`duro.instance.NOT_RUN`) did not happen; a reset, timeout,
    unavailable backend or lost connection may or may not have. (The target's methods make no
    calls of their own, so a refusal they return is their own call's.)
    """
    from duro.app import AppClosing
    from duro.instance import NOT_RUN

    if isinstance(exc, AppClosing | Overloaded):
        return "fail"
    if isinstance(exc, BackendUnavailable) and NOT_RUN in exc.message:
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
                 ) -> tuple[Any, str, tuple[Any, ...]]:
    """(invoke value, KV method, method args) with unique values filled in."""
    value = f"v{client}.{i}" + "." * spec.pad
    if spec.key == ALARM_KEY:
        when = ALARM_BASE + client * 10_000 + i
        if spec.f == "get":
            return None, "alarm_get", ()
        if spec.f == "put":
            return when, "alarm_set", (when,)
        return None, "alarm_delete", ()
    if spec.f == "get":
        return None, "get", (spec.key,)
    if spec.f == "put":
        return value, "put", (spec.key, value)
    if spec.f == "delete":
        return None, "delete", (spec.key,)
    if spec.f == "cas":
        assert spec.key is not None
        expected = None if spec.arg == "absent" else seen.get(spec.key)
        return [expected, value], "cas", (spec.key, expected, value)
    if spec.f == "list":
        bounds = dict(spec.arg)
        return bounds, "list", (bounds,)
    if isinstance(spec.arg, dict):  # delete_all: every key the program may touch
        keys = list(spec.arg["delete_all"])
        return [["d", k, None] for k in keys], "delete_all", (keys,)
    micro: list[list[Any]] = []
    for j, (kind, key) in enumerate(spec.arg):
        micro.append([kind, key, f"{value}.{j}" if kind == "w" else None])
    return micro, "txn", (micro,)


def _learn(spec: OpSpec, args: tuple[Any, ...], result: Any, seen: dict[str, Any]) -> None:
    if spec.key == ALARM_KEY:
        if spec.f == "get":
            seen[ALARM_KEY] = result
        elif spec.f == "put":
            seen[ALARM_KEY] = args[0]
        else:
            seen[ALARM_KEY] = None
    elif spec.f == "get":
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
        inv, method, args = _materialize(spec, plan.client, i, seen)
        h = rec.invoke(process, spec.f, object_id, spec.key, inv)
        if on_open is not None:
            on_open(i, h)
        try:
            result = await call(plan.object, method, args)
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
            h.ok(inv)
        else:
            h.ok(result)
        oks += 1
        _learn(spec, args, result, seen)
    return oks


async def read_back(program: Program, call: Call, rec: Recorder) -> None:
    """Record the final reads (:meth:`Program.final_specs`) of every object through *call*."""
    for obj in program.objects:
        plan = ClientPlan(-1, obj, 0, program.final_specs())
        await run_client(plan, call, rec, object_id(obj).hex, new_process=rec.new_process)
