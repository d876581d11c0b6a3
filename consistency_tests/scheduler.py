"""Deterministic mode: the interleaving of every client step and backend call is an input.

Several real :class:`duro.App` instances (the real runtime, unchanged) share one real backend
in one asyncio loop, with one :class:`~duro.clock.ManualClock`. Each App's blocking backend
calls go to a :class:`SimExecutor` instead of threads: a call is queued, not run. The
:class:`Scheduler` lets the loop run until nothing more can happen without outside help, then
asks a :class:`Chooser` what happens next — a client starts its next op, one queued backend
call runs (to completion, in the loop's thread), the clock ticks, or a fault strikes — and
repeats. So the choices fully determine the run: the same choices (a ``random.Random`` seed,
or Hypothesis' data, which then shrinks failing runs) give a byte-identical history, whose
``time`` is the scheduler's step.

Faults in this mode, all in-process:

* ``pause`` (zombie): an App's backend calls and clients are held while the clock jumps past
  its lease; another App takes the object over; then the App resumes with its stale state.
* ``kill``: an App dies: its queued backend calls never run, its clients' ops in flight are
  recorded ``info`` bounded by the kill step, and a fresh App restarts them.
* ``errors``: :class:`~duro.consistency.faults.FaultyBackend` with a seeded random generator.

Reaching the backend: *limits* gives every App a small cache and activation scan, *evict*
evicts an idle object between ops now and then (the next op re-activates it from storage),
and *reopen* closes the backend after the run and opens it again for the final reads, so
what was acknowledged must be in storage, not in a backend object's memory.

The Apps do not listen (``listen=None``): a client whose App does not own the object waits,
on the manual clock, until the owner evicts the idle object or its lease ends, then takes over.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from hypothesis import strategies as st

from duro.app import App
from duro.backends.base import Backend
from duro.clock import ManualClock
from duro.consistency.faults import AcquireLog, FaultyBackend, bound_infos
from duro.consistency.history import History, OpHandle, Recorder
from duro.consistency.target import KV, object_id
from duro.consistency.workloads import ClientPlan, Program, read_back, run_client
from duro.errors import DuroError
from duro.namespace import Namespace
from duro.storage import StorageLimits

__all__ = [
    "Chooser",
    "DataChooser",
    "RandomChooser",
    "RunResult",
    "Scheduler",
    "SchedulerStuck",
    "SimApp",
    "SimExecutor",
    "run_deterministic",
    "settle",
]

T = TypeVar("T")
LEASE_TTL: Final = 4.0
DRIFT: Final = 0.5
IDLE: Final = 8.0  # longer than a pause's clock jump: a zombie keeps its cache
TICK: Final = 0.25


class SchedulerStuck(DuroError):
    """The run did not finish within its step budget (a liveness bug, or a too-small budget)."""


async def settle() -> None:
    """Run the loop until every task waits on something only the scheduler can give."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    for i in range(100_000):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return
        if ready is None and i > 64:
            return


class Chooser(Protocol):
    """Picks one of *n* options (0 is the "simplest": what shrinking moves towards)."""

    def choose(self, n: int) -> int:
        """An integer in ``[0, n)``."""
        ...


class RandomChooser:
    """Choices from ``random.Random(seed)``: ``duro check --seed N`` replays exactly."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choose(self, n: int) -> int:
        return self.rng.randrange(n) if n > 1 else 0


class DataChooser:
    """Choices drawn from Hypothesis (``st.data()``), so failing schedules shrink."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choose(self, n: int) -> int:
        return self.data.draw(st.integers(0, n - 1)) if n > 1 else 0


@dataclass
class _Item:
    fut: Future[Any]
    fn: Callable[[], Any]


class SimExecutor(Executor):
    """An executor that queues calls until the scheduler runs them, one at a time."""

    def __init__(self) -> None:
        self.pending: list[_Item] = []
        self.dead = False
        self.held = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        fut: Future[T] = Future()
        if not self.dead:
            self.pending.append(_Item(fut, functools.partial(fn, *args, **kwargs)))
        return fut  # a dead process's calls never run and never answer

    def run(self, item: _Item) -> None:
        """Run *item* now, in this thread, and settle its future."""
        self.pending.remove(item)
        if not item.fut.set_running_or_notify_cancel():
            return
        try:
            result = item.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting future
            item.fut.set_exception(exc)
        else:
            item.fut.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class SimApp(App):
    """A real :class:`~duro.App` whose backend calls run when the scheduler says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim = SimExecutor()

    @property
    def executor(self) -> Any:
        """The simulated executor (backend calls are queued, not run in threads)."""
        return self.sim

    @property
    def lease_executor(self) -> Any:
        """Lease renewals go through the simulated executor too."""
        return self.sim


@dataclass
class _Client:
    plan: ClientPlan
    app: int
    next_op: int = 0
    handle: OpHandle | None = None
    waiting: asyncio.Future[None] | None = None
    task: asyncio.Task[int] | None = None
    killed: bool = False


@dataclass
class _Node:
    app: SimApp
    ns: Namespace[KV]
    faulty: FaultyBackend | None
    dead: bool = False
    paused_until: int = -1


@dataclass
class RunResult:
    """What one deterministic run produced."""

    history: History
    steps: int
    simulated_seconds: float
    faults: dict[str, int] = field(default_factory=dict)
    backend_calls: int = 0
    hung: int = 0
    """Ops that never answered (a liveness failure: the run is reported as an anomaly)."""


class Scheduler:
    """Runs a :class:`Program` on several Apps sharing *backend*, choices from *chooser*.

    *processes* Apps (clients go to App ``plan.home % processes``); *faults* ⊆ {kill, pause,
    errors}; *error_rate* for ``errors``; *unsafe* and *wrap* let a mutant break the runtime
    or the backend (see :mod:`duro.consistency.mutants`); *limits*, *evict* and *reopen*
    make reads reach the backend (module docstring).
    """

    def __init__(self, program: Program, backend: Backend, chooser: Chooser, *,
                 processes: int = 2, faults: frozenset[str] = frozenset(),
                 error_rate: float = 0.03, seed: int = 0, unsafe: frozenset[str] = frozenset(),
                 wrap: Callable[[Backend], Backend] | None = None,
                 max_faults: int = 2, limits: StorageLimits | None = None,
                 evict: bool = False, reopen: Callable[[], Backend] | None = None) -> None:
        self.program = program
        self.backend = backend
        self.chooser = chooser
        self.processes = max(1, processes)
        self.faults = faults
        self.error_rate = error_rate
        self.seed = seed
        self.unsafe = unsafe
        self.wrap = wrap
        self.max_faults = max_faults
        self.limits = limits or StorageLimits()
        self.evict = evict
        self.reopen = reopen
        self._reopened: Backend | None = None
        self._evicting: list[asyncio.Future[None]] = []
        self.step = 0
        self.clock = ManualClock()
        self.rec = Recorder(clock=lambda: self.step)
        self.acquires: list[tuple[int, str, int]] = []
        self.killed: dict[int, int] = {}
        self.injected: dict[str, int] = {"kill": 0, "pause": 0, "errors": 0, "evict": 0,
                                         "reopen": 0}
        self.nodes: list[_Node] = []
        self.clients: list[_Client] = []
        self._faulty: list[FaultyBackend] = []
        self._dead: list[_Node] = []
        self.hung = 0
        self._generation = 0
        self.max_steps = 200 + 80 * program.ops

    # -- Apps -----------------------------------------------------------------------------------

    def _log(self, t: int, oid: str, epoch: int) -> None:
        self.acquires.append((t, oid, epoch))

    async def _new_node(self, *, faulty: bool = True, mutant: bool = True) -> _Node:
        self._generation += 1
        inner: Backend = self.backend
        fb: FaultyBackend | None = None
        if faulty and "errors" in self.faults:
            fb = FaultyBackend(inner, rate=self.error_rate,
                               seed=self.seed * 1000 + self._generation)
            self._faulty.append(fb)
            inner = fb
        if mutant and self.wrap is not None:
            inner = self.wrap(inner)
        logged = AcquireLog(inner, lambda: self.step, self._log)
        # The scheduler delays renewals at will: shedding would refuse calls it means to run.
        app = SimApp(logged, listen=None, clock=self.clock, lease_ttl=LEASE_TTL, shed_load=False,
                     drift_margin=DRIFT, idle_timeout=IDLE, alarm_poll_interval=1.0,
                     call_timeout=1e6, unsafe=self.unsafe if mutant else frozenset(),
                     storage_limits=self.limits)
        await app.start()
        node = _Node(app, app.namespace(KV), fb)
        return node

    # -- clients --------------------------------------------------------------------------------

    def _start_client(self, c: _Client) -> None:
        node = self.nodes[c.app]
        ns = node.ns

        async def call(obj: str, method: str, args: tuple[Any, ...]) -> Any:
            return await getattr(ns.get(object_id(obj)), method)(*args)

        async def gate() -> None:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            c.waiting = fut
            await fut

        def on_open(i: int, h: OpHandle | None) -> None:
            c.next_op, c.handle = (i, h) if h is not None else (i, None)

        oid = str(object_id(c.plan.object))
        c.task = asyncio.ensure_future(run_client(
            c.plan, call, self.rec, oid, new_process=self.rec.new_process, gate=gate,
            on_open=on_open, start=c.next_op))

    # -- the loop -------------------------------------------------------------------------------

    async def _settle(self) -> None:
        await settle()

    def _options(self, with_clients: bool) -> list[tuple[str, Any]]:
        opts: list[tuple[str, Any]] = []
        if with_clients:
            for c in self.clients:
                n = self.nodes[c.app]
                if c.waiting is not None and not c.waiting.done() and not self._paused(n):
                    opts.append(("go", c))
        for n in self.nodes:
            if not n.dead and not self._paused(n):
                opts.extend(("io", (n, item)) for item in n.app.sim.pending)
        opts.append(("tick", None))
        return opts

    def _paused(self, n: _Node) -> bool:
        return self.step < n.paused_until

    def _done(self) -> bool:
        return all(c.task is not None and c.task.done() for c in self.clients)

    def _fault_options(self) -> list[str]:
        if sum(self.injected[k] for k in ("kill", "pause")) >= self.max_faults:
            return []
        live = [n for n in self.nodes if not n.dead and not self._paused(n)]
        if len(live) < 2 and self.processes > 1:
            return []
        return [f for f in ("pause", "kill") if f in self.faults]

    async def _one_step(self, with_clients: bool = True) -> None:
        self.step += 1
        if self.step > self.max_steps:
            raise SchedulerStuck(f"deterministic run did not finish in {self.max_steps} steps")
        faults = self._fault_options()
        # About one fault per 60 steps, while the budget lasts.
        if faults and with_clients and self.chooser.choose(60) == 59:
            kind = faults[self.chooser.choose(len(faults))]
            await (self._pause() if kind == "pause" else self._kill())
            return
        # About one eviction per 40 steps: the next op re-activates the object from storage.
        if self.evict and with_clients and self.chooser.choose(40) == 39:
            idle = [i for n in self.nodes if not n.dead and not self._paused(n)
                    for i in n.ns._instances.values() if i.accepting and i.idle]
            if idle:
                inst = idle[self.chooser.choose(len(idle))]
                self._evicting.append(asyncio.ensure_future(inst.evict()))
                self.injected["evict"] += 1
                return
        opts = self._options(with_clients)
        kind, what = opts[self.chooser.choose(len(opts))]
        if kind == "go":
            fut = what.waiting
            what.waiting = None
            fut.set_result(None)
        elif kind == "io":
            node, item = what
            node.app.sim.run(item)
        else:
            self.clock.advance(TICK)

    def _owner_nodes(self) -> list[_Node]:
        return [n for n in self.nodes if not n.dead and not self._paused(n)
                and any(n.ns._instances.values())]

    async def _pause(self) -> None:
        # Prefer an owner with a backend call in flight: that call then lands (or is fenced)
        # after another App took over.
        owners = [n for n in self._owner_nodes() if n.app.sim.pending]
        owners = owners or self._owner_nodes() or [n for n in self.nodes if not n.dead]
        node = owners[self.chooser.choose(len(owners))]
        node.paused_until = self.step + 20 + self.chooser.choose(40)
        self.clock.advance(LEASE_TTL + DRIFT + TICK)  # its lease runs out while it is stopped
        self.injected["pause"] += 1

    async def _kill(self) -> None:
        owners = self._owner_nodes() or [n for n in self.nodes if not n.dead]
        node = owners[self.chooser.choose(len(owners))]
        idx = self.nodes.index(node)
        node.dead = True
        node.app.sim.dead = True
        node.app.sim.pending.clear()
        self.injected["kill"] += 1
        victims = [c for c in self.clients if c.app == idx and not (c.task and c.task.done())]
        for c in victims:
            if c.handle is not None and not c.handle.done:
                self.killed[c.handle.process] = self.step
                c.handle.info(bound=self.step, error="killed")
                c.next_op += 1
            c.handle = None
            c.waiting = None
            if c.task is not None:
                c.task.cancel()
        await self._settle()
        # Restart: a fresh App takes the dead one's place and its clients go on.
        fresh = await self._new_node()
        self._dead.append(node)  # keep its tasks referenced until the loop ends
        self.nodes[idx] = fresh
        for c in victims:
            self._start_client(c)

    async def _abandon(self) -> None:
        for c in self.clients:
            if c.task is None or c.task.done():
                continue
            if c.handle is not None and not c.handle.done:
                c.handle.info(error="no answer")
                self.hung += 1
            c.task.cancel()
        await self._settle()
        self.max_steps = self.step + 200 + 20 * self.program.ops

    async def _drive_until(self, done: Callable[[], bool], with_clients: bool = True) -> None:
        while True:
            await self._settle()
            if done():
                return
            await self._one_step(with_clients)

    async def _close_all(self) -> None:
        live = [n for n in self.nodes if not n.dead]
        closing = [asyncio.ensure_future(n.app.close()) for n in live]
        for n in live:
            n.paused_until = -1
        await self._drive_until(lambda: all(t.done() for t in closing), with_clients=False)
        for t in closing:
            t.result()

    async def _final_reads(self) -> None:
        """A fresh App reads every key back, on a reopened backend if *reopen* was given."""
        if self.reopen is not None:
            fresh = self.reopen()
            self.backend.close()
            self.backend = fresh
            self._reopened = fresh
            self.injected["reopen"] += 1
        node = await self._new_node(faulty=False, mutant=False)
        self.nodes.append(node)

        async def call(obj: str, method: str, args: tuple[Any, ...]) -> Any:
            return await getattr(node.ns.get(object_id(obj)), method)(*args)

        task = asyncio.ensure_future(read_back(self.program, call, self.rec))
        await self._drive_until(task.done, with_clients=False)
        task.result()
        closing = asyncio.ensure_future(node.app.close())
        await self._drive_until(closing.done, with_clients=False)

    async def run(self) -> RunResult:
        """Run the program, close the Apps, read everything back; the bounded history."""
        for _ in range(self.processes):
            self.nodes.append(await self._new_node())
        for plan in self.program.clients:
            c = _Client(plan, plan.home % self.processes)
            self.clients.append(c)
            self._start_client(c)
        try:
            try:
                await self._drive_until(self._done)
            except SchedulerStuck:
                await self._abandon()  # ops that never answer: a liveness failure
            for c in self.clients:
                assert c.task is not None
                if not c.task.cancelled():
                    c.task.result()  # a harness bug surfaces here
            await self._close_all()
            end = self.step
            await self._final_reads()
        finally:
            # Dead Apps' tasks wait on backend calls that never run: end them here, not in GC.
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            if self._reopened is not None:
                self._reopened.close()
        hist = bound_infos(self.rec.history(), self.acquires,
                           end=end, killed=self.killed)
        self.injected["errors"] = sum(f.total_injected for f in self._faulty)
        calls = sum(f.calls for f in self._faulty)
        return RunResult(hist, self.step, self.clock.monotonic(), dict(self.injected), calls,
                         self.hung)


def run_deterministic(program: Program, backend: Backend, chooser: Chooser, **kw: Any
                      ) -> RunResult:
    """Run *program* under a :class:`Scheduler` in a fresh event loop (see its arguments)."""

    async def main() -> RunResult:
        return await Scheduler(program, backend, chooser, **kw).run()

    return asyncio.run(main())
