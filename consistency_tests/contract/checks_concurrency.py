"""Contract checks under concurrency: atomic batches for readers in threads and in OS
processes, concurrent commits and acquires, and a cross-process read-modify-write counter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from duro.backends import Batch, Lease, LeaseHeld
from duro.consistency.contract.context import (
    T0,
    CheckContext,
    assert_lease,
    contract_check,
)

__all__: list[str] = []

_NKEYS = 12


@contextmanager
def _fast_thread_switches() -> Iterator[None]:
    """Switch threads every 10 µs, so a reader runs between any two steps of a commit."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _torn(seen: list[tuple[bytes, bytes]], nkeys: int) -> bool:
    return len({v for _, v in seen}) != 1 or len(seen) != nkeys


@contract_check("atomicity")
def check_batch_is_atomic_for_thread_readers(ctx: CheckContext) -> None:
    """Readers in other threads never see half of a multi-key batch."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    keys = [b"k%02d" % i for i in range(_NKEYS)]
    b.commit(ref, epoch, Batch(puts=dict.fromkeys(keys, b"0")))
    # at least `rounds` batches and at least `min_s` of them (an in-process store commits in
    # microseconds, so a torn window is short), at most `limit_s`
    rounds, min_s, limit_s = ctx.n(150, 30), 1.0 * ctx.scale, 10.0 * ctx.scale
    torn: list[object] = []
    reads = [0]
    done = threading.Event()
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not done.is_set():
                got = sorted(b.get_many(ref, keys).items())
                rows = b.scan(ref, None, None)
                reads[0] += 2
                torn.extend(s for s in (got, rows) if _torn(s, len(keys)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the checking thread below
            failures.append(exc)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    written = 0
    with _fast_thread_switches():
        for t in threads:
            t.start()
        try:
            start = time.monotonic()
            for i in range(1, 10_000_000):
                b.commit(ref, epoch, Batch(puts=dict.fromkeys(keys, b"%d" % i)))
                written = i
                elapsed = time.monotonic() - start
                if torn or failures or elapsed > limit_s or (i >= rounds and elapsed >= min_s):
                    break
        finally:
            done.set()
            for t in threads:
                t.join(timeout=60)
    if failures:
        raise failures[0]
    assert not torn, (f"a reader thread saw half a batch ({len(torn)} torn of {reads[0]} "
                      f"reads), e.g. {torn[0]!r:.300}")
    assert b.get_many(ref, keys) == dict.fromkeys(keys, b"%d" % written), "last batch lost"


@contract_check("atomicity", needs="multi_process")
def check_batch_is_atomic_for_process_readers(ctx: CheckContext) -> None:
    """Readers in other OS processes never see half of a multi-key batch."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    keys = [b"k%02d" % i for i in range(_NKEYS)]
    b.commit(ref, epoch, Batch(puts=dict.fromkeys(keys, b"0")))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "duro.consistency.contract._reader", ctx.url, ref.namespace,
         ref.id, str(_NKEYS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=dict(os.environ)) for _ in range(2)]
    results: list[dict[str, Any]] = []
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                _, err = p.communicate(timeout=60)
                raise AssertionError(f"reader process did not start: {line!r} {err[-2000:]}")
        rounds, limit_s = ctx.n(150, 40), 3.0 * ctx.scale
        deadline = time.monotonic() + limit_s
        for i in range(1, rounds + 1):
            b.commit(ref, epoch, Batch(puts=dict.fromkeys(keys, b"%d" % i)))
            if time.monotonic() > deadline:
                break
        b.commit(ref, epoch, Batch(puts=dict.fromkeys(keys, b"stop")))
        for p in procs:
            out, err = p.communicate(input="", timeout=120)
            assert p.returncode == 0, f"reader process failed: {err[-2000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    torn = sum(r["torn"] for r in results)
    reads = sum(r["reads"] for r in results)
    example = next((r["example"] for r in results if r["example"]), None)
    assert torn == 0, f"reader processes saw half a batch in {torn} of {reads} reads: {example}"
    assert all(r["stopped"] for r in results), \
        "a reader process never saw the writer's acknowledged last batch"


@contract_check("concurrency")
def check_threads_commit_to_separate_objects(ctx: CheckContext) -> None:
    """Threads committing to separate objects at once all land, each in its own object."""
    b = ctx.backend
    refs = [ctx.ref(f"o{i}", "Threads") for i in range(4)]
    epochs = [ctx.acquire(r).epoch for r in refs]
    n = ctx.n(25, 8)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(n):
                b.commit(refs[i], epochs[i], Batch(puts={b"j%03d" % j: b"%d" % i}))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(refs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for i, r in enumerate(refs):
        assert ctx.scan_all(r) == [(b"j%03d" % j, b"%d" % i) for j in range(n)], \
            f"concurrent commits to separate objects: object {i} differs"


@contract_check("concurrency")
def check_threads_commit_to_one_object(ctx: CheckContext) -> None:
    """Concurrent batches of one owner on one object all land (they may be grouped)."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    n = ctx.n(20, 6)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(n):
                b.commit(ref, epoch, Batch(puts={b"t%d-%03d" % (i, j): b"v",
                                                 b"last-%d" % i: b"%d" % j}))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    expected = {b"t%d-%03d" % (i, j): b"v" for i in range(4) for j in range(n)}
    expected |= {b"last-%d" % i: b"%d" % (n - 1) for i in range(4)}
    assert dict(ctx.scan_all(ref)) == expected, "concurrent commits to one object lost writes"


@contract_check("concurrency")
def check_concurrent_acquires_have_one_winner(ctx: CheckContext) -> None:
    """Six threads acquiring one free lease at once: exactly one wins, one epoch higher."""
    b, ref = ctx.backend, ctx.ref()
    before = ctx.acquire(ref, "setup", until=T0 + 1).epoch
    barrier = threading.Barrier(6)
    won: list[Lease] = []
    held: list[Lease] = []
    errors: list[BaseException] = []

    def contender(i: int) -> None:
        barrier.wait()
        try:
            won.append(ctx.acquire(ref, f"C{i}", now=T0 + 2, until=T0 + 60))
        except LeaseHeld as exc:
            held.append(exc.lease)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert len(won) == 1 and len(held) == 5, f"{len(won)} winners, {len(held)} refused"
    assert won[0].epoch == before + 1, f"winner's epoch {won[0].epoch}, expected {before + 1}"
    assert all(h.epoch == won[0].epoch and h.owner == won[0].owner for h in held), \
        "LeaseHeld carried another lease than the winner's"
    assert_lease(b.read_lease(ref), won[0].epoch, won[0].owner, T0 + 60)


@contract_check("concurrency", needs="multi_process")
def check_processes_read_modify_write_one_counter(ctx: CheckContext) -> None:
    """OS processes take turns on one lease incrementing a counter: no lost or double update.

    Leases are about as short as the work, so owners lose them mid-cycle and get fenced.
    """
    from duro.consistency._mp_worker import COUNTER_KEY

    b, ref = ctx.backend, ctx.ref("counter", "Processes")
    slow = ctx.url.startswith("s3")
    lease, duration, hold = ("0.1", "3", "0.05") if slow else ("0.004", "1.5", "0.004")
    duration = str(float(duration) * min(ctx.scale, 2.0))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "duro.consistency._mp_worker", ctx.url, ref.namespace, ref.id,
         f"proc-{i}", "1000", lease, duration, hold],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ)) for i in range(3)]
    results: list[dict[str, Any]] = []
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                _, err = p.communicate(timeout=60)
                raise AssertionError(f"worker process did not start: {line!r} {err[-2000:]}")
        for p in procs:  # the start barrier: all open, then all go
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, f"worker process failed: {err[-2000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    committed = sorted(v for r in results for v in r["committed"])
    summary = {r["owner"]: {k: r[k] for k in ("lease_held", "fenced", "unavailable")}
               | {"commits": len(r["committed"])} for r in results}
    assert sum(r["unavailable"] for r in results) == 0, \
        f"BackendUnavailable under 3 processes: {summary} " \
        f"{[m for r in results for m in r['unavailable_messages']][:3]}"
    raw = b.get_many(ref, [COUNTER_KEY]).get(COUNTER_KEY)
    assert raw is not None and int(raw) == len(committed), \
        f"counter {raw!r} but {len(committed)} acknowledged increments: {summary}"
    assert committed == list(range(1, len(committed) + 1)), \
        f"increments lost or applied twice: {summary}"
