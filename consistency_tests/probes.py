"""Targeted probes of the linearizability stage: fencing of a zombie owner, crash atomicity.

Random histories find a fencing bug only when a pause happens to strike an owner with a write
in flight. These probes stage that moment on purpose, every run, so a backend that breaks the
contract fails them on every run, not in a few percent of histories.

* :func:`fencing_probe` (the real runtime, deterministic): App *A* owns an object and stages a
  transaction that read its cache and writes a second key; its backend calls are held (a
  zombie: paused past its lease) while the clock jumps; App *B* takes the object over, writes
  the key *A* read and reads the key *A* writes; then *A* resumes and its stale commit runs,
  and *A* is asked for the key *B* overwrote (it must not answer from its stale cache).
  The Apps are closed, the backend is closed and reopened, and a fresh App reads everything
  back. The recorded history is checked: if *A*'s commit landed (the backend ignored the
  epoch), no order of the ops explains what was read.
* :func:`crash_probe` (real OS processes): a forked process commits multi-key batches whose
  keys all carry the batch number, through the backend API, and is ``kill -9``-ed at a random
  point inside a commit. After recovery every key must carry the same batch (all or nothing),
  no older than the last batch acknowledged and no newer than the last one started. Several
  rounds make a batch applied as two commits show. **kill -9 does not test power loss.**

Both return a :class:`ProbeResult`; the runner of ``duro check`` runs them every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from duro.backends.base import Backend, Batch, LeaseHeld, ObjectRef
from duro.clock import ManualClock
from duro.consistency.checker import CheckResult, check_history
from duro.consistency.faults import AcquireLog, bound_infos
from duro.consistency.history import History, Recorder
from duro.consistency.scheduler import DRIFT, LEASE_TTL, TICK, SchedulerStuck, SimApp, settle
from duro.consistency.target import KV, NAMESPACE, object_id
from duro.errors import DuroError

__all__ = ["ProbeResult", "crash_probe", "fencing_probe", "wipe_names"]

CRASH_KEYS: Final = 8
CRASH_VALUE_BYTES: Final = 600


@dataclass
class ProbeResult:
    """What a probe found: ``ok``, a message, and (fencing) the checked history."""

    name: str
    ok: bool
    message: str = ""
    history: History | None = None
    check: CheckResult | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """What the probe did (``takeovers``, ``stale_commits``, ``kills``, ``batches``…)."""


# ---------------------------------------------------------------------------------------------
# fencing
# ---------------------------------------------------------------------------------------------
class _Driver:
    """Runs held backend calls of chosen Apps one at a time, in the order they were made."""

    def __init__(self) -> None:
        self.step = 0
        self.clock = ManualClock()
        self.rec = Recorder(clock=lambda: self.step)
        self.acquires: list[tuple[int, str, int]] = []

    def app(self, backend: Backend, unsafe: frozenset[str] = frozenset()) -> SimApp:
        logged = AcquireLog(backend, lambda: self.step,
                            lambda t, o, e: self.acquires.append((t, o, e)))
        return SimApp(logged, listen=None, clock=self.clock, lease_ttl=LEASE_TTL,
                      drift_margin=DRIFT, idle_timeout=1e6, alarm_poll_interval=1.0,
                      call_timeout=1e6, unsafe=unsafe)

    async def drive(self, done: Callable[[], bool], apps: list[SimApp],
                    max_steps: int = 5_000) -> None:
        for _ in range(max_steps):
            await settle()
            if done():
                return
            self.step += 1
            pending = [(a, item) for a in apps for item in a.sim.pending]
            if pending:
                a, item = pending[0]
                a.sim.run(item)
            else:
                self.clock.advance(TICK)
        raise SchedulerStuck("fencing probe: the runtime did not finish a step in time")

    def takeover_after(self, oid: str, t: int) -> int | None:
        """When the first lease of *oid* after step *t* was granted."""
        return next((at for at, o, _ in self.acquires if o == oid and at > t), None)

    def start(self, app: SimApp, obj: str, f: str, key: str | None, value: Any,
              args: tuple[Any, ...], *, stale: bool = False) -> asyncio.Task[None]:
        """Start a recorded op. *stale*: its turn runs under an epoch that a takeover will
        replace, so if it fails its writes can land only before that takeover."""
        oid = object_id(obj).hex
        h = self.rec.invoke(self.rec.new_process(), f, oid, key, value)  # type: ignore[arg-type]
        invoked = self.step

        async def run() -> None:
            try:
                result = await getattr(app.namespace(KV).get(object_id(obj)), f)(*args)
            except DuroError as exc:
                bound = self.takeover_after(oid, invoked) if stale else None
                if bound is None:
                    h.info(error=type(exc).__name__)
                else:
                    h.info(error=type(exc).__name__, bound=bound)
                return
            h.ok(value if f == "put" else result)

        return asyncio.ensure_future(run())

    async def do(self, app: SimApp, obj: str, f: str, key: str | None, value: Any,
                 args: tuple[Any, ...]) -> None:
        task = self.start(app, obj, f, key, value, args)
        await self.drive(task.done, [app])
        task.result()


async def _fencing(backend: Backend, objects: list[str], reopen: Callable[[], Backend] | None,
                   wrap: Callable[[Backend], Backend] | None, unsafe: frozenset[str]
                   ) -> tuple[History, dict[str, int]]:
    d = _Driver()
    broken = wrap(backend) if wrap is not None else backend
    a, b = d.app(broken, unsafe), d.app(broken, unsafe)
    await a.start()
    await b.start()
    counts = {"takeovers": 0, "stale_commits": 0}
    k_read, k_write = "a/0", "a/1"
    for obj in objects:
        objr = obj + "-r"  # a second object, for the zombie's cached read
        # A owns both objects and has k_read cached.
        await d.do(a, obj, "put", k_read, f"{obj}.A0", (k_read, f"{obj}.A0"))
        await d.do(a, objr, "put", k_read, f"{objr}.A0", (k_read, f"{objr}.A0"))
        await d.drive(lambda: not a.sim.pending, [a])
        # A's turn reads its cache and writes; its commit is held: A is paused.
        micro = [["r", k_read, None], ["w", k_write, f"{obj}.A1"]]
        stale = d.start(a, obj, "txn", None, micro, (micro,), stale=True)
        await settle()
        counts["stale_commits"] += bool(a.sim.pending)
        d.clock.advance(LEASE_TTL + DRIFT + TICK)  # A's lease runs out while it is stopped
        d.step += 1
        # B takes over, overwrites what A read, and reads (from the backend) what A writes.
        await d.do(b, obj, "put", k_read, f"{obj}.B1", (k_read, f"{obj}.B1"))
        await d.do(b, obj, "get", k_write, None, (k_write,))
        await d.do(b, objr, "put", k_read, f"{objr}.B1", (k_read, f"{objr}.B1"))
        counts["takeovers"] += 2
        # B lets the second object go, so that A can take it back once it knows it lost it.
        inst = b.namespace(KV)._instances.get(object_id(objr).hex)
        if inst is not None:
            evicting = asyncio.ensure_future(inst.evict())
            await d.drive(evicting.done, [b])
        # A resumes: its held calls run, the stale commit first; then A is asked for what
        # B overwrote (a zombie must not answer from its cache).
        await d.drive(stale.done, [a])
        await d.drive(lambda: not a.sim.pending, [a])
        await d.do(a, objr, "get", k_read, None, (k_read,))
    end_close = [asyncio.ensure_future(x.close()) for x in (a, b)]
    await d.drive(lambda: all(t.done() for t in end_close), [a, b])
    end = d.step
    final_backend = reopen() if reopen is not None else backend
    if reopen is not None:
        backend.close()
    try:
        c = d.app(final_backend)
        await c.start()
        for obj in objects:
            for o in (obj, obj + "-r"):
                for k in (k_read, k_write):
                    await d.do(c, o, "get", k, None, (k,))
        closing = asyncio.ensure_future(c.close())
        await d.drive(closing.done, [c])
    finally:
        if reopen is not None:
            final_backend.close()
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
    return bound_infos(d.rec.history(), d.acquires, end=end), counts


def wipe_names(backend: Backend, names: list[str]) -> None:
    """Delete whatever an earlier run left under these workload object names."""
    for obj in names:
        ref = ObjectRef(NAMESPACE, object_id(obj).hex)
        if backend.read_lease(ref) is None:
            continue
        try:
            lease = backend.acquire(ref, owner="duro-check", address=None, now=time.time(),
                                    until=time.time() + 5)
        except LeaseHeld:  # our own test namespace: a leftover lease of a dead run
            lease = backend.acquire(ref, owner="duro-check", address=None, now=math.inf,
                                    until=time.time() + 5)
        backend.delete_object(ref, lease.epoch)
        backend.release(ref, lease.epoch)


def fencing_probe(backend: Backend, *, seed: int = 0, objects: int = 2,
                  reopen: Callable[[], Backend] | None = None,
                  wrap: Callable[[Backend], Backend] | None = None,
                  unsafe: frozenset[str] = frozenset()) -> ProbeResult:
    """Take objects over from a paused owner, then let the stale owner commit (module doc).

    *backend* is used by every App (and closed here if *reopen* is given: *reopen* opens it
    again for the final reads, so what was acknowledged must have reached storage). *wrap*
    and *unsafe* break the two owners on purpose (a mutant). Deterministic: the same backend
    behaviour gives the same history.
    """
    names = [f"fence{seed}-obj{i}" for i in range(objects)]
    wipe_names(backend, names + [n + "-r" for n in names])
    hist, counts = asyncio.run(_fencing(backend, names, reopen, wrap, unsafe))
    if reopen is not None:
        again = reopen()
        try:
            wipe_names(again, names + [n + "-r" for n in names])
        finally:
            again.close()
    else:
        wipe_names(backend, names + [n + "-r" for n in names])
    result = check_history(hist, timeout=30.0)
    if result.verdict == "ok":
        return ProbeResult("fencing", True, f"{counts['takeovers']} takeovers from a paused "
                           "owner; its stale commits were refused", hist, result, counts)
    msg = ("after another process took the objects over from a paused owner, the stale owner "
           "landed a write (its epoch was not checked) or answered from its cache:\n"
           + result.explain())
    return ProbeResult("fencing", False, msg, hist, result, counts)


# ---------------------------------------------------------------------------------------------
# crash atomicity
# ---------------------------------------------------------------------------------------------
def _crash_child(opener: Callable[[], Backend], ref: ObjectRef, out: int, n_batches: int) -> None:
    """The forked committer: batch i puts every key with value ``"<i>|<key>|…"``."""
    try:
        backend = opener()
        now = time.time()
        lease = backend.acquire(ref, owner="duro-check-crash", address=None, now=now,
                                until=now + 600)
        pad = "x" * CRASH_VALUE_BYTES
        for i in range(1, n_batches + 1):
            os.write(out, f"c {i}\n".encode())
            puts = {f"k{j}".encode(): f"{i}|{j}|{pad}".encode() for j in range(CRASH_KEYS)}
            backend.commit(ref, lease.epoch, Batch(puts=puts))
            os.write(out, f"a {i}\n".encode())
        backend.close()
    except BaseException as exc:  # noqa: BLE001 - report, never run the parent's code in the child
        os.write(out, f"e {type(exc).__name__}: {exc}\n".encode(errors="replace"))
    finally:
        os._exit(0)


def _recover(backend: Backend, ref: ObjectRef) -> dict[int, int]:
    """Take the object over from the dead committer; key index → batch found (0 = absent)."""
    try:
        lease = backend.acquire(ref, owner="duro-check", address=None, now=time.time(),
                                until=time.time() + 5)
    except LeaseHeld:  # the killed committer's lease: it is dead, take it over now
        lease = backend.acquire(ref, owner="duro-check", address=None, now=math.inf,
                                until=time.time() + 5)
    keys = [f"k{j}".encode() for j in range(CRASH_KEYS)]
    got = backend.get_many(ref, keys)
    found = {j: int(got[k].split(b"|", 1)[0]) if k in got else 0 for j, k in enumerate(keys)}
    backend.delete_object(ref, lease.epoch)
    backend.release(ref, lease.epoch)
    return found


def _one_crash(opener: Callable[[], Backend], ref: ObjectRef, rng: random.Random,
               timeout: float) -> tuple[str | None, int, int]:
    """One committer killed inside a commit; (complaint or None, last acked, last started)."""
    target = rng.randint(2, 6)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        _crash_child(opener, ref, w, target + 4)
    os.close(w)
    acked = started = 0
    began: dict[int, float] = {}
    spans: list[float] = []
    buf = b""
    error = ""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 4096)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            hit = False
            for line in lines:
                kind, _, rest = line.decode(errors="replace").partition(" ")
                if kind == "e":
                    error = rest
                elif kind == "c":
                    started = int(rest)
                    began[started] = time.monotonic()
                    hit = started == target
                elif kind == "a":
                    acked = int(rest)
                    spans.append(time.monotonic() - began.get(acked, time.monotonic()))
            if hit:
                typical = sorted(spans)[len(spans) // 2] if spans else 0.002
                time.sleep(rng.uniform(0.0, 1.2 * typical))  # a random point inside the commit
                os.kill(pid, signal.SIGKILL)
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # read what the child wrote before it died: its acks count
        while True:
            ready, _, _ = select.select([r], [], [], 0)
            chunk = os.read(r, 4096) if ready else b""
            if not chunk:
                break
            buf += chunk
        for line in buf.split(b"\n"):
            kind, _, rest = line.decode(errors="replace").partition(" ")
            if kind == "a":
                acked = max(acked, int(rest))
            elif kind == "c":
                started = max(started, int(rest))
            elif kind == "e":
                error = rest
        os.close(r)
    if error:
        return f"the committing process failed: {error}", acked, started
    return None, acked, started


def crash_probe(opener: Callable[[], Backend], *, seed: int = 0, rounds: int = 8,
                timeout: float = 30.0) -> ProbeResult:
    """Kill -9 a committing process inside a multi-key commit, *rounds* times (module doc).

    *opener* opens the backend (in the forked committer and for each recovery); it must be
    shared between processes. Each round uses its own object, deleted afterwards.
    """
    rng = random.Random(seed)
    counts = {"kills": 0, "batches": 0, "acknowledged": 0}
    for rnd in range(rounds):
        ref = ObjectRef(NAMESPACE, object_id(f"crash{seed}-r{rnd}").hex)
        complaint, acked, started = _one_crash(opener, ref, rng, timeout)
        backend = opener()
        try:
            found = _recover(backend, ref)
        finally:
            backend.close()
        counts["kills"] += 1
        counts["batches"] += started
        counts["acknowledged"] += acked
        if complaint is not None:
            return ProbeResult("crash", False, complaint, counts=counts)
        batches = sorted(set(found.values()))
        where = f"round {rnd} (kill -9 during batch {started}, {acked} acknowledged)"
        if len(batches) > 1:
            parts = ", ".join(f"k{j}=batch {b or 'none'}" for j, b in sorted(found.items()))
            return ProbeResult("crash", False, f"{where}: a batch was applied in part after "
                               f"kill -9, keys carry different batches: {parts}", counts=counts)
        b = batches[0] if batches else 0
        if b < acked:
            return ProbeResult("crash", False, f"{where}: acknowledged batch {acked} was lost; "
                               f"storage holds batch {b or 'none'}", counts=counts)
        if b > started:
            return ProbeResult("crash", False, f"{where}: storage holds batch {b}, which was "
                               "never committed", counts=counts)
    return ProbeResult("crash", True, f"{rounds} kill -9 inside multi-key commits: every batch "
                       "all or nothing, none acknowledged lost", counts=counts)
