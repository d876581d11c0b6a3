"""The ``http`` mode: clients over HTTP against two real ``duro serve`` processes.

Every history here starts two ``python -m duro.serve_cli duro.consistency.http_app:make_app``
processes on one shared backend, sends the ops as HTTP requests (httpx, keep-alive) to both,
so about half reach the process that does not own the object and are forwarded, and checks
the history. kill -9 does not test power loss (see :mod:`duro.consistency.faults`).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from duro.app import App
from duro.consistency.http_mode import run_http
from duro.consistency.run_cli import check_command
from duro.consistency.runner import overlap, run_check
from duro.consistency.target import KV
from duro.consistency.workloads import random_program
from duro.listener import start_public_listener, stop_public_listener
from duro.server import configure
from duro.testing import make_backend_url

# Histories per backend (memory:// is private to one process: no http mode there).
HISTORIES = {"sqlite": 5, "lmdb": 2, "s3": 2, "postgresql": 2}
OPS = 200


def record(name: str, figures: dict[str, Any]) -> None:
    """Append the run's figures to DURO_CONSISTENCY_FIGURES (if set) for the report."""
    out = os.environ.get("DURO_CONSISTENCY_FIGURES")
    if out:
        with Path(out).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": name, **figures}) + "\n")


def test_kv_fetch_maps_requests_to_the_ops(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = App(make_backend_url("sqlite", tmp_path), env={"server": "here"})
        app.namespace(KV)
        server = configure(app)
        async with app:
            public, url = await start_public_listener(server, "127.0.0.1", 0)
            try:
                await run(url)
            finally:
                await stop_public_listener(public)

    async def run(url: str) -> None:
        async with httpx.AsyncClient(base_url=f"{url}/KV/name/o", timeout=30) as c:
            async def op(name: str, **body: Any) -> Any:
                r = await c.post(f"/{name}", json=body)
                assert r.status_code == 200, r.text
                data = r.json()
                assert data["server"] == "here"
                return data["result"]

            assert await op("get", key="a/0") is None
            assert await op("put", key="a/0", value="v1") is None
            assert await op("cas", key="a/0", expected="v0", new="v2") is False
            assert await op("cas", key="a/0", expected="v1", new="v2") is True
            assert await op("cas", key="a/1", expected=None, new="v3") is True
            micro = [["r", "a/0", None], ["w", "a/2", "v4"], ["d", "a/1", None]]
            assert await op("txn", micro=micro) == [["r", "a/0", "v2"], ["w", "a/2", "v4"],
                                                    ["d", "a/1", None]]
            assert await op("list", bounds={"prefix": "a/"}) == [["a/0", "v2"], ["a/2", "v4"]]
            assert await op("list", bounds={"prefix": "a/", "reverse": True,
                                            "limit": 1}) == [["a/2", "v4"]]
            assert await op("list", bounds={"start": "a/1", "end": "a/3"}) == [["a/2", "v4"]]
            assert await op("delete", key="a/0") is True
            assert await op("delete", key="a/0") is False
            assert (await c.post("/nope", json={})).status_code == 404
            assert (await c.get("/get")).status_code == 404
            assert (await c.post("/put", json={"key": "k"})).status_code == 400
            assert (await c.post("/get", content=b"not json")).status_code == 400

    asyncio.run(scenario())


def test_http_histories(duro_backend_url: str, duro_backend_name: str,
                        tmp_path: Path) -> None:
    if duro_backend_name == "memory":
        pytest.skip("memory:// is private to one process: two servers cannot share it")
    n = HISTORIES.get(duro_backend_name, 2)
    out = tmp_path / "summary.json"
    console = Console(record=True, width=120)
    rc = check_command(duro_backend_url, seed=40_000, ops=OPS, histories=n, mode="http",
                       faults="none", report=str(out), console=console, progress=False)
    text = console.export_text()
    assert rc == 0, text
    summary = json.loads(out.read_text(encoding="utf-8"))
    record(f"http-{duro_backend_name}", summary)
    assert summary["verdict"] == "ok" and summary["anomalies"] == 0
    assert summary["histories"] == summary["free_running"] == n
    assert summary["ops"] >= n * OPS
    assert summary["median_overlap"] >= 2
    assert summary["hung"] == 0 and summary["unknowns"] == 0
    assert summary["infos"] <= 0.05 * summary["ops"]  # the ops really ran, not all unknown
    # Both servers served requests, and about half were forwarded to the owner.
    requests, forwarded = summary["http_requests"], summary["http_forwarded"]
    assert requests >= n * OPS * 0.95
    assert 0.25 * requests <= forwarded <= 0.75 * requests
    assert "http requests" in text


def test_both_servers_take_requests_and_forward(tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    program = random_program(41_000, objects=2, clients=4, ops=150, processes=2)
    run = run_http(program, url, seed=41_000)
    assert set(run.sent) == {"s0", "s1"}
    assert min(run.sent.values()) >= 0.3 * sum(run.sent.values())
    assert 0 < run.forwarded < run.requests
    assert run.statuses == {}
    assert run.hung == 0
    assert overlap(run.history) >= 2


def test_http_with_kill_pause_and_errors(tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    summary = run_check(url, seed=42_000, ops=OPS, histories=2, mode="http",
                        faults="kill,pause,errors", progress=False)
    record("http-faults-sqlite", summary.to_json())
    assert summary.verdict == "ok", summary.explanation
    assert summary.faults["kill"] == 2 and summary.faults["pause"] == 2
    assert summary.faults["errors"] > 0
    assert summary.hung == 0 and summary.unknowns == 0
    assert summary.median_overlap >= 2
    assert summary.http_forwarded > 0


@pytest.mark.parametrize("name", ["drop-write", "steal-lease", "half-batch", "ack-early"])
def test_mutant_is_caught_over_http(name: str, tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    rc = check_command(make_backend_url("sqlite", tmp_path), seed=0, ops=OPS, histories=3,
                       mode="http", faults="none", mutant=name, console=console,
                       progress=False)
    text = console.export_text()
    assert rc == 1, text
    assert "ANOMALY" in text or "never answered" in text
    assert "--mode http" in text and f"--mutant {name}" in text


def test_http_mode_needs_a_shared_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_command("memory://", mode="http", histories=1, console=Console(record=True),
                         progress=False) == 2
    assert "shared between processes" in capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["sqlite", "lmdb"])
def test_relative_url_opens_the_callers_file(scheme: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative URL names a path under the caller's cwd, not under the servers' temp dir."""
    monkeypatch.chdir(tmp_path)
    url = f"{scheme}:///data/x.db" if scheme == "sqlite" else f"{scheme}:///data/x.lmdb"
    summary = run_check(url, seed=43_000, ops=60, histories=1, mode="http", faults="none",
                        progress=False)
    assert summary.verdict == "ok", summary.explanation
    assert (tmp_path / "data").is_dir()


def test_absolute_url() -> None:
    from duro.consistency.http_mode import absolute_url

    here = Path("/srv/app")
    assert absolute_url("sqlite:///data/x.db?sync=off", here) == \
        "sqlite:////srv/app/data/x.db?sync=off"
    assert absolute_url("sqlite:////abs/x.db", here) == "sqlite:////abs/x.db"
    assert absolute_url("lmdb:///d", here) == "lmdb:////srv/app/d"
    assert absolute_url("sqlite+pysqlite:///x.db", here) == "sqlite+pysqlite:////srv/app/x.db"
    for other in ("memory://", "s3://bucket/prefix?region=x", "postgresql+psycopg://u@h/db"):
        assert absolute_url(other, here) == other
