"""Prometheus metrics read over HTTP from a running App, while it takes calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

import duro

pytest.importorskip("prometheus_client", reason="the duro[metrics] extra is not installed")


class Counter(duro.DurableObject):
    async def increment(self) -> int:
        n: int = await self.storage.get("n", 0) + 1
        self.storage.put("n", n)
        return n


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("duro_") and 'namespace="Counter"' in line:
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


async def test_metrics_endpoint_during_a_run(duro_app_factory: Callable[..., duro.App]) -> None:
    from duro.metrics import start_metrics_server

    async with duro_app_factory() as app:
        server = start_metrics_server(app, port=0)
        try:
            counters = app.namespace(Counter)
            for i in range(5):
                await counters.get_by_name(f"c{i}").increment()
            first = await asyncio.to_thread(scrape, server.port)
            assert first["duro_activations_total"] == 5
            assert first["duro_turns_total"] >= 5
            await asyncio.gather(*(counters.get_by_name("c0").increment() for _ in range(20)))
            second = await asyncio.to_thread(scrape, server.port)
            assert second["duro_turns_total"] >= first["duro_turns_total"] + 20
            assert second["duro_flushed_writes_total"] > first["duro_flushed_writes_total"] >= 5
            assert second["duro_flushes_total"] > first["duro_flushes_total"] >= 1
            assert second["duro_max_batch_size"] >= 1
        finally:
            server.stop()
