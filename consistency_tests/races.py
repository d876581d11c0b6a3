"""Ownership races as faults: a zombie owner that never stops writing, and clock skew.

* :func:`zombie_race` (backend level): owner A commits in a thread, never stopping on its own,
  while B takes the object over (A's lease has run out by B's clock) and commits 5 keys. Every
  acknowledged write of A and B must survive, and A must be fenced. On S3 this races B's fence
  against A's appends and garbage collection (issue 20).
* :func:`skew_race` (App level): two Apps whose wall clocks differ by more than the drift
  margin; B's clock runs ahead, so B takes over while A still believes its lease valid.

Both are bounded (trials times at most *bound* writes) and return a :class:`RaceReport`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

from duro.backends import Backend, Batch, Lease, LeaseHeld, ObjectRef, open_backend
from duro.errors import DuroError, Fenced

__all__ = ["RaceReport", "skew_race", "zombie_race"]

B_WRITES: Final = 5
ZOMBIE_LIMIT: Final = 100_000
"""Commits the zombie owner may make in one trial, in all."""
ZOMBIE_SECONDS: Final = 60.0
"""Wall time one trial's zombie owner may run."""


@dataclass
class RaceReport:
    """Outcome of a race fault over several trials."""

    trials: int = 0
    failures: list[str] = field(default_factory=list)
    late_acks: list[int] = field(default_factory=list)
    """Per trial: commits of A acknowledged after B's takeover returned (only one may be)."""


def _drain(backend: Backend) -> None:
    drain = getattr(backend, "_drain", None)  # S3: wait for background checkpoints and GC
    if drain is not None:
        drain()


def _zombie_trial(url: str, a: Backend, b: Backend, ref: ObjectRef, bound: int,
                  report: RaceReport, cleanup: bool = False) -> None:
    la = a.acquire(ref, owner="A", address=None, now=100.0, until=110.0)
    acked: dict[bytes, bytes] = {}
    started = threading.Event()
    taken = threading.Event()
    outcome: list[BaseException] = []
    deadline = time.monotonic() + ZOMBIE_SECONDS

    def zombie() -> None:
        # A never stops on its own: it writes until it is fenced, at most *bound* commits
        # after B's acquire returned (and ZOMBIE_LIMIT / ZOMBIE_SECONDS in all)
        after = 0
        try:
            for i in range(ZOMBIE_LIMIT):
                key = b"a%06d" % i
                a.commit(ref, la.epoch, Batch(puts={key: key}))
                acked[key] = key
                if i == 2:
                    started.set()
                if taken.is_set():
                    after += 1
                if after >= bound or time.monotonic() > deadline:
                    break
        except BaseException as exc:  # noqa: BLE001 - re-raised by the checking thread
            outcome.append(exc)
        finally:
            started.set()

    t = threading.Thread(target=zombie, name="duro-zombie-owner")
    t.start()
    started.wait()
    lb: Lease | None = None
    before = len(acked)
    try:
        lb = b.acquire(ref, owner="B", address=None, now=111.0, until=130.0)
        taken.set()
        before = len(acked)
        for i in range(B_WRITES):
            key = b"b%d" % i
            b.commit(ref, lb.epoch, Batch(puts={key: key}))
            acked[key] = key
    except (DuroError, LeaseHeld) as exc:  # the new owner lost the object: a failure
        report.failures.append(f"{ref.id[-8:]}: the new owner failed while the old owner kept "
                               f"writing: {type(exc).__name__}: {exc}")
    finally:
        taken.set()
        t.join()
    _drain(a)
    _drain(b)
    report.late_acks.append(sum(1 for k in list(acked)[before:] if k.startswith(b"a")))
    fresh = open_backend(url)
    try:
        stored = dict(fresh.scan(ref, None, None))
    finally:
        fresh.close()
    lost = sorted(k.decode() for k in acked if stored.get(k) != acked[k])
    if not outcome or not isinstance(outcome[0], Fenced):
        report.failures.append(f"{ref.id[-8:]}: the old owner was never fenced "
                               f"({outcome!r:.80})")
    if lost:
        report.failures.append(f"{ref.id[-8:]}: lost acknowledged writes {lost}")
    if cleanup and lb is not None:
        try:
            b.delete_object(ref, lb.epoch)
        except DuroError as exc:
            report.failures.append(f"{ref.id[-8:]}: the new owner could not delete the object "
                                   f"afterwards: {exc}")


def zombie_race(url: str, *, trials: int = 50, bound: int = 400,
                namespace: str = "ZombieRace", cleanup: bool = False) -> RaceReport:
    """Run the zombie-owner race *trials* times on fresh objects of the backend at *url*
    (*cleanup*: the new owner deletes each object once it was checked)."""
    report = RaceReport()
    a, b = open_backend(url), open_backend(url)
    try:
        for n in range(trials):
            _zombie_trial(url, a, b, ObjectRef(namespace, f"{n + 1:064x}"), bound, report,
                          cleanup)
            report.trials += 1
    finally:
        a.close()
        b.close()
    return report


async def _skew_trial(url: str, name: str, skew: float, bound: int,
                      report: RaceReport) -> None:
    import duro
    from duro.clock import ManualClock

    class RaceKeys(duro.DurableObject):
        async def put(self, key: str, value: int) -> None:
            self.storage.put(key, value)

        async def items(self) -> dict[str, Any]:
            return dict(await self.storage.list())

    def app(clock: ManualClock) -> duro.App:
        return duro.App(url, clock=clock, listen=None, lease_ttl=10.0, drift_margin=1.0)

    clock_a = ManualClock()
    acked: dict[str, int] = {}
    async with app(clock_a) as app_a, app(ManualClock(start=clock_a.time() + skew)) as app_b:
        a = app_a.namespace(RaceKeys).get_by_name(name)
        await a.put("a0000", 0)
        acked["a0000"] = 0
        running = asyncio.Event()

        async def zombie() -> str:
            for i in range(1, bound):
                try:
                    await a.put(f"a{i:04d}", i)
                except duro.ObjectReset:
                    return "reset"
                acked[f"a{i:04d}"] = i
                running.set()
            return "never fenced"

        task = asyncio.ensure_future(zombie())
        await running.wait()
        b = app_b.namespace(RaceKeys).get_by_name(name)
        try:
            for i in range(B_WRITES):
                await b.put(f"b{i}", i)
                acked[f"b{i}"] = i
        except Exception as exc:  # noqa: BLE001 - the new owner lost the object to the old one: a failure
            report.failures.append(f"{name}: the new owner's write failed while the old owner "
                                   f"kept writing: {type(exc).__name__}: {exc}")
        outcome = await task
    async with app(ManualClock(start=clock_a.time() + 2 * skew)) as fresh:
        stored = await fresh.namespace(RaceKeys).get_by_name(name).items()
    lost = sorted(k for k, v in acked.items() if stored.get(k) != v)
    if outcome != "reset":
        report.failures.append(f"{name}: the old owner was {outcome}")
    if lost:
        report.failures.append(f"{name}: lost acknowledged writes {lost}")


def _wipe(url: str, namespace: str, name: str) -> None:
    """Delete the object *name* of *namespace* a race left behind (our own namespace: a lease
    still held by a closed App of the race is taken over)."""
    from duro.ids import id_from_name

    ref = ObjectRef(namespace, id_from_name(namespace, name).hex)
    backend = open_backend(url)
    try:
        if backend.read_lease(ref) is None:
            return
        lease = backend.acquire(ref, owner="duro-check", address=None, now=math.inf,
                                until=time.time() + 5)
        backend.delete_object(ref, lease.epoch)
        backend.release(ref, lease.epoch)
    finally:
        backend.close()


def skew_race(url: str, *, trials: int = 10, skew: float = 1000.0,
              bound: int = 400, prefix: str = "", cleanup: bool = False) -> RaceReport:
    """Run the clock-skew race *trials* times; B's clock is *skew* seconds ahead of A's
    (objects named ``<prefix>skew<n>`` in namespace ``RaceKeys``; *cleanup*: deleted after
    each trial was checked)."""
    report = RaceReport()
    for n in range(trials):
        name = f"{prefix}skew{n}"
        asyncio.run(_skew_trial(url, name, skew, bound, report))
        report.trials += 1
        if cleanup:
            try:
                _wipe(url, "RaceKeys", name)
            except (DuroError, LeaseHeld) as exc:
                report.failures.append(f"{name}: could not delete the object afterwards: {exc}")
    return report
