"""Contract checks for durability: what was acknowledged survives close and reopen."""

from __future__ import annotations

from duro.backends import Batch, LeaseHeld
from duro.consistency.contract.context import (
    T0,
    TRICKY_KEYS,
    CheckContext,
    assert_lease,
    close_to,
    contract_check,
    expect_raises,
)
from duro.errors import Fenced

__all__: list[str] = []


@contract_check("durability", needs="persistent")
def check_close_and_reopen_keep_everything(ctx: CheckContext) -> None:
    """Rows, alarms, leases, epochs and registry survive close() and a fresh open."""
    b = ctx.backend
    ref, other = ctx.ref("one", "Durable"), ctx.ref("two", "Durable")
    a = ctx.acquire(ref, "A", until=T0 + 30, name="one", address="h:1")
    o = ctx.acquire(other, "B", until=T0 + 40)
    model = {k: b"%d" % i for i, k in enumerate(TRICKY_KEYS)}
    model[b"big"] = bytes(range(256)) * 256
    b.commit(ref, a.epoch, Batch(puts=dict(model), alarm=T0 + 8, active_at=T0 + 2))
    b.commit(other, o.epoch, Batch(puts={b"o": b"1"}))
    b.commit(other, o.epoch, Batch(deletes={b"o"}, puts={b"p": b"2"}))
    ctx.close_backend()
    ctx.close_backend()  # idempotent
    b = ctx.reopen()
    rows = ctx.scan_all(ref)
    assert rows == sorted(model.items()), (
        f"after reopen the object holds {len(rows)} of {len(model)} acknowledged rows "
        "(writes kept in memory only?)")
    assert ctx.scan_all(other) == [(b"p", b"2")], "after reopen: overwrite/delete lost"
    assert close_to(b.get_alarm(ref), T0 + 8), "after reopen: alarm lost"
    assert_lease(b.read_lease(ref), a.epoch, "A", T0 + 30, "h:1")
    assert_lease(b.read_lease(other), o.epoch, "B", T0 + 40)
    info = {i.ref: i for i in b.list_objects(ref.namespace)}
    assert ref in info and info[ref].name == "one", "after reopen: registry entry lost"
    assert close_to(info[ref].last_active, T0 + 2), "after reopen: last_active lost"
    assert ctx.own_namespaces() == [ref.namespace], "after reopen: namespaces()"
    assert [r for r, _ in b.due_alarms(T0 + 100)] == [ref], "after reopen: due index lost"
    with expect_raises(LeaseHeld, "after reopen, acquire inside A's lease"):
        ctx.acquire(ref, "C", now=T0 + 29)
    b.commit(ref, a.epoch, Batch(puts={b"after": b"reopen"}))
    assert b.get_many(ref, [b"after"]) == {b"after": b"reopen"}, "commit after reopen"
    c = ctx.acquire(ref, "C", now=T0 + 31)
    assert c.epoch > a.epoch, f"after reopen the epoch went back to {c.epoch}"
    with expect_raises(Fenced, "after reopen, a stale owner's commit"):
        b.commit(ref, a.epoch, Batch(puts={b"stale": b"1"}))


@contract_check("durability", needs="persistent")
def check_deleted_objects_tombstone_survives_reopen(ctx: CheckContext) -> None:
    """A deleted object stays deleted after reopen and its epoch keeps fencing the old owner."""
    b, ref = ctx.backend, ctx.ref()
    a = ctx.acquire(ref, "A", until=T0 + 10)
    b.commit(ref, a.epoch, Batch(puts={b"k": b"v"}, alarm=T0 + 5))
    b.delete_object(ref, a.epoch)
    b = ctx.reopen()
    assert ctx.scan_all(ref) == [], "a deleted object's rows came back after reopen"
    assert b.get_alarm(ref) is None, "a deleted object's alarm came back after reopen"
    assert b.list_objects(ref.namespace) == [], "a deleted object is listed after reopen"
    assert b.due_alarms(T0 + 100) == [], "a deleted object's alarm is due after reopen"
    new = ctx.acquire(ref, "B", now=T0 + 11)
    assert new.epoch > a.epoch, f"tombstone epoch lost on reopen: {new.epoch} <= {a.epoch}"
    with expect_raises(Fenced, "after reopen, the deleted object's old owner committing"):
        b.commit(ref, a.epoch, Batch(puts={b"zombie": b"1"}))
    assert ctx.scan_all(ref) == [], "a fenced commit landed after reopen"
