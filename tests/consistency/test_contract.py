"""The contract stage itself: it covers every backend method and leaves no object behind."""

from __future__ import annotations

from pathlib import Path

from duro.backends import Batch, ObjectRef, open_backend
from duro.backends._proxy import _METHODS
from duro.consistency.contract import CHECKS, run_contract
from duro.testing import make_backend_url

APP = ObjectRef("App", "a" * 64)


def test_contract_stage_calls_every_method_and_removes_its_objects(tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    with open_backend(url) as b:  # the application's own data, which must stay as it is
        lease = b.acquire(APP, owner="app", address=None, now=1.0, until=2.0)
        b.commit(APP, lease.epoch, Batch(puts={b"k": b"v"}))
    report = run_contract(url, depth="quick")
    assert report.verdict == "ok", [o.detail for o in report.violations]
    assert {o.name for o in report.outcomes} == {c.name for c in CHECKS}
    assert set(_METHODS) | {"close"} <= set(report.calls), report.calls
    assert report.cleanup_failures == []
    with open_backend(url) as b:
        assert b.namespaces() == ["App"]
        assert [i.ref for i in b.list_objects("App")] == [APP]
        assert b.get_many(APP, [b"k"]) == {b"k": b"v"}
        assert b.due_alarms(1e13) == []
