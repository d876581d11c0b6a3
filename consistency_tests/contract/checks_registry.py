"""Contract checks for the registry and the alarm index: delete_object, list_objects,
namespaces and due_alarms."""

from __future__ import annotations

from duro.backends import Batch, ObjectRef
from duro.consistency.contract.context import (
    T0,
    CheckContext,
    close_to,
    contract_check,
    expect_raises,
)
from duro.errors import Fenced

__all__: list[str] = []


@contract_check("registry")
def check_delete_object_removes_state_alarm_and_metadata(ctx: CheckContext) -> None:
    """delete_object removes rows, alarm and registry entry; the epoch stays as a tombstone."""
    b = ctx.backend
    ref, other = ctx.ref("doomed"), ctx.ref("kept")
    a = ctx.acquire(ref, "A", name="doomed")
    o = ctx.acquire(other, "A", name="kept")
    b.commit(ref, a.epoch, Batch(puts={b"k": b"v", b"k2": b"v"}, alarm=T0 + 5, active_at=T0))
    b.commit(other, o.epoch, Batch(puts={b"k": b"w"}, alarm=T0 + 6))
    b.delete_object(ref, a.epoch)
    assert ctx.scan_all(ref) == [], f"delete_object left rows: {ctx.scan_all(ref)!r}"
    assert b.get_many(ref, [b"k"]) == {}, "delete_object left a readable key"
    assert b.get_alarm(ref) is None, "delete_object left the alarm"
    assert [i.ref for i in b.list_objects(ref.namespace)] == [other], \
        "delete_object left the object listed"
    due = b.due_alarms(T0 + 100)
    assert [r for r, _ in due] == [other] and close_to(due[0][1], T0 + 6), \
        f"due index after delete_object: {due}"
    assert ctx.scan_all(other) == [(b"k", b"w")], "delete_object touched another object"
    again = ctx.acquire(ref, "B", now=T0 + 1000, until=T0 + 2000)
    assert again.epoch > a.epoch, f"epoch after delete restarted at {again.epoch}"
    with expect_raises(Fenced, "the deleted object's old owner committing"):
        b.commit(ref, a.epoch, Batch(puts={b"zombie": b"1"}))
    assert ctx.scan_all(ref) == [], "state of a deleted object came back on re-acquire"
    listed = {i.ref: i for i in b.list_objects(ref.namespace)}
    assert set(listed) == {ref, other}, "re-acquired object not listed"
    assert listed[ref].name is None and listed[ref].keys == 0 and listed[ref].alarm is None, \
        f"registry entry of a deleted object kept old metadata: {listed[ref]}"


@contract_check("registry")
def check_delete_object_checks_the_epoch(ctx: CheckContext) -> None:
    """delete_object under a stale epoch raises Fenced and removes nothing."""
    b, ref = ctx.backend, ctx.ref()
    a = ctx.acquire(ref, "A", until=T0 + 10)
    b.commit(ref, a.epoch, Batch(puts={b"k": b"v"}, alarm=T0 + 5))
    new = ctx.acquire(ref, "B", now=T0 + 11, until=T0 + 40)
    with expect_raises(Fenced, "delete_object under a stale epoch"):
        b.delete_object(ref, a.epoch)
    assert ctx.scan_all(ref) == [(b"k", b"v")], "a fenced delete_object removed rows"
    assert close_to(b.get_alarm(ref), T0 + 5), "a fenced delete_object removed the alarm"
    assert [i.ref for i in b.list_objects(ref.namespace)] == [ref], "fenced delete unlisted it"
    b.delete_object(ref, new.epoch)
    assert b.list_objects(ref.namespace) == [], "deleted object still listed"
    assert ctx.own_namespaces() == [], "namespace of the only, deleted object still listed"
    c = ctx.acquire(ref, "C", now=T0 + 41)
    assert c.epoch > new.epoch, f"epoch after delete {c.epoch} not above {new.epoch}"


@contract_check("registry")
def check_list_objects_paginates_by_id(ctx: CheckContext) -> None:
    """list_objects pages by ID with after/limit and stays inside its namespace."""
    b = ctx.backend
    refs = [ctx.ref(f"n{i}", "Pages") for i in range(7)]
    for r in refs:
        ctx.acquire(r, name=r.id[:6])
    ctx.acquire(ctx.ref("n0", "Elsewhere"))
    ns = refs[0].namespace
    expected = sorted(r.id for r in refs)
    pages: list[list[str]] = []
    after: str | None = None
    for _ in range(10):
        page = b.list_objects(ns, after=after, limit=3)
        if not page:
            break
        pages.append([i.ref.id for i in page])
        after = page[-1].ref.id
    assert [len(p) for p in pages] == [3, 3, 1], f"page sizes {[len(p) for p in pages]}"
    assert [i for p in pages for i in p] == expected, "pages out of ID order or with repeats"
    assert all(i.ref.namespace == ns for i in b.list_objects(ns)), "another namespace listed"
    mid = expected[3][:10]
    assert [i.ref.id for i in b.list_objects(ns, after=mid)] == [x for x in expected if x > mid], \
        "list_objects(after=a non-ID string)"
    assert b.list_objects(ns, after=expected[-1]) == [], "list_objects after the last ID"
    assert b.list_objects(ctx.namespace("Nobody")) == [], "an empty namespace lists objects"


@contract_check("registry")
def check_list_objects_fields(ctx: CheckContext) -> None:
    """ObjectInfo carries name, epoch, owner, address, until, alarm, last_active, keys, size."""
    b = ctx.backend
    named, anon = ctx.ref("named", "Fields"), ctx.ref("anon", "Fields")
    a = ctx.acquire(named, "A", until=T0 + 30, name="alice", address="h:1")
    ctx.acquire(anon, "B", until=T0 + 40)
    b.commit(named, a.epoch, Batch(puts={b"k1": b"12345", b"key2": b"x" * 100}, alarm=T0 + 7,
                                   active_at=T0 + 3))
    info = {i.ref: i for i in b.list_objects(named.namespace)}
    i = info[named]
    assert (i.name, i.epoch, i.owner, i.address, i.keys) == ("alice", a.epoch, "A", "h:1", 2), i
    assert i.size == 2 + 5 + 4 + 100, f"size {i.size}, expected key+value bytes 111"
    assert close_to(i.lease_until, T0 + 30) and close_to(i.alarm, T0 + 7), i
    assert close_to(i.last_active, T0 + 3), i
    j = info[anon]
    assert (j.name, j.owner, j.keys, j.size, j.alarm) == (None, "B", 0, 0, None), j
    b.commit(named, a.epoch, Batch(deletes={b"key2"}, puts={b"k1": b"1"}))
    i = {x.ref: x for x in b.list_objects(named.namespace)}[named]
    assert (i.keys, i.size) == (1, 3), f"after delete+overwrite keys={i.keys} size={i.size}"
    ctx.acquire(named, "A", now=T0 + 1, until=T0 + 31)
    assert {x.ref: x.name for x in b.list_objects(named.namespace)}[named] == "alice", \
        "an acquire without a name forgot the recorded name"
    ctx.acquire(named, "A", now=T0 + 2, until=T0 + 32, name="alice2")
    assert {x.ref: x.name for x in b.list_objects(named.namespace)}[named] == "alice2", \
        "an acquire with a new name did not record it"


@contract_check("registry")
def check_namespaces(ctx: CheckContext) -> None:
    """namespaces() lists each namespace holding objects once, sorted."""
    for ns in ("Zeta", "Alpha", "Mid"):
        ctx.acquire(ctx.ref("x", ns))
    ctx.acquire(ctx.ref("y", "Alpha"))
    want = [ctx.namespace(n) for n in ("Alpha", "Mid", "Zeta")]
    assert ctx.own_namespaces() == want, f"namespaces() = {ctx.own_namespaces()}"


@contract_check("alarms")
def check_due_alarms_earliest_first_and_only_due(ctx: CheckContext) -> None:
    """due_alarms(now, limit): alarms at or before now, earliest first, across namespaces."""
    b = ctx.backend
    times = {ctx.ref("a", "Al"): T0 + 10, ctx.ref("b", "Al"): T0 + 5,
             ctx.ref("c", "Bl"): T0 + 20, ctx.ref("d", "Bl"): T0 + 7.5}
    epochs = {}
    for r, at in times.items():
        epochs[r] = ctx.acquire(r).epoch
        b.commit(r, epochs[r], Batch(alarm=at))
    ctx.acquire(ctx.ref("no-alarm", "Al"))
    by_time = sorted(times, key=times.__getitem__)

    def due(now: float, limit: int = 100) -> list[ObjectRef]:
        rows = b.due_alarms(now, limit)
        for r, at in rows:
            assert r in times and close_to(at, times[r]), f"due_alarms row {r.id[:8]} at {at}"
        return [r for r, _ in rows]

    assert due(T0 + 4.99) == [], "an alarm not yet due was returned"
    assert due(T0 + 5) == by_time[:1], "an alarm at exactly now is due"
    assert due(T0 + 10) == by_time[:3], "due alarms up to now, earliest first"
    assert due(T0 + 10**6) == by_time, "all alarms due, earliest first"
    assert due(T0 + 10**6, limit=2) == by_time[:2], "due_alarms limit"
    first, second = by_time[0], by_time[1]
    b.commit(first, epochs[first], Batch(alarm=None))
    assert due(T0 + 10**6) == by_time[1:], "a cleared alarm stayed in the due index"
    b.commit(second, epochs[second], Batch(alarm=T0 + 30))  # moved later
    times[second] = T0 + 30
    assert due(T0 + 25) == [by_time[2], by_time[3]], "an alarm moved later is still due early"
    assert due(T0 + 30) == [by_time[2], by_time[3], second], "a moved alarm left the due index"
