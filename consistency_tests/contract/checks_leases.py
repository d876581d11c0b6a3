"""Contract checks for leases and fencing: acquire, renew, release, takeover, stale commits."""

from __future__ import annotations

import itertools

from duro.backends import Batch, LeaseHeld
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


@contract_check("leases")
def check_acquire_records_the_lease(ctx: CheckContext) -> None:
    """acquire returns and records epoch, owner, address and until."""
    b, ref = ctx.backend, ctx.ref()
    lease = ctx.acquire(ref, "A", until=T0 + 30, address="127.0.0.1:7001")
    assert lease.epoch >= 1, f"first epoch {lease.epoch} < 1"
    assert_lease(lease, lease.epoch, "A", T0 + 30, "127.0.0.1:7001")
    assert_lease(b.read_lease(ref), lease.epoch, "A", T0 + 30, "127.0.0.1:7001")


@contract_check("leases")
def check_acquire_bumps_epoch_strictly(ctx: CheckContext) -> None:
    """Every acquire (a reset by the same owner, or a takeover) gives a strictly greater epoch."""
    b, ref = ctx.backend, ctx.ref()
    epochs = [ctx.acquire(ref, "A", now=T0 + i, until=T0 + i + 5).epoch for i in range(4)]
    epochs.append(ctx.acquire(ref, "B", now=T0 + 100, until=T0 + 200).epoch)
    epochs.append(ctx.acquire(ref, "C", now=T0 + 300, until=T0 + 400).epoch)
    assert all(x < y for x, y in itertools.pairwise(epochs)), \
        f"epochs over resets and takeovers do not increase: {epochs}"
    assert_lease(b.read_lease(ref), epochs[-1], "C", T0 + 400)


@contract_check("leases")
def check_live_lease_blocks_others(ctx: CheckContext) -> None:
    """A live lease makes another owner's acquire raise LeaseHeld with the current lease."""
    b, ref = ctx.backend, ctx.ref()
    lease = ctx.acquire(ref, "A", until=T0 + 30, address="a:1")
    try:
        ctx.acquire(ref, "B", now=T0 + 29.5)
    except LeaseHeld as exc:
        assert_lease(exc.lease, lease.epoch, "A", T0 + 30, "a:1")
    else:
        raise AssertionError("acquire by B succeeded while A's lease was live")
    assert_lease(b.read_lease(ref), lease.epoch, "A", T0 + 30, "a:1")


@contract_check("leases")
def check_acquire_allowed_once_until_is_reached(ctx: CheckContext) -> None:
    """Once now >= until, another owner takes over with a greater epoch."""
    b, ref = ctx.backend, ctx.ref()
    a = ctx.acquire(ref, "A", until=T0 + 30)
    new = ctx.acquire(ref, "B", now=T0 + 30, until=T0 + 60)
    assert new.epoch > a.epoch, f"takeover epoch {new.epoch} is not above {a.epoch}"
    assert_lease(b.read_lease(ref), new.epoch, "B", T0 + 60)


@contract_check("leases")
def check_acquire_after_release(ctx: CheckContext) -> None:
    """release keeps the epoch and frees the lease; the next owner gets a greater epoch."""
    b, ref = ctx.backend, ctx.ref()
    a = ctx.acquire(ref, "A", until=T0 + 30)
    b.release(ref, a.epoch)
    released = b.read_lease(ref)
    assert released is not None and released.owner is None and released.epoch == a.epoch, \
        f"lease after release: {released}"
    new = ctx.acquire(ref, "B", now=T0 + 1, until=T0 + 60)
    assert new.epoch > a.epoch, f"epoch after release {new.epoch} is not above {a.epoch}"
    assert_lease(b.read_lease(ref), new.epoch, "B", T0 + 60)


@contract_check("leases")
def check_renew_extends_the_lease(ctx: CheckContext) -> None:
    """renew with the current epoch extends until."""
    b, ref = ctx.backend, ctx.ref()
    a = ctx.acquire(ref, "A", until=T0 + 30)
    b.renew(ref, a.epoch, T0 + 90)
    assert_lease(b.read_lease(ref), a.epoch, "A", T0 + 90)
    with expect_raises(LeaseHeld, "acquire by B inside the renewed lease"):
        ctx.acquire(ref, "B", now=T0 + 60)


@contract_check("fencing")
def check_renew_and_release_check_the_epoch(ctx: CheckContext) -> None:
    """renew with a wrong epoch raises Fenced; release with a wrong epoch does nothing."""
    b, ref = ctx.backend, ctx.ref()
    a = ctx.acquire(ref, "A", until=T0 + 30)
    with expect_raises(Fenced, "renew with a future epoch"):
        b.renew(ref, a.epoch + 1, T0 + 99)
    b.release(ref, a.epoch + 1)
    assert_lease(b.read_lease(ref), a.epoch, "A", T0 + 30)
    with expect_raises(Fenced, "renew of a never-acquired object"):
        b.renew(ctx.ref("never-acquired"), 1, T0 + 99)


@contract_check("fencing")
def check_stale_owner_cannot_renew_or_release(ctx: CheckContext) -> None:
    """After a takeover, the old owner's renew raises Fenced and its release does nothing."""
    b, ref = ctx.backend, ctx.ref()
    a = ctx.acquire(ref, "A", until=T0 + 10)
    new = ctx.acquire(ref, "B", now=T0 + 11, until=T0 + 40)
    assert new.epoch > a.epoch, f"takeover kept epoch {a.epoch} (new {new.epoch})"
    with expect_raises(Fenced, "renew with the stale epoch after a takeover"):
        b.renew(ref, a.epoch, T0 + 1000)
    b.release(ref, a.epoch)
    assert_lease(b.read_lease(ref), new.epoch, "B", T0 + 40)
    with expect_raises(LeaseHeld, "acquire by C while B's lease is live"):
        ctx.acquire(ref, "C", now=T0 + 20)


_SHAPES = {
    "puts": Batch(puts={b"x": b"A2", b"z": b"A2"}),
    "deletes": Batch(deletes={b"x", b"y"}),
    "delete_all": Batch(delete_all=True),
    "alarm": Batch(alarm=None),
    "mixed": Batch(puts={b"z": b"A2"}, deletes={b"x"}, delete_all=True, alarm=T0 + 1,
                   lease_until=T0 + 1000, active_at=T0 + 12),
    "lease_until": Batch(lease_until=T0 + 1000),
}


@contract_check("fencing")
def check_stale_owner_commit_is_fenced_and_lands_nothing(ctx: CheckContext) -> None:
    """After a takeover, every shape of batch from the old owner raises Fenced; none lands."""
    b = ctx.backend
    for shape, batch in _SHAPES.items():
        ref = ctx.ref(f"victim-{shape}")
        a = ctx.acquire(ref, "A", until=T0 + 10, name="victim")
        b.commit(ref, a.epoch, Batch(puts={b"x": b"A1", b"y": b"A1"}, alarm=T0 + 500))
        new = ctx.acquire(ref, "B", now=T0 + 11, until=T0 + 40)
        assert new.epoch > a.epoch, f"takeover kept epoch {a.epoch} (new {new.epoch})"
        with expect_raises(Fenced, f"stale owner's {shape} batch"):
            b.commit(ref, a.epoch, Batch(puts=dict(batch.puts), deletes=set(batch.deletes),
                                         delete_all=batch.delete_all, alarm=batch.alarm,
                                         lease_until=batch.lease_until,
                                         active_at=batch.active_at))
        rows = ctx.scan_all(ref)
        assert rows == [(b"x", b"A1"), (b"y", b"A1")], f"stale {shape} batch landed: {rows}"
        assert close_to(b.get_alarm(ref), T0 + 500), f"stale {shape} batch moved the alarm"
        assert_lease(b.read_lease(ref), new.epoch, "B", T0 + 40)
        b.commit(ref, new.epoch, Batch(puts={b"x": b"B1"}))
        assert b.get_many(ref, [b"x", b"z"]) == {b"x": b"B1"}, "new owner's write after fencing"


@contract_check("fencing")
def check_reset_owner_fences_its_own_old_epoch(ctx: CheckContext) -> None:
    """An owner that re-acquires (a reset) is fenced under its own old epoch."""
    b, ref = ctx.backend, ctx.ref()
    old = ctx.acquire(ref, "A")
    new = ctx.acquire(ref, "A", now=T0 + 1)
    with expect_raises(Fenced, "commit under the owner's pre-reset epoch"):
        b.commit(ref, old.epoch, Batch(puts={b"k": b"old"}))
    b.commit(ref, new.epoch, Batch(puts={b"k": b"new"}))
    assert ctx.scan_all(ref) == [(b"k", b"new")], "the pre-reset epoch's write landed"


@contract_check("fencing")
def check_commit_to_never_acquired_object_is_fenced(ctx: CheckContext) -> None:
    """A commit to an object nobody ever acquired raises Fenced and creates nothing."""
    b, ref = ctx.backend, ctx.ref("never")
    with expect_raises(Fenced, "commit to a never-acquired object"):
        b.commit(ref, 1, Batch(puts={b"k": b"v"}))
    assert ctx.scan_all(ref) == [], "a never-acquired object's commit landed"
    assert b.list_objects(ref.namespace) == [], "a fenced commit registered the object"
