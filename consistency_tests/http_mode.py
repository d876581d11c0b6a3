"""Free-running mode ``http``: the clients reach the objects over HTTP through ``duro serve``.

Two ``duro serve`` OS processes (``python -m duro.serve_cli
duro.consistency.http_app:make_app``) share one backend (any backend shared between
processes: sqlite, lmdb, s3, postgresql). The clients run as asyncio tasks in this process and
send every op as ``POST /KV/name/<object>/<op>`` (JSON, :data:`~duro.consistency.target.HTTP_ARGS`)
through one keep-alive ``httpx.AsyncClient``, each client alternating between the servers, so
about half of the requests reach a process that does not own the object and are forwarded by
duro to the owner. Each response names the server that ran the op, which counts the forwarded
requests.

Outcomes, recorded by :func:`~duro.consistency.workloads.run_client` with the usual
:class:`~duro.consistency.history.Recorder`: a 200 is ``ok`` (``fail`` for a CAS that did not
match); a lost connection (:class:`LostConnection`), a client timeout (``TimeoutError``) and
any 5xx (:class:`HTTPUnavailable`: reset, unavailable backend, overload, server timeout) are
``info``; a 4xx is a bug of the harness and stops the run. Every ``info`` op is bounded by the
end of the run, taken once every server process has exited (stopped or reaped): a request
may have been forwarded to either process, so only the end of both is a sound bound.

Faults (``--faults``): ``kill`` is ``kill -9`` of a server that owns objects while clients
write (the clients then use the survivor, and a replacement server joins a moment later);
``pause`` is ``SIGSTOP`` of an owner past its lease (while it is stopped, one more recorded
client per object writes through the other server, which takes the object over, and probes
read those keys through the stopped zombie), then ``SIGCONT``;
``errors`` injects backend errors and latency inside the servers. A mutant is passed to the
servers through ``DURO_CHECK_MUTANT``. **kill -9 does not test power loss.** After the run a
fresh App in this process reads every key back (acknowledged writes must be there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from duro.backends import Backend, ObjectRef, open_backend
from duro.consistency.faults import bound_infos
from duro.consistency.freerun import LEASE_TTL, final_reads
from duro.consistency.history import Recorder
from duro.consistency.mutants import get_mutant
from duro.consistency.scheduler import RunResult
from duro.consistency.target import HTTP_ARGS, NAMESPACE, object_id, object_path
from duro.consistency.workloads import ClientPlan, OpSpec, Program, run_client
from duro.errors import BackendUnavailable, ConfigError
from duro.server import NOT_RUN_HEADER

__all__ = ["APP_TARGET", "SERVERS", "HTTPUnavailable", "HttpRunResult", "LostConnection",
           "absolute_url", "run_http"]

APP_TARGET: Final = "duro.consistency.http_app:make_app"
SERVERS: Final = 2
START_TIMEOUT: Final = 60.0
CLIENT_TIMEOUT: Final = 60.0
TAKEOVER_CLIENT: Final = 50_000
"""Client numbers of the extra clients a ``pause`` adds (unique values ``v<client>.<op>``)."""


def absolute_url(url: str, cwd: Path | None = None) -> str:
    """*url* with a relative file path (``sqlite:///rel.db``, ``lmdb:///rel``) made absolute.

    The path is resolved against *cwd* (the caller's working directory by default), so a
    process started elsewhere (the servers run in a temporary directory) opens the same file.
    Other URLs are returned unchanged.
    """
    scheme, sep, rest = url.partition(":///")
    base = scheme.lower().split("+")[0]
    if not sep or base not in ("sqlite", "lmdb") or rest.startswith("/"):
        return url
    path, q, query = rest.partition("?")
    return f"{scheme}:///{(cwd or Path.cwd()) / path}{q}{query}"


class LostConnection(ConnectionError):
    """The HTTP exchange broke off (reset, refused, closed): the op's outcome is unknown."""


class HTTPUnavailable(ConnectionError):
    """A 5xx answer (reset, unavailable backend, overload, timeout): the outcome is unknown."""


@dataclass
class HttpRunResult(RunResult):
    """A run of the ``http`` mode: the run's result plus what the HTTP requests did."""

    requests: int = 0
    """Requests answered 200."""
    forwarded: int = 0
    """Of those, requests served by another process than the one they were sent to."""
    sent: dict[str, int] = field(default_factory=dict)
    """Requests sent, per server tag."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Non-200 outcomes by status code or error name."""


class _Server:
    """One ``duro serve`` process of the run."""

    def __init__(self, url: str, tag: str, workdir: Path, extra_env: dict[str, str]) -> None:
        self.tag = tag
        self.log = workdir / f"serve-{tag}.log"
        env = {**os.environ, **extra_env, "DURO_CHECK_URL": url, "DURO_CHECK_SERVER": tag,
               "DURO_CHECK_STATS": str(workdir / "stats.jsonl")}
        with self.log.open("w", encoding="utf-8") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "duro.serve_cli", APP_TARGET, "--port", "0"],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                env=env, cwd=workdir)
        self.address = ""
        self.cluster = ""  # the cluster listener: the address its leases record
        self.alive = False
        self.reaped_at: int | None = None

    @property
    def base(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address}"

    def wait_ready(self) -> None:
        """Wait for the ``duro serve: http://…`` line (``ConfigError`` if it never comes)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("duro serve: http://"):
            self.kill()
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise ConfigError(f"duro serve did not start for the http mode:\n{tail}")
        self.address = line.split()[2].removeprefix("http://")
        self.cluster = line.split("cluster=", 1)[1].split()[0]
        self.alive = True

    def kill(self) -> None:
        """``kill -9`` and reap it."""
        self.alive = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reaped_at = time.monotonic_ns()

    def stop(self) -> bool:
        """SIGTERM (drain, flush, release) and wait; False if it had to be killed."""
        self.alive = False
        clean = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                clean = False
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.reaped_at = time.monotonic_ns()
        return clean


def _start(url: str, tags: list[str], workdir: Path, env: dict[str, str]) -> list[_Server]:
    servers = [_Server(url, t, workdir, env) for t in tags]
    try:
        for s in servers:
            s.wait_ready()
    except BaseException:
        for s in servers:
            s.kill()
        raise
    return servers


class _Traffic:
    """Counts what the requests did."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.requests = 0
        self.forwarded = 0

    def answered(self, sent_to: str, ran_on: str) -> None:
        """A request sent to server *sent_to* was answered 200 after running on *ran_on*."""
        self.requests += 1
        if ran_on != sent_to:
            self.forwarded += 1


def _caller(plan: ClientPlan, servers: list[_Server], http: httpx.AsyncClient,
            traffic: _Traffic, *, stopped_too: bool = False) -> Any:
    """The ``call`` of :func:`run_client` for *plan*: each op a POST to the next live server
    (or to the next of *servers*, alive or stopped, with *stopped_too*)."""
    turn = plan.client

    async def call(obj: str, method: str, args: tuple[Any, ...]) -> Any:
        nonlocal turn
        live = [s for s in servers if s.alive or stopped_too]
        if not live:
            raise LostConnection("no live server")
        server = live[turn % len(live)]
        turn += 1
        traffic.sent[server.tag] += 1
        body = dict(zip(HTTP_ARGS[method], args, strict=True))
        try:
            r = await http.post(f"{server.base}/{NAMESPACE}/{object_path(obj)}/{method}", json=body)
        except httpx.TimeoutException as exc:
            traffic.statuses[type(exc).__name__] += 1
            raise TimeoutError(f"{method} to {server.tag}: {exc!r}") from exc
        except httpx.TransportError as exc:
            traffic.statuses[type(exc).__name__] += 1
            raise LostConnection(f"{method} to {server.tag}: {exc!r}") from exc
        if r.status_code >= 500:
            traffic.statuses[str(r.status_code)] += 1
            if r.status_code == 503 and r.headers.get(NOT_RUN_HEADER) == "1":
                # duro says the call never started: a certain ``fail``, not an ``info``.
                raise BackendUnavailable(f"{method} to {server.tag}: {r.text.strip()}",
                                         not_run=True)
            raise HTTPUnavailable(f"{method} to {server.tag}: {r.status_code} {r.text.strip()}")
        if r.status_code != 200:
            traffic.statuses[str(r.status_code)] += 1
            raise RuntimeError(f"harness bug: {method} {body} answered {r.status_code} {r.text}")
        data = r.json()
        traffic.answered(server.tag, data["server"])
        return data["result"]

    return call


def _owner(backend: Backend, program: Program, servers: list[_Server]) -> _Server | None:
    by_address = {s.cluster: s for s in servers if s.alive}
    for obj in program.objects:
        lease = backend.read_lease(ObjectRef(NAMESPACE, object_id(obj).hex))
        if lease is not None and lease.address in by_address:
            return by_address[lease.address]
    return None


async def _faults(program: Program, url: str, backend: Backend, servers: list[_Server],
                  faults: frozenset[str], rng: random.Random, workdir: Path,
                  env: dict[str, str], injected: dict[str, int], done: asyncio.Event,
                  rec: Recorder, http: httpx.AsyncClient) -> None:
    """Kill -9 or pause an owning server while the clients run.

    A pause strikes even if the clients are done by then: it brings its own recorded clients
    (:func:`_take_over`), so every history with ``pause`` has its zombie.
    """
    for i, fault in enumerate(f for f in ("kill", "pause") if f in faults):
        await asyncio.sleep(rng.uniform(0.05, 0.2))
        if done.is_set() and fault == "kill":
            continue
        victim = None
        for _ in range(20):
            victim = await asyncio.to_thread(_owner, backend, program, servers)
            if victim is not None:
                break
            await asyncio.sleep(0.02)
        live = [s for s in servers if s.alive]
        if victim is None and live:
            victim = live[rng.randrange(len(live))]
        if victim is None:
            continue
        if fault == "kill":
            victim.kill()
            injected["kill"] += 1
            fresh = await asyncio.to_thread(_start, url, [f"r{i}"], workdir, env)
            servers.extend(fresh)
        else:
            victim.alive = False  # new requests go to the others while it is stopped
            os.kill(victim.proc.pid, signal.SIGSTOP)
            probes: list[asyncio.Future[Any]] = []
            try:
                await asyncio.sleep(LEASE_TTL * 1.25 + 0.3)  # past its lease
                probes = await _take_over(program, backend, victim, servers, i, rec, http)
            finally:
                os.kill(victim.proc.pid, signal.SIGCONT)
                victim.alive = victim.proc.poll() is None
            if probes:
                with contextlib.suppress(TimeoutError):  # an op left open is completed as info
                    async with asyncio.timeout(3 * LEASE_TTL):
                        await asyncio.gather(*probes)
            injected["pause"] += 1


async def _take_over(program: Program, backend: Backend, victim: _Server,
                     servers: list[_Server], index: int, rec: Recorder,
                     http: httpx.AsyncClient) -> list[asyncio.Future[Any]]:
    """While *victim* is stopped past its lease, write and read its objects elsewhere.

    The program's clients are all waiting for answers from the stopped owner by now (sent to
    it, or forwarded to it), so one more recorded client per object, sent to the other
    servers, makes one of them take the object over under a new epoch. Then a recorded probe
    per object reads the keys just written *through the stopped zombie* (the request waits in
    its socket): after ``SIGCONT`` it must not answer from its stale cache. Returns the probes
    in flight, to be awaited after ``SIGCONT``.
    """
    others = [s for s in servers if s.alive and s is not victim]
    if not others:
        return []
    keys = program.hot_keys()
    picks = [keys[0], keys[-1]]
    clients = []
    owned: list[tuple[int, str]] = []
    for j, obj in enumerate(program.objects):
        lease = await asyncio.to_thread(
            backend.read_lease, ObjectRef(NAMESPACE, object_id(obj).hex))
        if lease is None or lease.address != victim.cluster:
            continue
        ops = [OpSpec("put", k) for k in picks] + [OpSpec("get", k) for k in picks]
        plan = ClientPlan(TAKEOVER_CLIENT + index * 100 + j, obj, 0, ops)
        owned.append((j, obj))
        clients.append(run_client(plan, _caller(plan, others, http, _Traffic()), rec,
                                  object_id(obj).hex,
                                  new_process=rec.new_process))
    if not clients:
        return []
    with contextlib.suppress(TimeoutError):  # an op left open is completed as info
        async with asyncio.timeout(3 * LEASE_TTL):
            await asyncio.gather(*clients)
    probes: list[asyncio.Future[Any]] = []
    for j, obj in owned:
        plan = ClientPlan(TAKEOVER_CLIENT + index * 100 + 50 + j, obj, 0,
                          [OpSpec("get", k) for k in picks])
        for k in range(len(picks)):  # one probe per key, all waiting at the zombie at once
            one = ClientPlan(plan.client + 10 * k, obj, 0, [plan.ops[k]])
            probes.append(asyncio.ensure_future(run_client(
                one, _caller(one, [victim], http, _Traffic(), stopped_too=True), rec,
                object_id(obj).hex, new_process=rec.new_process)))
    await asyncio.sleep(0.05)  # the requests reach the stopped process's sockets
    return probes


def run_http(program: Program, url: str, *, faults: frozenset[str] = frozenset(),
             error_rate: float = 0.03, seed: int = 0, mutant: str | None = None,
             backend: Backend | None = None, servers: int = SERVERS) -> HttpRunResult:
    """Run *program* over HTTP against *servers* ``duro serve`` processes on *url*.

    *faults* ⊆ ``kill,pause,errors``; *mutant* breaks the served runtime or backend;
    *backend*: an already open backend on *url* for this process (opened here if None).
    """
    get_mutant(mutant)  # ValueError for an unknown name, before anything starts
    url = absolute_url(url)  # the servers run in a temporary directory
    own = backend is None
    b = open_backend(url) if backend is None else backend
    try:
        if not b.multi_process:
            raise ConfigError(f"{url} is not shared between processes: the http mode needs "
                              "a backend that two server processes can open")
        with tempfile.TemporaryDirectory(prefix="duro-check-http-") as d:
            return _run(program, url, b, faults=faults, error_rate=error_rate, seed=seed,
                        mutant=mutant, workdir=Path(d), n_servers=max(2, servers))
    finally:
        if own:
            b.close()


def _run(program: Program, url: str, backend: Backend, *, faults: frozenset[str],
         error_rate: float, seed: int, mutant: str | None, workdir: Path,
         n_servers: int) -> HttpRunResult:
    env = {"DURO_CHECK_LEASE_TTL": str(LEASE_TTL), "DURO_CHECK_SEED": str(seed)}
    if "errors" in faults:
        env["DURO_CHECK_ERROR_RATE"] = str(error_rate)
    if mutant:
        env["DURO_CHECK_MUTANT"] = mutant
    servers = _start(url, [f"s{i}" for i in range(n_servers)], workdir, env)
    rec = Recorder()
    traffic = _Traffic()
    injected = {"kill": 0, "pause": 0, "errors": 0}
    hung = 0

    async def main() -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits) as http:
            done = asyncio.Event()
            chaos = asyncio.ensure_future(_faults(
                program, url, backend, servers, faults, random.Random(seed), workdir, env,
                injected, done, rec, http))
            try:
                await asyncio.gather(*(
                    run_client(p, _caller(p, servers, http, traffic), rec,
                               object_id(p.object).hex,
                               new_process=rec.new_process) for p in program.clients))
            finally:
                done.set()
                await chaos

    try:
        asyncio.run(main())
    finally:
        for s in servers:
            if s.reaped_at is None and not s.stop():
                hung += 1
    end = time.monotonic_ns()
    acquires: list[tuple[int, str, int]] = []
    asyncio.run(final_reads(backend, program, rec, lambda t, o, e: acquires.append((t, o, e))))
    hist = bound_infos(rec.history(), [], end=end)
    stats = workdir / "stats.jsonl"
    calls = 0
    if stats.exists():
        for line in stats.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            injected["errors"] += int(row["injected"])
            calls += int(row["calls"])
    return HttpRunResult(hist, 0, 0.0, injected, calls, hung, requests=traffic.requests,
                         forwarded=traffic.forwarded, sent=dict(traffic.sent),
                         statuses=dict(traffic.statuses))
