"""Errors say when a call certainly never started (``exc.not_run``, HTTP ``x-duro-not-run``).

A client (and the consistency suite) may then treat the call as not applied; any other error
leaves the outcome unknown.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

import duro
from duro.calls import pack_error, unpack
from duro.errors import BackendUnavailable, ObjectReset, Overloaded
from duro.fetch import Request, Response
from duro.server import NOT_RUN_HEADER, configure
from duro.signals import AppClosing


@pytest.mark.parametrize("exc", [Overloaded("full", not_run=True),
                                 BackendUnavailable("owner gone", not_run=True)])
def test_not_run_survives_forwarding(exc: Exception) -> None:
    with pytest.raises(type(exc)) as info:
        unpack(pack_error(exc))
    assert info.value.not_run is True  # type: ignore[attr-defined]


@pytest.mark.parametrize("exc", [Overloaded("raised inside a turn"), ObjectReset("reset"),
                                 BackendUnavailable("lost the connection")])
def test_other_errors_leave_the_outcome_unknown(exc: Exception) -> None:
    with pytest.raises(type(exc)) as info:
        unpack(pack_error(exc))
    assert info.value.not_run is False  # type: ignore[attr-defined]


def test_app_closing_never_ran() -> None:
    assert AppClosing("closing").not_run is True


class Slow(duro.DurableObject):
    gate: asyncio.Event | None = None

    async def fetch(self, request: Request) -> Response:
        assert Slow.gate is not None
        await Slow.gate.wait()
        await self.storage.put("n", (await self.storage.get("n") or 0) + 1)
        return Response.json({"ok": True})

    async def count(self) -> int:
        return int(await self.storage.get("n") or 0)


async def test_a_full_queue_answers_503_not_run(tmp_path: Path) -> None:
    Slow.gate = asyncio.Event()
    app = duro.App(f"sqlite:///{tmp_path}/d.db", listen=None, max_queue=1)
    app.namespace(Slow)
    asgi = configure(app)
    async with app, httpx.AsyncClient(transport=httpx.ASGITransport(asgi),
                                      base_url="http://t") as http:
        running = asyncio.ensure_future(http.post("/Slow/name/a/x"))
        queued = asyncio.ensure_future(http.post("/Slow/name/a/x"))
        for _ in range(1000):  # bounded: until one runs (held by the gate) and one is queued
            live = list(app._namespaces["Slow"]._instances.values())
            if live and live[0].stats.turns >= 1 and len(live[0]._queue) >= 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the two calls never filled the queue")
        refused = await http.post("/Slow/name/a/x")
        assert refused.status_code == 503, refused.text
        assert refused.headers.get(NOT_RUN_HEADER) == "1"
        Slow.gate.set()
        assert (await running).status_code == 200
        assert (await queued).status_code == 200
        # The refused call did not run: two increments, not three.
        assert await app.namespace(Slow).get_by_name("a").count() == 2
