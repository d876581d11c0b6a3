"""The runner behind ``duro check``: the linearizability stage against one backend URL.

:func:`run_check` first runs the targeted probes (:mod:`duro.consistency.probes`: a takeover
from a paused owner whose stale commit must be refused, and kill -9 inside multi-key commits),
then generates one program per history from ``seed + i``, runs it deterministically
(:mod:`duro.consistency.scheduler`) or free-running (:mod:`duro.consistency.freerun`), checks
it (:func:`duro.consistency.checker.check_history`, 30 s hard limit per history, past which
the verdict is ``unknown``) and stops at the first anomaly, which it then tries to reproduce
in smaller runs for a witness of at most 10 ops. It shows a rich progress bar and returns a
:class:`CheckSummary`: histories, ops, objects, median overlap of ops per object, faults
injected by kind, probe results, backend calls by method, anomalies, unknown verdicts,
checker time p50/p99, wall time by phase, and the seeds to replay.

Every history reaches the backend (:func:`history_shape`, from the seed): the workloads mix
a large key set (more keys than activation loads with its one scan), many objects whose IDs
share long prefixes, and the small contended keys; ranges of every shape, get_many,
delete_all and the alarm; each App has a small cache or activation scan, objects are evicted
at random between ops, and the backend is closed and reopened before the final reads.
The faults are ``kill,pause,errors,skew,gc-race`` unless *faults* says otherwise; ``skew``
and ``gc-race`` run as probes after the fencing and crash probes
(:mod:`duro.consistency.faults`). *depth* (``quick``, ``default``, ``thorough``) trades time
for depth (:data:`DEPTHS`).

Modes: ``deterministic``, ``tasks``, ``threads``, ``processes``, ``http`` (clients over HTTP
against two ``duro serve`` processes, :mod:`duro.consistency.http_mode`), or ``mixed`` (the
default): three deterministic histories for each free-running one, which runs in ``processes``
when ``kill``/``pause`` are asked for and the backend is shared between processes, else
``tasks``.

Objects are named after the history's seed (``s<seed>-obj<i>``) in namespace ``KV``; any state a
previous run left under those names is deleted first, so a seed replays byte for byte.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from duro.backends import Backend, open_backend
from duro.backends._proxy import CountingBackend
from duro.consistency.checker import CheckResult, check_history
from duro.consistency.faults import parse_faults, race_probes
from duro.consistency.freerun import run_free
from duro.consistency.history import History
from duro.consistency.http_mode import HttpRunResult, absolute_url, run_http
from duro.consistency.mutants import Mutant, get_mutant
from duro.consistency.probes import ProbeResult, crash_probe, fencing_probe, wipe_names
from duro.consistency.scheduler import RandomChooser, RunResult, run_deterministic
from duro.consistency.workloads import BIG_KEYS, Program, random_program
from duro.storage import StorageLimits

__all__ = [
    "CHECK_TIME_LIMIT",
    "DEFAULT_FAULTS",
    "DEPTHS",
    "MODES",
    "CheckSummary",
    "Counts",
    "Depth",
    "Shape",
    "history_shape",
    "overlap",
    "run_check",
    "scale_counts",
    "wipe_objects",
]

CHECK_TIME_LIMIT: Final = 30.0
MODES: Final = ("mixed", "deterministic", "tasks", "threads", "processes", "http")


@dataclass
class CheckSummary:
    """What a ``duro check`` run found (``verdict``: ``ok`` | ``anomaly`` | ``unknown``)."""

    backend: str
    verdict: str = "ok"
    histories: int = 0
    deterministic: int = 0
    free_running: int = 0
    ops: int = 0
    objects: int = 0
    median_overlap: float = 0.0
    faults: dict[str, int] = field(default_factory=lambda: {"kill": 0, "pause": 0, "errors": 0})
    """Faults injected, by kind: ``kill`` (kill -9 of an owner), ``pause`` (zombie owner),
    ``errors`` (backend errors), ``evict`` (an object evicted between ops), ``reopen`` (the
    backend closed and reopened before the final reads), ``takeover`` (the fencing probe's
    takeovers from a paused owner), ``kill-mid-commit`` (the crash probe's kills)."""
    depth: str = "default"
    probes: dict[str, str] = field(default_factory=dict)
    """Probe name (``fencing``, ``crash``) → ``ok``, ``FAILED`` or ``skipped: why``."""
    shapes: dict[str, int] = field(default_factory=dict)
    """Histories per shape (``large-keys``, ``many-objects``, ``small-keys``)."""
    backend_methods: dict[str, int] = field(default_factory=dict)
    """Backend calls made in this process, by method name."""
    witness_ops: int | None = None
    """Ops in the smallest anomaly witness reported (None without an anomaly witness)."""
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by phase: ``probes``, ``deterministic``, ``free-running``, ``check``."""
    backend_calls: int = 0
    fault_runs: int = 0
    kill_runs: int = 0
    anomalies: int = 0
    unknowns: int = 0
    hung: int = 0
    infos: int = 0
    check_p50_ms: float = 0.0
    check_p99_ms: float = 0.0
    check_max_s: float = 0.0
    seconds: float = 0.0
    simulated_seconds: float = 0.0
    seeds: list[int] = field(default_factory=list)
    failing_seed: int | None = None
    failing_mode: str | None = None
    explanation: str = ""
    mutant: str | None = None
    http_requests: int = 0
    """Requests answered 200 in ``http`` mode."""
    http_forwarded: int = 0
    """Of those, requests a server forwarded to the owning process."""

    @property
    def exit_code(self) -> int:
        """0 linearizable, 1 anomaly, 3 unknown (2 is for usage/setup errors, raised earlier)."""
        return {"ok": 0, "anomaly": 1, "unknown": 3}[self.verdict]

    def table(self) -> list[tuple[str, str]]:
        """Rows of the printed summary."""
        f = self.faults
        err_rate = f["errors"] / self.backend_calls if self.backend_calls else 0.0
        seeds = (f"{self.seeds[0]}..{self.seeds[-1]}" if len(self.seeds) > 1
                 else str(self.seeds[0]) if self.seeds else "-")
        return [
            ("verdict", self.verdict),
            ("backend", self.backend + (f"  (mutant {self.mutant})" if self.mutant else "")
                        + f"  depth {self.depth}"),
            ("histories", f"{self.histories} ({self.deterministic} deterministic, "
                          f"{self.free_running} free-running)"),
            ("ops checked", str(self.ops)),
            ("objects", str(self.objects)),
            ("median overlap", f"{self.median_overlap:.1f} ops in flight per object"),
            ("faults", f"kill -9 {f['kill']}, pause {f['pause']}, errors {f['errors']} "
                       f"({err_rate:.1%} of backend calls)"
                       + "".join(f", {k} {v}" for k, v in f.items()
                                 if k not in ("kill", "pause", "errors"))),
            *([("probes", ", ".join(f"{k} {v}" for k, v in self.probes.items()))]
              if self.probes else []),
            *([("shapes", ", ".join(f"{k} {v}" for k, v in self.shapes.items()))]
              if self.shapes else []),
            *([("backend calls", ", ".join(f"{k} {v}" for k, v in self.backend_methods.items()))]
              if self.backend_methods else []),
            ("fault runs", f"{self.fault_runs} ({self.kill_runs} with kill -9)"),
            *([("http requests", f"{self.http_requests} ({self.http_forwarded} forwarded, "
                                 f"{self.http_forwarded / self.http_requests:.0%})")]
              if self.http_requests else []),
            ("info ops", str(self.infos)),
            ("anomalies", str(self.anomalies)),
            ("unknown", str(self.unknowns)),
            ("never answered", str(self.hung)),
            ("check time", f"p50 {self.check_p50_ms:.1f} ms, p99 {self.check_p99_ms:.1f} ms, "
                           f"max {self.check_max_s:.2f} s (limit {CHECK_TIME_LIMIT:.0f} s)"),
            ("wall time", f"{self.seconds:.1f} s"
                          + (" (" + ", ".join(f"{k} {v:.1f} s"
                                              for k, v in self.phase_seconds.items()) + ")"
                             if self.phase_seconds else "")
                          + (f" (simulated {self.simulated_seconds:.0f} s of lease time)"
                             if self.simulated_seconds else "")),
            ("seeds", seeds + (f"; failing seed {self.failing_seed} ({self.failing_mode})"
                               if self.failing_seed is not None else "")),
        ]

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Counts:
    """How many histories the test suite runs per backend (see :func:`scale_counts`)."""

    deterministic: int
    tasks: int
    threads: int
    processes: int
    ops: int

    @property
    def free_running(self) -> int:
        """Free-running histories (tasks + threads + processes)."""
        return self.tasks + self.threads + self.processes


def scale_counts(backend: str, scale: str | None = None) -> Counts:
    """Per-backend history counts for ``DURO_CONSISTENCY_SCALE`` (``ci`` by default).

    ``ci``: ≥ 200 deterministic and ≥ 50 free-running histories per backend (s3: 20 and 5,
    moto being slow); ``full`` doubles them and runs s3 at the full counts too; ``quick`` is
    for development; a number multiplies the ``ci`` counts.
    """
    import os

    raw = (scale or os.environ.get("DURO_CONSISTENCY_SCALE") or "ci").strip().lower()
    factor = {"ci": 1.0, "full": 2.0, "quick": 0.1}.get(raw)
    if factor is None:
        try:
            factor = float(raw)
        except ValueError:
            raise ValueError(f"DURO_CONSISTENCY_SCALE must be ci, full, quick or a number, "
                             f"not {raw!r}") from None
    shared = backend != "memory"
    if backend == "s3" and raw != "full":
        base = Counts(20, 2, 1, 2, 120)
    elif shared:
        base = Counts(200, 20, 15, 15, 120)
    else:
        base = Counts(200, 25, 25, 0, 120)

    def n(x: int) -> int:
        return max(1 if x else 0, round(x * factor))

    return Counts(n(base.deterministic), n(base.tasks), n(base.threads), n(base.processes),
                  base.ops)


def overlap(history: History) -> float:
    """Median, over ops, of how many ops of the same object overlap it (itself included).

    1.0 means the ops of each object never overlapped (a sequential history proves little);
    the suite wants at least 2.
    """
    n_events = len(history.events)
    by_obj: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for op in history.ops():
        end = op.done if op.done is not None else n_events
        by_obj[op.object].append((op.call, end))
    counts: list[int] = []
    for spans in by_obj.values():
        calls = sorted(c for c, _ in spans)
        ends = sorted(e for _, e in spans)
        for c, e in spans:
            started_before_end = bisect.bisect_left(calls, e)  # calls before my end
            ended_before_start = bisect.bisect_left(ends, c)  # ends before my call
            counts.append(started_before_end - ended_before_start)
    return float(statistics.median(counts)) if counts else 0.0


def wipe_objects(backend: Backend, program: Program) -> None:
    """Delete whatever an earlier run left under this program's object names."""
    wipe_names(backend, program.objects)


def _mode_for(i: int, mode: str, backend: Backend, faults: frozenset[str], processes: int,
              os_processes: int | None = None) -> str:
    """History *i*'s mode. In ``mixed`` mode every fourth history runs free; the first
    *os_processes* of those (all if None) in OS processes when kill or pause is asked for."""
    if mode != "mixed":
        return mode
    if i % 4 != 3:
        return "deterministic"
    if (faults & {"kill", "pause"} and backend.multi_process and processes > 1
            and (os_processes is None or i // 4 < os_processes)):
        return "processes"
    return "tasks" if i % 8 == 3 else "threads"


@dataclass(frozen=True)
class Depth:
    """How much a run does at one depth (``quick``, ``default``, ``thorough``)."""

    histories: int
    crash_rounds: int
    fence_objects: int
    os_processes: int | None
    """Free-running histories run in OS processes (``mixed`` mode; None: all of them)."""


DEPTHS: Final = {"quick": Depth(8, 6, 1, 0), "default": Depth(16, 12, 2, 1),
                 "thorough": Depth(60, 32, 4, None)}
DEFAULT_FAULTS: Final = frozenset({"kill", "pause", "errors", "skew", "gc-race"})
CACHE_ENTRIES: Final = (2, 6, 24, 100_000)
PRELOAD_KEYS: Final = (1, 4, 32, 256)


@dataclass(frozen=True)
class Shape:
    """The kind of one history: key set, objects, clients, storage limits."""

    big: int
    objects: int
    shared_ids: int
    clients: int
    limits: StorageLimits

    @property
    def name(self) -> str:
        """``large-keys``, ``many-objects`` or ``small-keys``."""
        return ("large-keys" if self.big else "many-objects" if self.shared_ids
                else "small-keys")


def history_shape(seed: int, objects: int, clients: int, mode: str = "deterministic") -> Shape:
    """The shape of the history of *seed* (so ``--seed N --histories 1`` replays it): a large
    key set (beyond the activation scan), many objects with IDs sharing long prefixes, or the
    small contended set; and a small cache or activation scan, so reads reach the backend.
    Runs across OS processes (modes ``processes`` and ``http``) use the small set only: their
    faults strike at wall-clock times, while clients are still running."""
    rng = random.Random(seed * 7919 + 17)
    limits = StorageLimits(cache_entries=CACHE_ENTRIES[rng.randrange(len(CACHE_ENTRIES))],
                           preload_keys=PRELOAD_KEYS[rng.randrange(len(PRELOAD_KEYS))])
    kind = seed % 4 if mode not in ("processes", "http") else 2
    if kind == 0:
        return Shape(BIG_KEYS, objects, 0, clients, limits)
    if kind == 1:
        return Shape(0, max(objects, 4), 6, min(clients, 2), limits)
    return Shape(0, objects, 0, clients, limits)


def _add(d: dict[str, float], k: str, v: float) -> None:
    d[k] = round(d.get(k, 0.0) + v, 3)


def _counting(url: str, calls: Counter[str]) -> Backend:
    b = CountingBackend(open_backend(url))
    b.calls = calls
    return b


def _race_probes(url: str, seed: int, depth: str, faults: frozenset[str],
                 summary: CheckSummary) -> ProbeResult | None:
    """Run the race faults asked for (``skew``, ``gc-race``); the first that failed, or None.
    A fault that does not apply to the backend shows as ``skipped: why`` in the probes."""
    failed: ProbeResult | None = None
    for fault, status, trials, failures in race_probes(url, faults, depth=depth, seed=seed):
        summary.probes[fault] = status
        if trials:
            summary.faults[fault] = summary.faults.get(fault, 0) + trials
        if failures and failed is None:
            failed = ProbeResult(fault, False, f"{len(failures)} failure(s) in {trials} "
                                 f"trial(s): " + "; ".join(failures[:3]))
    return failed


def _probes(url: str, seed: int, depth: Depth, calls: Counter[str],
            summary: CheckSummary, mutant: Mutant | None,
            faults: frozenset[str] = frozenset(), depth_name: str = "default"
            ) -> ProbeResult | None:
    """Run the fencing and crash probes (only the fencing one for a mutant), then the race
    faults among *faults*; the first that failed, or None."""
    def opener() -> Backend:
        return _counting(url, calls)

    first = opener()
    persistent, shared = first.persistent, first.multi_process
    fence = fencing_probe(first, seed=seed, objects=depth.fence_objects,
                          reopen=opener if persistent else None,
                          wrap=mutant.wrap if mutant else None,
                          unsafe=mutant.unsafe if mutant else frozenset())
    first.close()
    summary.probes["fencing"] = "ok" if fence.ok else "FAILED"
    summary.faults["takeover"] = summary.faults.get("takeover", 0) + fence.counts["takeovers"]
    if not fence.ok:
        return fence
    if mutant is not None:
        return None
    if not (persistent and shared):
        summary.probes["crash"] = "skipped: the backend is not shared between processes"
    else:
        crash = crash_probe(opener, seed=seed, rounds=depth.crash_rounds)
        summary.probes["crash"] = "ok" if crash.ok else "FAILED"
        summary.faults["kill-mid-commit"] = crash.counts.get("kills", 0)
        if not crash.ok:
            return crash
    return _race_probes(url, seed, depth_name, faults, summary)


def run_check(backend_url: str, seed: int = 0, ops: int = 200, objects: int = 2,
              clients: int = 4, processes: int = 2, faults: str | frozenset[str] | None = None,
              mutant: str | None = None, history_out: str | Path | None = None,
              report: str | Path | None = None, *, histories: int | None = None,
              mode: str = "mixed", error_rate: float = 0.03, console: Console | None = None,
              progress: bool = True,
              depth: Literal["quick", "default", "thorough"] = "default",
              probes: bool = True, shrink: bool = True) -> CheckSummary:
    """Run the linearizability stage against *backend_url* (module docstring).

    *ops* per history, *objects* per history, *clients* per object (≤ 8), *processes* Apps or
    OS processes, *faults* ⊆ ``kill,pause,errors,skew,gc-race`` (None: all five; ``"none"``: none),
    *mutant* a name from :data:`duro.consistency.mutants.MUTANTS`. *depth* sets the number of
    histories (unless *histories* is given) and the probes' rounds; *probes* False skips the
    fencing and crash probes (they also do not run with a *mutant*); *shrink* False keeps
    the first anomaly's witness as found (else smaller runs look for a witness of at most
    :data:`WITNESS_GOAL` ops). *history_out* receives the
    first failing history (else the last one); *report* the summary (``.json``) or an HTML
    report of that history. Raises ``ValueError``/``ConfigError`` for bad settings (the
    CLI's exit 2).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if depth not in DEPTHS:
        raise ValueError(f"unknown depth {depth!r}; known: {', '.join(DEPTHS)}")
    prof = DEPTHS[depth]
    fault_set = DEFAULT_FAULTS if faults is None else parse_faults(faults)
    m = get_mutant(mutant)
    if m is not None:
        fault_set |= m.faults
        processes = max(processes, m.processes)
    n_histories = prof.histories if histories is None else histories
    if n_histories < 1:
        raise ValueError("histories must be at least 1")
    if mode == "http":
        backend_url = absolute_url(backend_url)  # the servers run elsewhere
    console = console or Console(stderr=True)
    summary = CheckSummary(backend_url, mutant=mutant, depth=depth)
    overlaps: list[float] = []
    check_times: list[float] = []
    kept: tuple[History, CheckResult] | None = None
    calls: Counter[str] = Counter()
    t0 = time.monotonic()
    probe = open_backend(backend_url)
    shared, persistent = probe.multi_process, probe.persistent
    probe.close()
    if m is None and (fault_set & {"kill", "pause"}) and not shared and mode == "processes":
        raise ValueError("kill and pause in processes mode need a backend shared between "
                         f"processes; {backend_url} is not")
    with Progress(TextColumn("[bold]duro check[/bold] {task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=not progress, transient=True) as bar:
        task = bar.add_task(backend_url, total=n_histories + 1)
        t_phase = time.monotonic()
        failed = (_probes(backend_url, seed, prof, calls, summary, m, fault_set, depth)
                  if probes else None)
        _add(summary.phase_seconds, "probes", time.monotonic() - t_phase)
        bar.advance(task)
        if failed is not None:  # the replay line reruns the probes
            summary.anomalies += 1
            summary.failing_seed, summary.failing_mode = seed, mode
            summary.explanation = f"{failed.name} probe failed: {failed.message}"
            if failed.history is not None and failed.check is not None:
                kept = (failed.history, _smallest_first(failed.check))
                summary.witness_ops = witness_size(failed.check)
        for i in range(n_histories if failed is None else 0):
            s = seed + i
            b = _counting(backend_url, calls)
            t_phase = time.monotonic()
            try:
                hmode = _mode_for(i, mode, b, fault_set, processes, prof.os_processes)
                shape = history_shape(s, objects, clients, hmode)
                program = random_program(s, objects=shape.objects, clients=shape.clients,
                                         ops=ops, processes=processes, prefix=f"s{s}-",
                                         rich=True, big=shape.big, shared_ids=shape.shared_ids)
                wipe_objects(b, program)
                reopen = ((lambda: _counting(backend_url, calls))
                          if persistent and hmode == "deterministic" else None)
                run = _run_one(program, backend_url, b, hmode, fault_set, s,
                               m.name if m else None, processes, error_rate, shape.limits,
                               reopen)
            finally:
                b.close()
            _add(summary.phase_seconds, "deterministic" if hmode == "deterministic"
                 else "free-running", time.monotonic() - t_phase)
            result = check_history(run.history, timeout=CHECK_TIME_LIMIT)
            _add(summary.phase_seconds, "check", result.seconds)
            summary.histories += 1
            summary.seeds.append(s)
            summary.shapes[shape.name] = summary.shapes.get(shape.name, 0) + 1
            if hmode == "deterministic":
                summary.deterministic += 1
            else:
                summary.free_running += 1
            summary.ops += result.ops
            summary.objects += result.objects
            summary.infos += sum(1 for op in run.history.ops() if op.outcome == "info")
            for k, v in run.faults.items():
                summary.faults[k] = summary.faults.get(k, 0) + v
            summary.backend_calls += run.backend_calls
            if any(run.faults.get(k) for k in ("kill", "pause", "errors")):
                summary.fault_runs += 1
            summary.kill_runs += bool(run.faults.get("kill"))
            summary.hung += run.hung
            if isinstance(run, HttpRunResult):
                summary.http_requests += run.requests
                summary.http_forwarded += run.forwarded
            summary.simulated_seconds += run.simulated_seconds
            overlaps.append(overlap(run.history))
            check_times.append(result.seconds)
            bad = result.verdict == "anomaly" or run.hung > 0
            if result.verdict == "unknown" or result.seconds > CHECK_TIME_LIMIT:
                summary.unknowns += 1
            kept = (run.history, result)
            bar.advance(task)
            if bad:
                summary.anomalies += 1
                summary.failing_seed, summary.failing_mode = s, hmode
                summary.explanation = result.explain() if result.anomalies else (
                    f"{run.hung} op(s) never answered: a liveness failure")
                if result.anomalies and hmode == "deterministic" and shrink:
                    t_phase = time.monotonic()
                    smaller = shrink_anomaly(
                        backend_url, s, result, processes=processes, faults=fault_set,
                        mutant=m.name if m else None, error_rate=error_rate,
                        limits=shape.limits, calls=calls)
                    _add(summary.phase_seconds, "shrink", time.monotonic() - t_phase)
                    if smaller is not None:
                        kept = (smaller[0], smaller[1])
                        summary.explanation = (smaller[2] + "\n" + smaller[1].explain()
                                               + "\n\nbefore shrinking: " + result.summary())
                summary.witness_ops = witness_size(_smallest_first(kept[1]))
                break
    t_phase = time.monotonic()
    names: list[str] = []
    for s in summary.seeds:  # leave nothing behind (the names of every shape)
        shape = history_shape(s, objects, clients)
        names += random_program(s, objects=shape.objects, clients=1, ops=1, prefix=f"s{s}-",
                                rich=True, shared_ids=shape.shared_ids).objects
    cleanup = open_backend(backend_url)
    try:
        with ThreadPoolExecutor(8) as pool:  # a remote store answers each call slowly
            list(pool.map(lambda n: wipe_names(cleanup, [n]), names))
    finally:
        cleanup.close()
    _add(summary.phase_seconds, "cleanup", time.monotonic() - t_phase)
    summary.backend_methods = dict(sorted(calls.items()))
    summary.seconds = time.monotonic() - t0
    summary.median_overlap = float(statistics.median(overlaps)) if overlaps else 0.0
    if check_times:
        ms = sorted(t * 1000 for t in check_times)
        summary.check_p50_ms = statistics.median(ms)
        summary.check_p99_ms = ms[min(len(ms) - 1, math.ceil(0.99 * len(ms)) - 1)]
        summary.check_max_s = max(check_times)
    summary.verdict = ("anomaly" if summary.anomalies else
                       "unknown" if summary.unknowns else "ok")
    if kept is not None:
        _write_outputs(kept, summary, history_out, report)
    return summary


SHRINK_TRIES: Final = ((1, 2, 12), (1, 2, 24), (1, 3, 24), (1, 2, 48), (1, 4, 48),
                       (1, 4, 96), (2, 4, 96))
"""(objects, clients, ops) of the smaller programs tried after an anomaly, smallest first."""
SHRINK_SEEDS: Final = 3
WITNESS_GOAL: Final = 10


def witness_size(result: CheckResult) -> int:
    """Ops in the smallest witness of *result* (a large number if it has none)."""
    return min((len(a.witness.ops) for a in result.anomalies), default=1 << 30)


def _smallest_first(result: CheckResult) -> CheckResult:
    result.anomalies.sort(key=lambda a: len(a.witness.ops))
    return result


def shrink_anomaly(url: str, seed: int, result: CheckResult, *, processes: int,
                   faults: frozenset[str], mutant: str | None, error_rate: float,
                   limits: StorageLimits, calls: Counter[str]
                   ) -> tuple[History, CheckResult, str] | None:
    """Look for the same anomaly in smaller deterministic runs (fewer objects, clients, ops;
    a few seeds derived from *seed*), smallest first, until a witness has at most
    :data:`WITNESS_GOAL` ops. Returns (history, result, how to get it) of the smallest witness
    found if it is smaller than *result*'s, else None."""
    best = witness_size(result)
    found: tuple[History, CheckResult, str] | None = None
    for n_obj, n_cli, n_ops in SHRINK_TRIES:
        if best <= WITNESS_GOAL:
            break
        for j in range(SHRINK_SEEDS):
            s2 = seed * 1_000 + 101 * (j + 1)
            program = random_program(s2, objects=n_obj, clients=n_cli, ops=n_ops,
                                     processes=processes, prefix=f"s{s2}-", rich=True)
            b = _counting(url, calls)
            try:
                wipe_objects(b, program)
                run = _run_one(program, url, b, "deterministic", faults, s2, mutant, processes,
                               error_rate, limits)
                wipe_objects(b, program)
            finally:
                b.close()
            r = check_history(run.history, timeout=CHECK_TIME_LIMIT)
            if r.verdict == "anomaly" and witness_size(r) < best:
                best = witness_size(r)
                how = (f"shrunk: the same kind of run with seed {s2}, {n_obj} object(s), "
                       f"{n_cli} clients, {n_ops} ops")
                found = (run.history, _smallest_first(r), how)
                break
    return found


def _run_one(program: Program, url: str, backend: Backend, mode: str, faults: frozenset[str],
             seed: int, mutant: str | None, processes: int, error_rate: float,
             limits: StorageLimits | None = None,
             reopen: Callable[[], Backend] | None = None) -> RunResult:
    m = get_mutant(mutant)
    if mode == "deterministic":
        return run_deterministic(program, backend, RandomChooser(seed), processes=processes,
                                 faults=faults, error_rate=error_rate, seed=seed,
                                 unsafe=m.unsafe if m else frozenset(),
                                 wrap=m.wrap if m else None, limits=limits, evict=True,
                                 reopen=reopen)
    if mode == "http":
        return run_http(program, url, faults=faults, error_rate=error_rate, seed=seed,
                        mutant=mutant, backend=backend, servers=max(2, processes))
    free_faults = faults if mode == "processes" else faults & {"errors"}
    return run_free(program, url, mode=mode, faults=free_faults, error_rate=error_rate,
                    seed=seed, mutant=mutant, backend=backend, limits=limits)


def _write_outputs(kept: tuple[History, CheckResult], summary: CheckSummary,
                   history_out: str | Path | None, report: str | Path | None) -> None:
    history, result = kept
    if history_out is not None:
        history.dump(history_out)
    if report is not None:
        path = Path(report)
        if path.suffix == ".json":
            path.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
        else:
            from duro.consistency.report import html_report

            title = f"duro check {summary.backend}"
            path.write_text(html_report(result, title=title), encoding="utf-8")
