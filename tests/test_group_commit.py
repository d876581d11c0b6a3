"""Group commit across objects: many objects' writes share one fenced transaction.

Backend level (every test backend): ``commit_many`` fences each op on its own. Runtime level
(backends with ``group_commit``): the App's committer gathers the ops that many objects queue
while a group is in flight; a fenced object fails alone, a failed group fails every object in
it and acknowledges nothing, and first writes to new objects share their lease acquires.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

import duro
from duro.backends import Backend, Batch, ObjectRef, open_backend
from duro.backends._proxy import ProxyBackend
from duro.backends.base import AcquireOp, CommitOp, Lease, LeaseHeld, ReleaseOp, WriteOp
from duro.errors import BackendError, BackendUnavailable, Fenced, ObjectReset
from duro.keys import encode_key

Make = Callable[..., duro.App]
NS = "Box"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


class Box(duro.DurableObject):
    async def put(self, key: str, value: Any) -> None:
        self.storage.put(key, value)

    async def get(self, key: str) -> Any:
        return await self.storage.get(key)


def _ref(i: int) -> ObjectRef:
    return ObjectRef(NS, f"{i:064x}")


def _acquire(backend: Backend, ref: ObjectRef, owner: str = "me") -> Lease:
    return backend.acquire(ref, owner=owner, address=None, now=0.0, until=1e12)


# -- backend level ------------------------------------------------------------------------------


def test_commit_many_fences_each_op_alone(duro_backend: Backend) -> None:
    leases = [_acquire(duro_backend, _ref(i)) for i in range(4)]
    # Object 2 gets a new owner: its old epoch is stale.
    duro_backend.acquire(_ref(2), owner="thief", address=None, now=math.inf, until=1e12)
    ops = [CommitOp(_ref(i), leases[i].epoch, Batch(puts={b"k": b"v%d" % i})) for i in range(4)]
    out = duro_backend.commit_many(ops)
    assert [type(r) for r in out] == [type(None), type(None), Fenced, type(None)]
    for i in (0, 1, 3):
        assert duro_backend.get_many(_ref(i), [b"k"]) == {b"k": b"v%d" % i}
    assert duro_backend.get_many(_ref(2), [b"k"]) == {}


def test_commit_many_acquires_and_releases(duro_backend: Backend) -> None:
    held = _acquire(duro_backend, _ref(1), owner="other")
    mine = _acquire(duro_backend, _ref(2))
    ops: list[WriteOp] = [
        AcquireOp(_ref(0), "me", "host:1", 0.0, 1e12, "zero"),
        AcquireOp(_ref(1), "me", None, 0.0, 1e12),
        ReleaseOp(_ref(2), mine.epoch),
        CommitOp(_ref(3), 7, Batch(puts={b"k": b"v"})),  # never acquired: fenced
    ]
    out = duro_backend.commit_many(ops)
    assert isinstance(out[0], Lease) and out[0].epoch == 1 and out[0].owner == "me"
    assert isinstance(out[1], LeaseHeld) and out[1].lease.epoch == held.epoch
    assert out[2] is None
    assert isinstance(out[3], Fenced)
    got = duro_backend.read_lease(_ref(0))
    assert got is not None and got.owner == "me" and got.address == "host:1"
    after = duro_backend.read_lease(_ref(2))
    assert after is not None and after.owner is None and after.epoch == mine.epoch
    assert [i.name for i in duro_backend.list_objects(NS) if i.ref == _ref(0)] == ["zero"]
    # The acquired object commits under its new epoch, within a group too.
    assert duro_backend.commit_many([CommitOp(_ref(0), 1, Batch(puts={b"a": b"1"}))]) == [None]
    assert duro_backend.get_many(_ref(0), [b"a"]) == {b"a": b"1"}


def test_sql_group_transaction_failing_applies_nothing(duro_backend: Backend,
                                                       duro_backend_name: str) -> None:
    if duro_backend_name not in ("sqlite", "postgres"):
        pytest.skip("a mid-transaction statement error is specific to the SQL backend")
    leases = [_acquire(duro_backend, _ref(i)) for i in range(3)]
    poison = Batch(puts={b"k": None})  # type: ignore[dict-item]  # kv.value is NOT NULL
    ops = [CommitOp(_ref(0), leases[0].epoch, Batch(puts={b"k": b"0"})),
           CommitOp(_ref(1), leases[1].epoch, poison),
           CommitOp(_ref(2), leases[2].epoch, Batch(puts={b"k": b"2"}))]
    with pytest.raises(BackendError):
        duro_backend.commit_many(ops)
    for i in range(3):
        assert duro_backend.get_many(_ref(i), [b"k"]) == {}
    # The writer connection is usable afterwards.
    assert duro_backend.commit_many(ops[:1]) == [None]


# -- runtime level ------------------------------------------------------------------------------


class GroupGate(ProxyBackend):
    """Records each group; can hold groups until released, or fail them before sending."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.groups: list[list[str]] = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.fail = False

    def commit_many(self, ops: Sequence[WriteOp]) -> list[object]:
        self.groups.append([type(op).__name__ for op in ops])
        self.entered.set()
        assert self.open.wait(30), "the test never released the group"
        if self.fail:
            raise BackendUnavailable("injected: the group transaction failed")
        return super().commit_many(ops)


async def _queued(app: duro.App, n: int) -> None:
    """Let the loop run until *n* ops wait in the committer (bounded, no timed sleep)."""
    for _ in range(10_000):
        if len(app.committer._queue) >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {len(app.committer._queue)} of {n} ops were queued")


async def _hold_a_group(app: duro.App, gate: GroupGate, stub: Any) -> asyncio.Future[Any]:
    """Put one group in flight and keep it there: what follows queues behind it."""
    gate.open.clear()
    gate.entered.clear()
    blocker = asyncio.ensure_future(stub.put("block", 1))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    return blocker


def _gate(duro_backend_url: str) -> GroupGate:
    gate = GroupGate(open_backend(duro_backend_url))
    if not gate.group_commit:
        gate.close()
        pytest.skip("this backend commits each object on its own (no group transaction)")
    return gate


def test_many_objects_share_a_group_and_a_fenced_one_fails_alone(
    duro_app_factory: Make, duro_backend_url: str
) -> None:
    async def main() -> None:
        gate = _gate(duro_backend_url)
        async with duro_app_factory(backend=gate) as app:
            ns = app.namespace(Box)
            stubs = [ns.get_by_name(f"o{i}") for i in range(8)]
            await asyncio.gather(*(s.put("warm", 0) for s in stubs))
            victim = ObjectRef(NS, stubs[3].id.hex)
            gate.inner.acquire(victim, owner="thief", address=None, now=math.inf, until=1e12)
            blocker = await _hold_a_group(app, gate, stubs[0])
            calls = [asyncio.ensure_future(s.put("k", i)) for i, s in enumerate(stubs) if i]
            await _queued(app, len(calls))
            gate.groups.clear()
            gate.open.set()
            results = await asyncio.gather(*calls, return_exceptions=True)
            await blocker
            assert gate.groups[0] == ["CommitOp"] * len(calls), gate.groups
            for i, res in enumerate(results, start=1):
                if i == 3:
                    assert isinstance(res, ObjectReset), res
                else:
                    assert res is None, (i, res)
            for i, s in enumerate(stubs):
                got = gate.inner.get_many(ObjectRef(NS, s.id.hex), [encode_key("k")])
                assert bool(got) == (i not in (0, 3)), (i, got)

    run(main())


def test_a_failed_group_fails_every_object_in_it_and_acknowledges_nothing(
    duro_app_factory: Make, duro_backend_url: str
) -> None:
    async def main() -> None:
        gate = _gate(duro_backend_url)
        async with duro_app_factory(backend=gate) as app:
            ns = app.namespace(Box)
            stubs = [ns.get_by_name(f"f{i}") for i in range(6)]
            await asyncio.gather(*(s.put("warm", 0) for s in stubs))
            blocker = await _hold_a_group(app, gate, stubs[0])
            calls = [asyncio.ensure_future(s.put("k", i)) for i, s in enumerate(stubs) if i]
            await _queued(app, len(calls))
            gate.fail = True
            gate.open.set()
            results = await asyncio.gather(blocker, *calls, return_exceptions=True)
            assert all(isinstance(r, ObjectReset) for r in results), results
            for s in stubs:
                assert gate.inner.get_many(ObjectRef(NS, s.id.hex), [encode_key("k")]) == {}
            gate.fail = False
            # Each object re-activates under a new epoch and works again.
            await asyncio.gather(*(s.put("k", 1) for s in stubs))
            assert [await s.get("k") for s in stubs] == [1] * len(stubs)

    run(main())


def test_first_writes_to_new_objects_share_their_lease_acquires(
    duro_app_factory: Make, duro_backend_url: str
) -> None:
    async def main() -> None:
        gate = _gate(duro_backend_url)
        async with duro_app_factory(backend=gate) as app:
            ns = app.namespace(Box)
            first = ns.get_by_name("first")
            await first.put("warm", 0)
            blocker = await _hold_a_group(app, gate, first)
            fresh = [ns.get_by_name(f"new{i}") for i in range(20)]
            calls = [asyncio.ensure_future(s.put("k", i)) for i, s in enumerate(fresh)]
            await _queued(app, len(fresh))
            gate.groups.clear()
            gate.open.set()
            await asyncio.gather(blocker, *calls)
            assert gate.groups[0] == ["AcquireOp"] * len(fresh), gate.groups
            commits = [g for g in gate.groups[1:] if "CommitOp" in g]
            assert sum(len(g) for g in commits) == len(fresh)
            assert [await s.get("k") for s in fresh] == list(range(len(fresh)))

    run(main())
