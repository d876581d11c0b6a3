"""Two Apps whose clocks disagree by more than the drift margin race for one object.

B's clock runs far ahead, so B takes over while A still believes its lease is valid and keeps
writing (a zombie that never stops on its own). Storage must fence A: every write either App
acknowledged survives, and A's writes after the takeover fail with ``ObjectReset``. On S3 this
is the new owner's fence racing the old owner's commits and garbage collection (issue 20).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import duro
from duro.clock import ManualClock

SKEW = 1000.0  # seconds B's wall clock runs ahead: far beyond lease_ttl + drift_margin


class Keys(duro.DurableObject):
    async def put(self, key: str, value: int) -> None:
        self.storage.put(key, value)

    async def items(self) -> dict[str, Any]:
        return dict(await self.storage.list())


def _app(url: str, clock: ManualClock) -> duro.App:
    return duro.App(url, clock=clock, listen=None, lease_ttl=10.0, drift_margin=1.0)


async def _trial(url: str, name: str) -> tuple[dict[str, int], dict[str, Any], str]:
    clock_a = ManualClock()
    clock_b = ManualClock(start=clock_a.time() + SKEW)
    acked: dict[str, int] = {}
    async with _app(url, clock_a) as app_a, _app(url, clock_b) as app_b:
        a = app_a.namespace(Keys).get_by_name(name)
        await a.put("a0000", 0)
        acked["a0000"] = 0
        running = asyncio.Event()

        async def zombie() -> str:
            for i in range(1, 400):
                try:
                    await a.put(f"a{i:04d}", i)
                except duro.ObjectReset:
                    return "reset"
                acked[f"a{i:04d}"] = i
                running.set()
            return "never fenced"

        task = asyncio.ensure_future(zombie())
        await running.wait()
        b = app_b.namespace(Keys).get_by_name(name)
        for i in range(5):
            await b.put(f"b{i}", i)
            acked[f"b{i}"] = i
        outcome = await task
    async with _app(url, ManualClock(start=clock_a.time() + 2 * SKEW)) as fresh:
        stored = await fresh.namespace(Keys).get_by_name(name).items()
    return acked, stored, outcome


@pytest.mark.parametrize("backend", ["s3", "sqlite"])
def test_clock_skew_beyond_the_drift_margin_loses_no_acknowledged_write(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from duro.testing import make_backend_url

    endpoint = request.getfixturevalue("duro_s3_endpoint") if backend == "s3" else None
    url = make_backend_url(backend, tmp_path, endpoint)
    if backend == "s3":
        url += "&checkpoint_batches=2"  # frequent garbage collection
    trials = 10
    failures = []
    for n in range(trials):
        acked, stored, outcome = asyncio.run(_trial(url, f"obj{n}"))
        lost = sorted(k for k, v in acked.items() if stored.get(k) != v)
        if lost or outcome != "reset":
            failures.append(f"trial {n}: A {outcome}; lost {lost}")
    assert failures == [], f"{len(failures)}/{trials} trials failed: {failures[:3]}"


def test_namespace_names_are_bounded_for_storage_keys(tmp_path: Path) -> None:
    from duro.namespace import MAX_NAMESPACE_BYTES

    app = duro.App(f"sqlite:///{tmp_path}/d.db", listen=None)
    app.namespace(Keys, "n" * MAX_NAMESPACE_BYTES)
    with pytest.raises(duro.ConfigError, match=f"1 to {MAX_NAMESPACE_BYTES} bytes"):
        app.namespace(Keys, "é" * (MAX_NAMESPACE_BYTES // 2 + 1))
