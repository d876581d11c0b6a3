"""Fault injection for the consistency suite, and sound bounds for the ops faults leave unknown.

Faults (``--faults kill,pause,errors,skew,gc-race``; all five by default):

* ``kill``: ``kill -9`` of a process that owns objects while its clients are writing
  (free-running mode, real OS processes on a shared backend); in deterministic mode an App is
  "killed" in-process: its pending backend calls never run and its clients stop.
  **kill -9 does not test power loss**: the killed process's writes that reached the OS are
  kept by the kernel; surviving a power cut rests on the backend's sync level (``sync=full``),
  which this suite does not exercise.
* ``pause``: ``SIGSTOP`` an owner past its lease, let another process take the object over,
  then ``SIGCONT`` it (the zombie owner); in deterministic mode the App's backend calls are held
  while the clock jumps past its lease.
* ``errors``: :class:`FaultyBackend` wraps the real backend (a :class:`ProxyBackend`) and makes
  a small fraction of calls fail, including a commit that *landed* and then reports a timeout
  (the outcome-unknown case), plus optional latency.
* ``skew`` (:func:`duro.consistency.races.skew_race`): two Apps on the backend whose wall
  clocks differ by far more than the drift margin; the one ahead takes the object over while
  the other still believes its lease valid and keeps writing. The old owner must be fenced and
  no acknowledged write lost. Needs a backend shared between Apps (not ``memory://``).
* ``gc-race`` (:func:`duro.consistency.races.zombie_race`): an owner that never stops
  committing races a takeover at the backend API; on a backend that garbage-collects its log
  (S3) this races the new owner's fence against the old owner's appends *and* its GC
  (issue 20; unless the URL sets ``checkpoint_batches``, the race checkpoints after every
  batch, so GC runs inside it). On other shared backends it is the zombie takeover without
  GC, and the report says so; on a backend that is not shared it is skipped, and the report
  says why.

``skew`` and ``gc-race`` run as probes before the histories (:func:`race_probes`), with trials
by depth (:data:`RACE_TRIALS`); their outcome is a row of the report's ``probes`` line.

Bounds (:func:`bound_infos`). An op whose outcome is unknown is recorded ``info``; left
unbounded it may take effect at any later time, which is sound but makes the search slow. The
bounds used here are sound:

* an op that failed with ``ObjectReset``/``Fenced`` ran its turn on an owner whose epoch was at
  most the newest epoch acquired before the client heard of the reset (acquires are logged by
  :class:`AcquireLog` the moment the backend grants them). Its writes can only land in a commit
  under that epoch, and the backend refuses those once a newer epoch is acquired (on S3,
  acquiring includes writing the fence record, i.e. recovery). So it took effect no later than
  the first newer acquire;
* an op whose serving process was killed took effect before that process was reaped — used in
  deterministic mode, where a client's op is served by its own App only;
* every other unknown op (lost connection, timeout, an op of a killed process that may have
  been forwarded elsewhere) is bounded by the end of the run: all Apps closed or reaped.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from duro.backends._proxy import ProxyBackend
from duro.backends.base import (
    AcquireOp,
    Backend,
    Batch,
    CommitOp,
    Lease,
    Loaded,
    ObjectRef,
    WriteOp,
)
from duro.consistency.history import Event, History
from duro.consistency.workloads import RESET_ERRORS
from duro.errors import BackendUnavailable

__all__ = [
    "FAULTS",
    "RACE_FAULTS",
    "RACE_TRIALS",
    "AcquireLog",
    "FaultyBackend",
    "bound_infos",
    "parse_faults",
    "race_probes",
]

FAULTS: Final = ("kill", "pause", "errors", "skew", "gc-race")
RACE_FAULTS: Final = ("skew", "gc-race")
"""The faults that run as probes (:func:`race_probes`), not inside the histories."""
RACE_TRIALS: Final = {"quick": {"skew": 1, "gc-race": 4}, "default": {"skew": 2, "gc-race": 8},
                      "thorough": {"skew": 10, "gc-race": 50}}
"""Trials of each race fault per depth."""


def parse_faults(spec: str | Iterable[str] | None) -> frozenset[str]:
    """``"kill,pause"`` → ``{"kill", "pause"}``; ``"none"``/empty → no faults."""
    if spec is None:
        return frozenset()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = {s.strip() for s in items if s.strip() and s.strip() != "none"}
    bad = sorted(names - set(FAULTS))
    if bad:
        raise ValueError(f"unknown fault(s) {', '.join(bad)}; known: {', '.join(FAULTS)}")
    return frozenset(names)


class AcquireLog(ProxyBackend):
    """Logs every lease the backend grants: ``(time, object hex id, epoch)``.

    *clock* stamps the grant (the recorder's clock: monotonic ns, or the scheduler's step);
    the stamp is taken before the runtime can use the lease, so nothing served under an epoch
    happens before its stamp. *sink* also receives each entry (e.g. to append to a file).
    """

    def __init__(self, inner: Backend, clock: Callable[[], int],
                 sink: Callable[[int, str, int], None] | None = None) -> None:
        super().__init__(inner)
        self._clock = clock
        self._sink = sink
        self._lock = threading.Lock()
        self.entries: list[tuple[int, str, int]] = []

    def acquire(self, ref: ObjectRef, *, owner: str, address: str | None, now: float,
                until: float, name: str | None = None) -> Lease:
        lease = super().acquire(ref, owner=owner, address=address, now=now, until=until,
                                name=name)
        self._granted(ref, lease)
        return lease

    def commit_many(self, ops: Sequence[WriteOp]) -> list[object]:
        out = self.inner.commit_many(ops)
        for op, res in zip(ops, out, strict=True):
            if isinstance(op, AcquireOp) and isinstance(res, Lease | Loaded):
                self._granted(op.ref, res if isinstance(res, Lease) else res.lease)
        return out

    def _granted(self, ref: ObjectRef, lease: Lease) -> None:
        with self._lock:
            t = self._clock()
            self.entries.append((t, ref.id, lease.epoch))
            if self._sink is not None:
                self._sink(t, ref.id, lease.epoch)


class FaultyBackend(ProxyBackend):
    """Makes a fraction *rate* of backend calls fail, deterministically for a given *seed*.

    Kinds (counted in ``injected``): ``commit-before`` (refused before anything was sent),
    ``commit-after`` (the batch landed, then a timeout is reported: the outcome-unknown case),
    ``read`` (``get_many``/``scan`` fail), ``renew`` and ``acquire-after`` (the lease was
    granted, then a timeout is reported). *latency* adds up to that many seconds to a call
    (free-running mode only; the deterministic scheduler already chooses the order).
    """

    def __init__(self, inner: Backend, *, rate: float = 0.03, seed: int = 0,
                 latency: float = 0.0) -> None:
        super().__init__(inner)
        self.rate = rate
        self.latency = latency
        self.calls = 0
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.enabled = True

    def _roll(self, kinds: Sequence[str]) -> str | None:
        with self._lock:
            self.calls += 1
            delay = self._rng.uniform(0, self.latency) if self.latency else 0.0
            hit = self.enabled and self._rng.random() < self.rate
            kind = kinds[self._rng.randrange(len(kinds))] if hit else None
            if kind is not None:
                self.injected[kind] += 1
        if delay:
            time.sleep(delay)
        return kind

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        kind = self._roll(("commit-before", "commit-after"))
        if kind == "commit-before":
            raise BackendUnavailable("injected fault: commit failed before it was sent")
        super().commit(ref, epoch, batch)
        if kind == "commit-after":
            raise BackendUnavailable("injected fault: timeout after the commit landed")

    def commit_many(self, ops: Sequence[WriteOp]) -> list[object]:
        """The same faults per op as :meth:`commit` and :meth:`acquire`; the ops not refused
        before sending still share the real backend's group transaction."""
        kinds: list[str | None] = []
        for op in ops:
            if isinstance(op, CommitOp):
                kinds.append(self._roll(("commit-before", "commit-after")))
            elif isinstance(op, AcquireOp):
                kinds.append(self._roll(("acquire-after",)))
            else:
                kinds.append(None)
        out: list[object] = [
            BackendUnavailable("injected fault: commit failed before it was sent")
            if kind == "commit-before" else None for kind in kinds]
        sent = [i for i, kind in enumerate(kinds) if kind != "commit-before"]
        got = self.inner.commit_many([ops[i] for i in sent]) if sent else []
        for i, res in zip(sent, got, strict=True):
            if kinds[i] is not None and not isinstance(res, BaseException):
                res = BackendUnavailable(f"injected fault: timeout after the {kinds[i]} landed")
            out[i] = res
        return out

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        if self._roll(("read",)):
            raise BackendUnavailable("injected fault: read failed")
        return super().get_many(ref, keys)

    def scan(self, ref: ObjectRef, lo: bytes | None, hi: bytes | None, *, reverse: bool = False,
             limit: int | None = None) -> list[tuple[bytes, bytes]]:
        if self._roll(("read",)):
            raise BackendUnavailable("injected fault: scan failed")
        return super().scan(ref, lo, hi, reverse=reverse, limit=limit)

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        if self._roll(("renew",)):
            raise BackendUnavailable("injected fault: renew failed")
        super().renew(ref, epoch, until)

    def acquire(self, ref: ObjectRef, *, owner: str, address: str | None, now: float,
                until: float, name: str | None = None) -> Lease:
        kind = self._roll(("acquire-after",))
        lease = super().acquire(ref, owner=owner, address=address, now=now, until=until,
                                name=name)
        if kind:
            raise BackendUnavailable("injected fault: timeout after the lease was granted")
        return lease

    @property
    def total_injected(self) -> int:
        """How many faults were injected."""
        return sum(self.injected.values())


def _with_bound(ev: Event, bound: int) -> Event:
    extra = dict(ev.extra)
    extra["bound"] = max(bound, ev.time)
    return Event(ev.process, ev.type, ev.f, ev.object, ev.key, ev.value, ev.time, extra)


def bound_infos(history: History, acquires: Iterable[tuple[int, str, int]], *,
                object_ids: dict[str, str] | None = None, end: int | None = None,
                killed: dict[int, int] | None = None) -> History:
    """Add sound ``bound`` fields to the history's unbounded ``info`` ops (module docstring).

    *acquires*: ``(time, object hex id, epoch)`` grants; *object_ids* maps the history's object
    names to hex IDs (identity if None). *end*: a time after which no op of the run can take
    effect (every App closed or reaped); open invokes are completed as ``info`` at *end*.
    *killed*: process number → bound for ops of clients whose serving App was killed.
    """
    by_obj: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for t, oid, epoch in acquires:
        by_obj[oid].append((t, epoch))
    for v in by_obj.values():
        v.sort()
    killed = killed or {}

    def epoch_bound(obj: str, tc: int) -> int | None:
        grants = by_obj.get((object_ids or {}).get(obj, obj), [])
        times = [t for t, _ in grants]
        i = bisect.bisect_right(times, tc)
        newest = max((e for _, e in grants[:i]), default=0)
        return next((t for t, e in grants[i:] if e > newest), None)

    out: list[Event] = []
    open_: dict[int, Event] = {}
    for ev in history.events:
        if ev.type == "invoke":
            open_[ev.process] = ev
        else:
            open_.pop(ev.process, None)
        if ev.type == "info" and ev.bound is None:
            b: int | None = None
            if ev.process in killed:
                b = killed[ev.process]
            elif ev.extra.get("error") in RESET_ERRORS:
                b = epoch_bound(ev.object, ev.time)
            if b is None:
                b = end
            if b is not None:
                ev = _with_bound(ev, b)
        out.append(ev)
    if end is not None:
        last = out[-1].time if out else end
        t_end = max(end, last)
        for p, inv in open_.items():
            b = killed.get(p, t_end)
            out.append(Event(p, "info", inv.f, inv.object, inv.key, None, t_end,
                             {"bound": max(b, inv.time), "error": "open at end"}))
    return History(out, source=history.source)


def race_probes(url: str, faults: Iterable[str], *, depth: str = "default",
                seed: int = 0) -> list[tuple[str, str, int, list[str]]]:
    """Run the race faults among *faults* against the backend at *url*.

    Returns one ``(fault, status, trials, failures)`` per race fault asked for: *status* is
    ``ok``, ``ok (...)`` with what the fault could not exercise on this backend, ``FAILED``,
    or ``skipped: why`` when it does not apply. A race that raises is a failure, reported with
    the exception's type and message, never a traceback.
    """
    from duro.backends import open_backend
    from duro.consistency import races

    asked = [f for f in RACE_FAULTS if f in set(faults)]
    if not asked:
        return []
    probe = open_backend(url)
    try:
        shared = probe.multi_process
        scheme = probe.scheme
        collects = bool(getattr(probe, "garbage_collects_log", False))
    finally:
        probe.close()
    trials = RACE_TRIALS.get(depth, RACE_TRIALS["default"])
    tag = f"{seed:x}{random.getrandbits(32):08x}"
    out: list[tuple[str, str, int, list[str]]] = []
    for fault in asked:
        if not shared:
            out.append((fault, f"skipped: {scheme}:// is not shared between Apps or processes, "
                        "so no second owner can race the first", 0, []))
            continue
        n = trials[fault]
        try:
            if fault == "skew":
                report = races.skew_race(url, trials=n, prefix=f"chk{tag}-", cleanup=True)
            else:
                race_url = url
                if collects and "checkpoint_batches=" not in url:
                    # checkpoint (and so collect) after every batch: GC runs inside the race
                    race_url += ("&" if "?" in url else "?") + "checkpoint_batches=1"
                report = races.zombie_race(race_url, trials=n, namespace=f"DuroCheckRace{tag}",
                                           cleanup=True)
        except Exception as exc:  # noqa: BLE001 - a broken backend's raw error: report it, do not crash
            out.append((fault, "FAILED", n, [f"the race raised {type(exc).__name__}: {exc}"]))
            continue
        status = "ok" if not report.failures else "FAILED"
        if status == "ok" and fault == "gc-race" and not collects:
            status = f"ok (zombie takeover only: {scheme}:// does not garbage-collect a log)"
        out.append((fault, status, report.trials, report.failures))
    return out
