"""Contract checks for the error contract: unusual but valid calls answer, or raise duro errors.

Every check runs behind :class:`~duro.consistency.contract.context.GuardedBackend`, so a raw
exception from any call in any check is a violation; this module adds the edge-case calls.
"""

from __future__ import annotations

from duro.backends import Batch
from duro.consistency.contract.context import T0, CheckContext, contract_check, expect_raises
from duro.errors import Fenced

__all__: list[str] = []


@contract_check("errors")
def check_edge_case_calls_answer_or_raise_duro_errors(ctx: CheckContext) -> None:
    """Empty reads, inverted ranges, zero limits and unknown objects answer cleanly."""
    b, ref, ghost = ctx.backend, ctx.ref(), ctx.ref("ghost")
    epoch = ctx.acquire(ref).epoch
    b.commit(ref, epoch, Batch())  # an empty batch is a no-op
    b.commit(ref, epoch, Batch(puts={b"a": b"1"}, deletes={b"missing"}))
    assert b.scan(ref, b"b", b"a") == [], "an inverted range returned rows"
    assert b.scan(ref, None, None, limit=0) == [], "limit=0 returned rows"
    assert b.scan(ref, b"a", b"a", reverse=True) == [], "an empty range returned rows"
    assert b.get_many(ghost, [b"a"]) == {}, "get_many of an unknown object"
    assert b.get_alarm(ghost) is None, "get_alarm of an unknown object"
    b.release(ghost, 1)  # not ours: nothing happens
    assert b.read_lease(ghost) is None, "release of an unknown object created a lease"
    with expect_raises(Fenced, "delete_object of a never-acquired object"):
        b.delete_object(ghost, 1)
    with expect_raises(Fenced, "commit with epoch 0"):
        b.commit(ref, 0, Batch(puts={b"z": b"1"}))
    assert b.due_alarms(T0, limit=0) == [], "due_alarms(limit=0) returned rows"
    assert b.list_objects(ref.namespace, limit=0) == [], "list_objects(limit=0) returned rows"
    assert ctx.scan_all(ref) == [(b"a", b"1")], "edge-case calls changed the data"
