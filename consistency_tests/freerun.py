"""Free-running mode: real concurrency, real clocks, no scheduler.

Three shapes (``mode``):

* ``tasks``: several Apps in one process and one loop, sharing the backend; each listens on
  127.0.0.1, so a client of an App that does not own its object is forwarded over HTTP to the
  App that does; clients are asyncio tasks.
* ``threads``: the same Apps, but every client is an OS thread with its own event loop that
  sends its calls into the Apps' loop.
* ``processes``: one OS process per home (``python -m duro.consistency.node``), on a shared
  backend (not ``memory://``). Faults strike here: ``kill -9`` of a process that owns objects
  while its clients write (a replacement process then runs the same clients' ops again under
  new client numbers), ``SIGSTOP`` of an owner past its lease and ``SIGCONT`` after another
  process took over (the zombie), and injected backend errors and latency in every process.
  **kill -9 does not test power loss**: the OS keeps what the killed process wrote; power-cut
  durability rests on the backend's ``sync`` level.

Histories use ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by the processes of a host);
each process appends its events to its own file, merged afterwards. After the run every key of
every object is read back by a fresh App (acknowledged writes must be there), and ``info`` ops
get the sound bounds of :func:`duro.consistency.faults.bound_infos`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from duro.app import App
from duro.backends import Backend, ObjectRef, open_backend
from duro.consistency.faults import AcquireLog, FaultyBackend, bound_infos
from duro.consistency.history import Event, Recorder, merge_histories
from duro.consistency.mutants import get_mutant
from duro.consistency.scheduler import RunResult
from duro.consistency.target import KV, NAMESPACE, object_id
from duro.consistency.workloads import ClientPlan, Program, read_back, run_client
from duro.errors import ConfigError
from duro.storage import StorageLimits

__all__ = ["MODES", "final_reads", "run_free"]

MODES: Final = ("tasks", "threads", "processes")
LEASE_TTL: Final = 1.0
FINAL_PROCESS: Final = 9_000_000


async def final_reads(backend: Backend, program: Program, rec: Recorder,
                      log: Callable[[int, str, int], None]) -> None:
    """A fresh App records the final reads of every object (:func:`read_back`) in *rec*."""
    app = App(AcquireLog(backend, time.monotonic_ns, log), listen=None, lease_ttl=LEASE_TTL,
              drift_margin=LEASE_TTL / 4, call_timeout=120.0)
    async with app:
        ns = app.namespace(KV)

        async def call(obj: str, method: str, args: tuple[Any, ...]) -> Any:
            return await getattr(ns.get(object_id(obj)), method)(*args)

        await read_back(program, call, rec)


def _in_process(program: Program, backend: Backend, *, threads: bool, processes: int,
                faults: frozenset[str], error_rate: float, seed: int,
                mutant: str | None, limits: StorageLimits) -> RunResult:
    m = get_mutant(mutant)
    rec = Recorder()
    acquires: list[tuple[int, str, int]] = []
    lock = threading.Lock()
    faulty: list[FaultyBackend] = []

    def log(t: int, oid: str, epoch: int) -> None:
        with lock:
            acquires.append((t, oid, epoch))

    async def main() -> int:
        apps: list[App] = []
        for i in range(max(1, processes)):
            inner: Backend = backend
            if "errors" in faults:
                fb = FaultyBackend(inner, rate=error_rate, seed=seed * 100 + i, latency=0.002)
                faulty.append(fb)
                inner = fb
            if m is not None and m.wrap is not None:
                inner = m.wrap(inner)
            app = App(AcquireLog(inner, time.monotonic_ns, log), listen="127.0.0.1:0",
                      lease_ttl=LEASE_TTL, drift_margin=LEASE_TTL / 4, idle_timeout=0.3,
                      call_timeout=60.0, unsafe=m.unsafe if m is not None else frozenset(),
                      storage_limits=limits)
            await app.start()
            apps.append(app)
        loop = asyncio.get_running_loop()

        def caller(app: App) -> Any:
            ns = app.namespace(KV)

            async def call(obj: str, method: str, args: tuple[Any, ...]) -> Any:
                return await getattr(ns.get(object_id(obj)), method)(*args)

            return call

        def oid(obj: str) -> str:
            return object_id(obj).hex

        if not threads:
            await asyncio.gather(*(
                run_client(p, caller(apps[p.home % len(apps)]), rec, oid(p.object),
                           new_process=rec.new_process) for p in program.clients))
        else:
            def thread_main(p: ClientPlan) -> None:
                target = caller(apps[p.home % len(apps)])

                async def remote(obj: str, method: str, args: tuple[Any, ...]) -> Any:
                    fut = asyncio.run_coroutine_threadsafe(target(obj, method, args), loop)
                    return await asyncio.wrap_future(fut)

                asyncio.run(run_client(p, remote, rec, oid(p.object),
                                       new_process=rec.new_process))

            await asyncio.gather(*(asyncio.to_thread(thread_main, p) for p in program.clients))
        for app in apps:
            await app.close()
        end = time.monotonic_ns()
        await final_reads(backend, program, rec, log)
        return end

    end = asyncio.run(main())
    hist = bound_infos(rec.history(), acquires, end=end)
    injected = {"kill": 0, "pause": 0, "errors": sum(f.total_injected for f in faulty)}
    return RunResult(hist, 0, 0.0, injected, sum(f.calls for f in faulty))


class _Worker:
    def __init__(self, cfg: dict[str, Any], workdir: Path, name: str) -> None:
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        self.cfg = cfg
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duro.consistency.node", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        try:
            hello = json.loads(line)
        except json.JSONDecodeError:
            hello = {}
        if not hello.get("ready"):
            self.proc.kill()
            self.proc.wait()
            raise ConfigError(f"consistency worker did not start (is the backend {cfg['url']!r} "
                              "shared between processes?)")
        self.owner: str = hello["owner"]
        self.pid: int = hello["pid"]
        self.reaped_at: int | None = None
        self.summary: dict[str, Any] = {}

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        self.reaped_at = time.monotonic_ns()

    def finish(self, timeout: float) -> bool:
        """Wait for the worker's summary; False if it had to be killed."""
        assert self.proc.stdout is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            return False
        for line in out.splitlines():
            if line.startswith("{"):
                self.summary = json.loads(line)
        return True


def _read_events(path: Path) -> list[Event]:
    events: list[Event] = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(Event.from_json(json.loads(line)))
        except (json.JSONDecodeError, ValueError):
            continue  # a line cut by kill -9
    return events


def _owner_of(backend: Backend, program: Program, workers: list[_Worker]) -> _Worker | None:
    owners = {w.owner: w for w in workers if w.proc.poll() is None}
    for obj in program.objects:
        lease = backend.read_lease(ObjectRef(NAMESPACE, object_id(obj).hex))
        if lease is not None and lease.owner in owners:
            return owners[lease.owner]
    return None


def _processes(program: Program, url: str, backend: Backend, *, faults: frozenset[str],
               error_rate: float, seed: int, mutant: str | None,
               workdir: Path) -> RunResult:
    if not backend.multi_process:
        raise ConfigError(f"{url} is not shared between processes: use mode tasks or threads")
    rng = random.Random(seed)
    homes = max(1, program.processes)

    def config(home: int, gen: int) -> dict[str, Any]:
        plans = [p for p in program.clients if p.home % homes == home]
        return {
            "url": url, "lease_ttl": LEASE_TTL, "seed": seed * 100 + home * 10 + gen,
            "first_process": (home * 10 + gen) * 100_000,
            "history": str(workdir / f"h{home}-{gen}.jsonl"),
            "acquires": str(workdir / f"a{home}-{gen}.jsonl"),
            "error_rate": error_rate if "errors" in faults else 0.0, "latency": 0.002,
            "mutant": mutant,
            "plans": [{"client": p.client + gen * 10_000, "object": p.object,
                       "ops": [[o.f, o.key, o.arg, o.pad] for o in p.ops]} for p in plans],
        }

    workers = [_Worker(config(h, 0), workdir, f"w{h}-0") for h in range(homes)]
    all_workers = list(workers)
    injected = {"kill": 0, "pause": 0, "errors": 0}
    for w in workers:
        w.go()
    plan = [f for f in ("kill", "pause") if f in faults]
    for i, fault in enumerate(plan):
        time.sleep(rng.uniform(0.02, 0.12))
        victim = None
        for _ in range(10):  # an owner, so the fault hits writes in flight
            victim = _owner_of(backend, program, workers)
            if victim is not None:
                break
            time.sleep(0.02)
        live = [w for w in workers if w.proc.poll() is None]
        if victim is None and live:
            victim = live[rng.randrange(len(live))]
        if victim is None:
            continue
        if fault == "kill":
            victim.kill()
            injected["kill"] += 1
            home = workers.index(victim)
            fresh = _Worker(config(home, 1 + i), workdir, f"w{home}-{1 + i}")
            fresh.go()
            workers[home] = fresh
            all_workers.append(fresh)
        else:
            os.kill(victim.pid, signal.SIGSTOP)
            time.sleep(LEASE_TTL * 1.25 + 0.3)  # past its lease: another process takes over
            os.kill(victim.pid, signal.SIGCONT)
            injected["pause"] += 1
    hung = 0
    for w in all_workers:
        if w.reaped_at is None and not w.finish(timeout=120):
            hung += 1
    end = time.monotonic_ns()
    sources: list[list[Event]] = []
    acquires: list[tuple[int, str, int]] = []
    for path in sorted(workdir.glob("h*.jsonl")):
        sources.append(_read_events(path))
    for path in sorted(workdir.glob("a*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                t, oid, epoch = json.loads(line)
            except (json.JSONDecodeError, ValueError):
                continue
            acquires.append((int(t), str(oid), int(epoch)))
    final = Recorder(first_process=FINAL_PROCESS)
    asyncio.run(final_reads(backend, program, final,
                            lambda t, o, e: acquires.append((t, o, e))))
    merged = merge_histories([*sources, final.events()])
    hist = bound_infos(merged, acquires, end=end)
    injected["errors"] = sum(int(w.summary.get("injected", 0)) for w in all_workers)
    calls = sum(int(w.summary.get("calls", 0)) for w in all_workers)
    return RunResult(hist, 0, 0.0, injected, calls, hung)


def run_free(program: Program, url: str, *, mode: str = "tasks",
             faults: frozenset[str] = frozenset(), error_rate: float = 0.03, seed: int = 0,
             mutant: str | None = None, backend: Backend | None = None,
             limits: StorageLimits | None = None) -> RunResult:
    """Run *program* free-running on *url* in *mode* (``tasks``, ``threads``, ``processes``).

    ``kill`` and ``pause`` need ``processes`` (and a backend shared between processes);
    ``errors`` works in every mode. *backend*: an already open backend on *url* to use in this
    process (opened and closed here if None). *limits*: the Apps' storage limits (``tasks``
    and ``threads``; a small cache makes reads reach the backend).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    own = backend is None
    b = open_backend(url) if backend is None else backend
    try:
        if mode == "processes":
            with tempfile.TemporaryDirectory(prefix="duro-check-") as d:
                return _processes(program, url, b, faults=faults, error_rate=error_rate,
                                  seed=seed, mutant=mutant, workdir=Path(d))
        return _in_process(program, b, threads=mode == "threads", processes=program.processes,
                           faults=faults, error_rate=error_rate, seed=seed, mutant=mutant,
                           limits=limits or StorageLimits())
    finally:
        if own:
            b.close()

