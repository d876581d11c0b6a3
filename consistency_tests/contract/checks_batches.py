"""Contract checks for write batches: order of application, delete_all, alarms, renewal."""

from __future__ import annotations

from duro.backends import Batch, LeaseHeld
from duro.backends.base import AcquireOp, CommitOp, Loaded, WriteOp
from duro.consistency.contract.context import (
    T0,
    CheckContext,
    assert_lease,
    close_to,
    contract_check,
    expect_raises,
)
from duro.errors import Fenced

__all__: list[str] = []


@contract_check("batches")
def check_batch_applies_delete_all_then_deletes_puts_then_alarm(ctx: CheckContext) -> None:
    """One batch applies delete_all, then deletes and puts, then the alarm."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    b.commit(ref, epoch, Batch(puts={b"old1": b"1", b"old2": b"2"}, alarm=T0 + 5))
    b.commit(ref, epoch, Batch(puts={b"new": b"n", b"old1": b"again"}, deletes={b"gone"},
                               delete_all=True, alarm=T0 + 9))
    assert ctx.scan_all(ref) == [(b"new", b"n"), (b"old1", b"again")], \
        f"delete_all + puts gave {ctx.scan_all(ref)!r}"
    assert close_to(b.get_alarm(ref), T0 + 9), f"alarm after delete_all + alarm: {b.get_alarm(ref)}"


@contract_check("batches")
def check_delete_all_removes_every_key(ctx: CheckContext) -> None:
    """delete_all removes every key (first, last, long, empty) and the alarm, nothing else."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    keys = [b"", b"a", b"m", b"z", b"\xf4\x8f\xbf\xbf", b"x" * 2048] + \
        [b"k%04d" % i for i in range(ctx.n(100, 20))]
    b.commit(ref, epoch, Batch(puts=dict.fromkeys(keys, b"v"), alarm=T0 + 5))
    assert [r for r, _ in b.due_alarms(T0 + 5)] == [ref], "alarm not in the due index"
    b.commit(ref, epoch, Batch(delete_all=True))
    left = [k for k, _ in ctx.scan_all(ref)]
    assert left == [], f"delete_all left {len(left)} keys: {left[:3]!r}"
    assert b.get_many(ref, keys) == {}, "delete_all: keys still readable by get_many"
    assert b.get_alarm(ref) is None, "delete_all left the alarm"
    assert b.due_alarms(T0 + 10**6) == [], "delete_all left the alarm in the due index"
    b.commit(ref, epoch, Batch(puts={b"after": b"1"}))
    assert ctx.scan_all(ref) == [(b"after", b"1")], "writing after delete_all"


@contract_check("alarms")
def check_alarm_set_unchanged_and_clear(ctx: CheckContext) -> None:
    """An alarm is set, kept by batches that leave it UNCHANGED, moved, and cleared."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    b.commit(ref, epoch, Batch(alarm=T0 + 1.25))
    assert close_to(b.get_alarm(ref), T0 + 1.25), f"alarm set: {b.get_alarm(ref)}"
    b.commit(ref, epoch, Batch(puts={b"k": b"v"}))  # alarm UNCHANGED by default
    assert close_to(b.get_alarm(ref), T0 + 1.25), "a batch without alarm changed the alarm"
    b.commit(ref, epoch, Batch(alarm=T0 + 0.5))  # replace with an earlier one
    assert close_to(b.get_alarm(ref), T0 + 0.5), "alarm moved earlier"
    due = b.due_alarms(T0 + 1)
    assert len(due) == 1 and due[0][0] == ref and close_to(due[0][1], T0 + 0.5), \
        f"due index after moving the alarm: {due}"
    b.commit(ref, epoch, Batch(puts={b"k2": b"v"}, alarm=T0 + 3))  # alarm together with puts
    assert close_to(b.get_alarm(ref), T0 + 3), "alarm set in a batch with puts was lost"
    assert [r for r, _ in b.due_alarms(T0 + 3)] == [ref], "due index after alarm with puts"
    b.commit(ref, epoch, Batch(alarm=None))
    assert b.get_alarm(ref) is None, "alarm=None did not clear"
    assert b.due_alarms(T0 + 10**6) == [], "cleared alarm still in the due index"
    assert ctx.scan_all(ref) == [(b"k", b"v"), (b"k2", b"v")], "alarm batches touched the data"


@contract_check("batches")
def check_batch_lease_until_renews(ctx: CheckContext) -> None:
    """Batch.lease_until renews the lease in the same commit, also in a write-less batch."""
    b, ref = ctx.backend, ctx.ref()
    lease = ctx.acquire(ref, until=T0 + 10)
    b.commit(ref, lease.epoch, Batch(puts={b"k": b"v"}, lease_until=T0 + 100))
    assert_lease(b.read_lease(ref), lease.epoch, "A", T0 + 100)
    with expect_raises(LeaseHeld, "acquire by B while the renewed lease is live"):
        ctx.acquire(ref, "B", now=T0 + 50)
    b.commit(ref, lease.epoch, Batch(lease_until=T0 + 200))  # a heartbeat batch
    assert_lease(b.read_lease(ref), lease.epoch, "A", T0 + 200)
    assert ctx.scan_all(ref) == [(b"k", b"v")], "renewal batches touched the data"


@contract_check("batches")
def check_commit_many_fences_each_op_alone(ctx: CheckContext) -> None:
    """commit_many: each op keeps its own guarantees; a fenced op or a held lease fails alone."""
    b = ctx.backend
    live, stale, held, fresh = (ctx.ref(n) for n in ("cm-live", "cm-stale", "cm-held",
                                                      "cm-fresh"))
    epoch = ctx.acquire(live, "A").epoch
    old = ctx.acquire(stale, "A", until=T0 + 10).epoch
    ctx.acquire(stale, "B", now=T0 + 11, until=T0 + 60)  # takeover: A's epoch is stale
    ctx.acquire(held, "B", until=T0 + 60)
    ops: list[WriteOp] = [
        CommitOp(live, epoch, Batch(puts={b"a": b"1", b"b": b"1"})),
        CommitOp(stale, old, Batch(puts={b"zombie": b"1"})),
        AcquireOp(held, "C", None, T0 + 20, T0 + 80),
        AcquireOp(fresh, "C", None, T0 + 20, T0 + 80, load=10),
        CommitOp(live, epoch, Batch(deletes={b"b"}, puts={b"c": b"2"})),
    ]
    results = b.commit_many(ops)
    assert len(results) == len(ops), f"commit_many gave {len(results)} results for {len(ops)} ops"
    assert results[0] is None and results[4] is None, f"live commits failed: {results!r}"
    assert isinstance(results[1], Fenced), f"a stale epoch's commit gave {results[1]!r}"
    assert isinstance(results[2], LeaseHeld), f"acquiring a held lease gave {results[2]!r}"
    got = results[3]
    assert isinstance(got, Loaded) and got.lease.owner == "C", f"a free acquire gave {got!r}"
    assert ctx.scan_all(stale) == [], f"the fenced op landed: {ctx.scan_all(stale)!r}"
    lease = b.read_lease(held)
    assert lease is not None and lease.owner == "B", f"a refused acquire changed {lease!r}"
    assert ctx.scan_all(live) == [(b"a", b"1"), (b"c", b"2")], \
        f"ops of one object in one commit_many, in order: {ctx.scan_all(live)!r}"
