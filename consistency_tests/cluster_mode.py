"""Mode ``cluster``: ``duro serve`` on several hosts (network namespaces), with a nemesis.

:class:`~duro.testing.netns.HostNetwork` puts each host in its own network namespace on a
bridge; each runs ``duro serve`` of the consistency target app on a shared PostgreSQL that
listens on the bridge's storage address. The clients run in this process, outside the hosts,
and send every op over HTTP to the hosts in turn (see :mod:`duro.consistency.http_mode`, whose
request mapping and outcome rules this mode shares). A nemesis, on a schedule drawn from the
seed, injects one fault at a time and heals it:

- ``storage``: a host can no longer reach the database (both directions dropped);
- ``peers``: a host and the other hosts can no longer reach each other;
- ``split``: a minority host is cut from the majority and from storage;
- ``oneway``: a host drops what it receives from its peers, but still sends;
- ``kill``: ``kill -9`` of a host's server, restarted when the fault heals;
- ``pause``: ``SIGSTOP`` of a host's server past its lease, then ``SIGCONT``;
- added latency and packet loss when the kernel has ``sch_netem`` (reported otherwise).

Each fault lasts longer than a lease, so ownership moves while it holds. The history is checked
by the usual checker, and one more property is measured directly. Just before a host is cut
from storage it is made the owner of a fresh *probe object* (one write through it, so its
cache holds the object); from the cut on, reads of that object and of every workload object
are sent to the cut host until the fault heals (probes, not part of the history):

- no op that *it ran itself* may be answered later than one lease after the cut (its last
  renewal was sent before the cut, so its lease has run out by then): such answers are
  counted as ``stale_answers`` and must be 0;
- it must say so: its objects' calls are refused (503, "lost its lease", not run), counted as
  ``refusals``, the first of them no later than :data:`TAKEOVER` after the cut, when another
  host may take the objects over. Refusals show that the 0 above is measured on a host that
  answers, not one that merely went silent; the mutant ``lost-lease-read`` (it answers from
  its cache instead) makes ``stale_answers`` positive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from duro.backends import Backend, ObjectRef, open_backend
from duro.consistency.checker import CheckResult, check_history
from duro.consistency.faults import bound_infos
from duro.consistency.freerun import final_reads
from duro.consistency.history import History, Recorder
from duro.consistency.http_mode import APP_TARGET, _caller, _Traffic
from duro.consistency.mutants import get_mutant
from duro.consistency.target import NAMESPACE, object_path
from duro.consistency.workloads import ClientPlan, Program, random_program, run_client
from duro.errors import ConfigError
from duro.ids import id_from_name
from duro.testing.netns import Host, HostNetwork, available, reap_stale

__all__ = ["FAULTS", "LEASE_TTL", "TAKEOVER", "ClusterRunResult", "run_cluster"]

FAULTS: Final = ("storage", "peers", "split", "oneway", "kill", "pause")
LEASE_TTL: Final = 2.0
DRIFT: Final = LEASE_TTL / 4  # the drift margin the served App uses (duro.consistency.http_app)
TAKEOVER: Final = LEASE_TTL + 2 * DRIFT
"""The longest time from a cut until another host may take a cut owner's objects over: its
last renewal was sent before the cut, and the stored lease end, one lease later, is a drift
margin past the end of its local validity; a challenger waits one more margin."""
PORT: Final = 8000
REQUEST_TIMEOUT: Final = 8.0


@dataclass
class ClusterRunResult:
    """What a cluster run did and found."""

    history: History
    check: CheckResult
    hosts: int
    injected: dict[str, int]
    stale_answers: int
    """Ops a host ran and answered more than one lease after it was cut from storage."""
    probes: int
    """Probe reads sent to hosts cut from storage that got an answer (of any status)."""
    refusals: int
    """Probe reads a cut host refused because it lost its lease (503, the call not run)."""
    cuts: int
    """Cuts from storage (``storage`` and ``split`` faults) whose host owned its probe object."""
    cuts_refused: int
    """Those of the cuts in which the cut host refused at least once."""
    first_refusal: float | None
    """The longest time from a cut to that host's first refusal (seconds), over the cuts."""
    requests: int
    forwarded: int
    statuses: dict[str, int] = field(default_factory=dict)
    netem: bool = False
    probe_outcomes: dict[str, int] = field(default_factory=dict)
    """Probe reads by outcome: HTTP status, or the client error (timeouts: hosts that hang)."""


class _HostServer:
    """``duro serve`` inside one host's namespace (duck-typed like the http mode's servers)."""

    def __init__(self, host: Host, url: str, workdir: Path, mutant: str | None) -> None:
        self.host = host
        self.mutant = mutant
        self.tag = host.name
        self.url = url
        self.workdir = workdir
        self.address = f"{host.address}:{PORT}"
        self.cluster = ""  # its cluster listener, the address its leases record
        self.alive = False
        self.paused = False
        self.reaped_at: int | None = None
        self.proc: subprocess.Popen[str] | None = None

    @property
    def base(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        env = {**os.environ, "DURO_CHECK_URL": self.url, "DURO_CHECK_SERVER": self.tag,
               "DURO_CHECK_LEASE_TTL": str(LEASE_TTL), "DURO_CHECK_MUTANT": self.mutant or "",
               # Instances stay resident, so a cut owner still holds a cache it could misuse.
               "DURO_CHECK_IDLE": "60"}
        log = (self.workdir / f"serve-{self.tag}.log").open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            self.host.exec(sys.executable, "-m", "duro.serve_cli", APP_TARGET, "--host",
                           self.host.address, "--port", str(PORT)),
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env,
            cwd=self.workdir)
        log.close()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("duro serve: http://"):
            self.kill()
            tail = (self.workdir / f"serve-{self.tag}.log").read_text(errors="replace")[-2000:]
            raise ConfigError(f"duro serve did not start on {self.tag}:\n{tail}")
        self.cluster = next((f.removeprefix("cluster=") for f in line.split()
                             if f.startswith("cluster=")), "")
        self.alive = True

    def kill(self) -> None:
        self.alive = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.reaped_at = time.monotonic_ns()

    def pause(self, on: bool) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if on else signal.SIGCONT)
        self.paused = on

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.alive = False
        self.reaped_at = time.monotonic_ns()


class _Watch(_Traffic):
    """Counts traffic, answers a host ran itself after its lease must have run out, and the
    refusals of cut hosts."""

    def __init__(self) -> None:
        super().__init__()
        self.cut_at: dict[str, float] = {}  # host tag -> monotonic time it lost storage
        self.stale = 0
        self.probes = 0
        self.refusals = 0
        self.cuts = 0
        self.first_refusals: list[float] = []  # per cut that refused: cut -> first refusal
        self.probe_outcomes: Counter[str] = Counter()

    def answered(self, sent_to: str, ran_on: str) -> None:
        super().answered(sent_to, ran_on)
        cut = self.cut_at.get(ran_on)
        if cut is not None and time.monotonic() > cut + LEASE_TTL:
            self.stale += 1


def _busiest(backend: Backend, program: Program, servers: list[_HostServer],
             rng: random.Random) -> _HostServer:
    """The live server that owns the most objects now (ties and no owner: a seeded pick)."""
    owned: Counter[str] = Counter()
    for name in program.objects:
        lease = backend.read_lease(ObjectRef(NAMESPACE, id_from_name(NAMESPACE, name).hex))
        if lease is not None and lease.address is not None:
            owned[lease.address] += 1
    live = [s for s in servers if s.alive and not s.paused]
    if not live:
        return rng.choice(servers)
    return max(rng.sample(live, len(live)), key=lambda s: owned[s.cluster])


PROBE_KEY: Final = "probe"


async def _own_probe_object(victim: _HostServer, name: str, http: httpx.AsyncClient) -> bool:
    """Make *victim* the owner of the fresh object *name*, with one key in its cache."""
    try:
        r = await http.post(f"{victim.base}/{NAMESPACE}/{object_path(name)}/put",
                            json={"key": PROBE_KEY, "value": name}, timeout=REQUEST_TIMEOUT)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.json()["server"] == victim.tag


async def _probe(victim: _HostServer, objects: list[str], key: str, cut_at: float,
                 http: httpx.AsyncClient, watch: _Watch, done: asyncio.Event) -> None:
    """From the cut on, keep reading *key* of every object through *victim* (one task per
    object): what it answers having run the read itself more than a lease after the cut is an
    answer after its lease; a 503 saying it lost its lease is a refusal."""
    refused: list[float] = []

    async def one(name: str) -> None:
        path = f"{victim.base}/{NAMESPACE}/{object_path(name)}/get"
        while not done.is_set():
            try:
                r = await http.post(path, json={"key": key}, timeout=1.0)
            except httpx.HTTPError as exc:
                watch.probe_outcomes[type(exc).__name__] += 1
            else:
                watch.probes += 1
                if r.status_code == 200:
                    watch.answered(victim.tag, r.json()["server"])
                elif r.status_code == 503 and "lost its lease" in r.text:
                    watch.refusals += 1
                    if not refused:
                        refused.append(time.monotonic() - cut_at)
                watch.probe_outcomes[str(r.status_code)] += 1
            await asyncio.sleep(0.2)

    try:
        await asyncio.gather(*(one(name) for name in objects))
    finally:
        if refused:
            watch.first_refusals.append(refused[0])


async def _nemesis(net: HostNetwork, servers: list[_HostServer], rng: random.Random,
                   faults: tuple[str, ...], done: asyncio.Event, watch: _Watch,
                   injected: Counter[str], backend: Backend, program: Program,
                   http: httpx.AsyncClient) -> None:
    """One fault at a time, each held past a lease, then healed; until *done*. The kinds come
    in seeded rounds that each hold every kind once, so a run of n rounds covers them all."""
    order: list[str] = []
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), rng.uniform(0.5, 1.5))
            return
        if not order:
            order = rng.sample(faults, len(faults))
        kind = order.pop()
        # Faults hit an owner: a host without objects shows nothing.
        victim = await asyncio.to_thread(_busiest, backend, program, servers, rng)
        injected[kind] += 1
        probing = None
        if kind in ("storage", "split"):
            # Clients route around it first, as a health check would, and its last writes
            # settle: a cut owner then holds a clean cache, the one a stale answer would use.
            # It also owns a fresh probe object that nobody else writes, so one object at
            # least has no flush in flight at the cut (a flush that cannot land holds every
            # later output, stale or not).
            victim.alive = False
            probe = f"probe-{victim.tag}-{sum(injected.values())}"
            owned = await _own_probe_object(victim, probe, http)
            await asyncio.sleep(0.5)
            if kind == "storage":
                net.isolate_from_storage(victim.host)
            else:
                net.split([victim.host])
            cut_at = watch.cut_at[victim.tag] = time.monotonic()
            watch.cuts += owned
            names = [probe] if owned else []
            probing = asyncio.ensure_future(_probe(
                victim, [*names, *program.objects], PROBE_KEY, cut_at, http, watch, done))
        elif kind == "peers":
            net.isolate_from_peers(victim.host)
        elif kind == "oneway":
            for other in net.hosts:
                if other is not victim.host:
                    net.drop(victim.host, other.address, outgoing=False)
        elif kind == "kill":
            victim.kill()
        elif kind == "pause":
            victim.pause(True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), rng.uniform(1.5 * LEASE_TTL, 3 * LEASE_TTL))
        if probing is not None:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
            victim.alive = True
        net.heal()
        watch.cut_at.clear()
        if kind == "kill":
            await asyncio.to_thread(victim.start)
        elif kind == "pause":
            victim.pause(False)


def run_cluster(*, storage: str = "postgres", seed: int = 0, ops: int = 300, objects: int = 3,
                clients: int = 6, hosts: int = 3, duration: float = 30.0,
                faults: tuple[str, ...] = FAULTS, mutant: str | None = None) -> ClusterRunResult:
    """Run a seeded workload for about *duration* seconds against *hosts* ``duro serve`` hosts
    on shared *storage* (``postgres``, or ``s3`` on a moto server), with faults.

    Needs root (network namespaces), and PostgreSQL's binaries or moto; raises ``ConfigError``
    when something is missing. *mutant* (a name from :mod:`duro.consistency.mutants`) breaks
    the served runtime, to show that the run catches it.
    """
    get_mutant(mutant, cluster=True)  # ValueError for an unknown name, before anything starts
    why = available()
    if why is not None:
        raise ConfigError(f"the cluster mode cannot run here: {why}")
    unknown = set(faults) - set(FAULTS)
    if unknown or not faults:
        raise ConfigError(f"cluster faults must be some of {', '.join(FAULTS)}")
    if storage not in ("postgres", "s3"):
        raise ConfigError(f"the cluster mode runs on postgres or s3, not {storage!r}")
    reap_stale()
    with HostNetwork(hosts) as net, tempfile.TemporaryDirectory(prefix="duro-cluster-") as d, \
            _storage(storage, net) as url:
        return _run(net, url, Path(d), seed=seed, ops=ops, objects=objects, clients=clients,
                    duration=duration, faults=faults, mutant=mutant)


@contextlib.contextmanager
def _storage(kind: str, net: HostNetwork) -> Iterator[str]:
    """A fresh store listening on the network's storage address; yields its backend URL."""
    if kind == "s3":
        from duro.testing.moto_server import start_moto_server

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        server = start_moto_server(host=net.storage_address, port=0)
        try:
            server.create_bucket("duro-cluster")
            yield f"s3://duro-cluster/run?endpoint_url={server.endpoint}&region=us-east-1"
        finally:
            server.stop()
        return
    from duro.testing.pg_cluster import PostgresMissing, start_postgres_cluster

    subnet = net.storage_address.rsplit(".", 1)[0]
    try:
        pg = start_postgres_cluster(listen=(net.storage_address,), trust=(f"{subnet}.0/24",))
    except PostgresMissing as exc:
        raise ConfigError(f"the cluster mode needs PostgreSQL: {exc}") from exc
    with pg:
        yield pg.new_database().replace("@127.0.0.1:", f"@{net.storage_address}:")


def _run(net: HostNetwork, url: str, workdir: Path, *, seed: int, ops: int, objects: int,
         clients: int, duration: float, faults: tuple[str, ...],
         mutant: str | None) -> ClusterRunResult:
    program = random_program(seed, objects=objects, clients=clients, ops=ops)
    servers = [_HostServer(h, url, workdir, mutant) for h in net.hosts]
    rec = Recorder()
    watch = _Watch()
    injected: Counter[str] = Counter()
    pace = duration * clients / max(1, ops)  # seconds between one client's ops
    backend = open_backend(url)
    try:
        end = _drive(net, servers, program, rec, watch, injected, backend, seed=seed,
                     pace=pace, faults=faults)
        asyncio.run(final_reads(backend, program, rec, lambda t, o, e: None))
    finally:
        backend.close()
    hist = bound_infos(rec.history(), [], end=end)
    return ClusterRunResult(hist, check_history(hist), len(servers), dict(injected),
                            watch.stale, watch.probes, watch.refusals, watch.cuts,
                            len(watch.first_refusals), max(watch.first_refusals, default=None),
                            watch.requests, watch.forwarded, dict(watch.statuses), net.netem,
                            dict(watch.probe_outcomes))


def _drive(net: HostNetwork, servers: list[_HostServer], program: Program, rec: Recorder,
           watch: _Watch, injected: Counter[str], backend: Backend, *, seed: int, pace: float,
           faults: tuple[str, ...]) -> int:
    """Start the servers, run the clients against the nemesis, stop; the end time (ns)."""
    try:
        _each(servers, _HostServer.start)  # together: each start is mostly imports

        async def main() -> None:
            transport = httpx.AsyncHTTPTransport(local_address=net.client_address)
            async with httpx.AsyncClient(transport=transport, timeout=REQUEST_TIMEOUT) as http:
                done = asyncio.Event()
                chaos = asyncio.ensure_future(_nemesis(
                    net, servers, random.Random(seed), faults, done, watch, injected, backend,
                    program, http))

                def paced(plan: ClientPlan) -> Any:
                    call = _caller(plan, servers, http, watch)  # type: ignore[arg-type]
                    jitter = random.Random(seed * 1_000 + plan.client)

                    async def paced_call(obj: str, method: str, args: tuple[Any, ...]) -> Any:
                        await asyncio.sleep(jitter.uniform(0, 2 * pace))
                        return await call(obj, method, args)

                    return paced_call

                try:
                    await asyncio.gather(*(
                        run_client(p, paced(p), rec, id_from_name(NAMESPACE, p.object).hex,
                                   new_process=rec.new_process) for p in program.clients))
                finally:
                    done.set()
                    await chaos

        asyncio.run(main())
    finally:
        net.heal()
        _each(servers, _HostServer.stop)
    return time.monotonic_ns()


def _each(servers: list[_HostServer], step: Callable[[_HostServer], None]) -> None:
    """*step* on every server at once (threads); the first error, once all are done."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(servers)) as pool:
        futures = [pool.submit(step, s) for s in servers]
    for f in futures:
        f.result()


def describe(result: ClusterRunResult) -> str:
    """The figures of a run, one line each."""
    faults = ", ".join(f"{k} {v}" for k, v in sorted(result.injected.items())) or "none"
    return "\n".join([
        f"cluster: {result.hosts} hosts, {len(result.history.ops())} ops checked, "
        f"verdict {result.check.verdict}, {len(result.check.anomalies)} anomalies",
        f"faults injected: {faults}",
        f"netem (latency, loss): {'yes' if result.netem else 'not in this kernel; drops only'}",
        f"answers by a host after its lease ran out while cut from storage: "
        f"{result.stale_answers} (of {result.probes} probe reads answered by cut hosts)",
        f"refusals by cut hosts that lost their lease: {result.refusals}; "
        f"{result.cuts_refused} of {result.cuts} cuts refused, the first refusal at most "
        f"{'-' if result.first_refusal is None else f'{result.first_refusal:.2f}'} s after "
        f"the cut (lease {LEASE_TTL:g} s, takeover from {TAKEOVER:g} s); probe outcomes "
        f"{dict(sorted(result.probe_outcomes.items()))}",
        f"requests answered {result.requests} ({result.forwarded} forwarded); other outcomes "
        f"{dict(sorted(result.statuses.items()))}",
    ])


def passed(result: ClusterRunResult) -> bool:
    """Whether a run holds every promise: a linearizable history, no answer after a lost
    lease, and a refusal from every cut owner no later than :data:`TAKEOVER` after its cut."""
    return (result.check.verdict == "ok" and result.stale_answers == 0
            and result.cuts_refused == result.cuts
            and (result.first_refusal is None or result.first_refusal <= TAKEOVER))


def summary_json(result: ClusterRunResult, seed: int) -> dict[str, Any]:
    """The figures of a run, JSON-ready."""
    return {"seed": seed, "hosts": result.hosts, "ops": len(result.history.ops()),
            "verdict": result.check.verdict, "anomalies": len(result.check.anomalies),
            "faults": dict(sorted(result.injected.items())), "netem": result.netem,
            "stale_answers": result.stale_answers, "probe_answers": result.probes,
            "refusals": result.refusals, "cuts": result.cuts,
            "cuts_refused": result.cuts_refused, "first_refusal_s": result.first_refusal,
            "lease_ttl_s": LEASE_TTL, "takeover_s": TAKEOVER, "requests": result.requests,
            "forwarded": result.forwarded, "passed": passed(result)}


def cluster_command(*, storage: str = "postgres", seed: int = 0, ops: int | None = None,
                    seconds: float | None = None, depth: str = "default",
                    faults: str | None = None, mutant: str | None = None,
                    as_json: bool = False, history_out: Path | None = None,
                    out: Callable[[str], None] = print,
                    err: Callable[[str], None] = print) -> int:
    """``duro check --mode cluster``: run, print the figures; the exit code (0 ok, 1 a promise
    broken, 2 usage or setup error: not root, no namespaces, no PostgreSQL or moto).

    *depth* ``quick`` is one short run (150 ops, 20 s), ``default`` one run (300 ops, 30 s),
    ``thorough`` five seeds of 1,000 ops over 120 s each; *ops* and *seconds* override.
    """
    import json

    if depth not in ("quick", "default", "thorough"):
        err(f"error: unknown depth {depth!r}")
        return 2
    try:
        kinds = tuple(FAULTS if faults in (None, "", "all") else
                      [f.strip() for f in str(faults).split(",") if f.strip()])
        get_mutant(mutant, cluster=True)
    except ValueError as exc:
        err(f"error: {exc}")
        return 2
    why = available()
    if why is not None:
        err(f"error: duro check --mode cluster runs hosts in Linux network namespaces and "
            f"cannot here: {why}. Run it as root (e.g. `sudo duro check --mode cluster`) on "
            "Linux with iproute2 (the `ip` command); the other modes need neither.")
        return 2
    base = {"quick": (150, 20.0), "default": (300, 30.0), "thorough": (1000, 120.0)}[depth]
    n_ops, n_seconds = ops or base[0], seconds or base[1]
    seeds = [seed + i for i in range(5 if depth == "thorough" else 1)]
    bad = 0
    summaries: list[dict[str, Any]] = []
    for s in seeds:
        try:
            result = run_cluster(storage=storage, seed=s, ops=n_ops, duration=n_seconds,
                                 faults=kinds, mutant=mutant)
        except ConfigError as exc:
            err(f"error: {exc}")
            return 2
        if history_out is not None:
            result.history.dump(history_out if len(seeds) == 1
                                else history_out.with_suffix(f".{s}{history_out.suffix}"))
        summaries.append(summary_json(result, s))
        if not as_json:
            verdict = "ok" if passed(result) else "FAILED"
            out(f"seed {s} ({storage}): {verdict}\n{describe(result)}")
        bad += not passed(result)
    if as_json:
        out(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m duro.consistency.cluster_mode [--storage postgres|s3] [--seed N] [--ops N]
    [--seconds S] [--faults F,...] [--mutant NAME] [--quick | --thorough] [--json]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m duro.consistency.cluster_mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", type=int, default=None)
    parser.add_argument("--storage", choices=("postgres", "s3"), default="postgres")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--faults", default=None, help=f"some of {','.join(FAULTS)}")
    parser.add_argument("--mutant", default=None)
    parser.add_argument("--json", action="store_true")
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument("--quick", action="store_true", help="150 ops over 20 s")
    depth.add_argument("--thorough", action="store_true",
                       help="5 seeds of 1,000 ops over 120 s each")
    args = parser.parse_args(argv)
    return cluster_command(
        storage=args.storage, seed=args.seed, ops=args.ops, seconds=args.seconds,
        depth="quick" if args.quick else "thorough" if args.thorough else "default",
        faults=args.faults, mutant=args.mutant, as_json=args.json,
        err=lambda line: print(line, file=sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
