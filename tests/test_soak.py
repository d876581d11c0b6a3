"""A bounded soak: two ``duro serve`` processes of the HTTP counter example on one SQLite file,
1,000 counters, 150 concurrent httpx clients for about a minute, with kill -9 of one process
(restarted at once) and SIGSTOP of the other mid-run.

It asserts what users are promised: no acknowledged increment is lost or applied twice, and
no call is reported "outcome unknown" (504) unless it was sent to a process that then could
not answer (only while a process is stopped). It prints the figures.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import duro

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()

OBJECTS = 1000
CLIENTS = 150
KILL_AT, STOP_AT, STOP_FOR, END_AT = 12.0, 32.0, 4.0, 55.0
TTL, CALL_TIMEOUT = 5.0, 10.0


def make_app() -> duro.App:
    """The counter example, with a short lease and call timeout so the faults fit the run."""
    sys.path.insert(0, str(ROOT / "examples"))
    from counter_http import Counter  # type: ignore[import-not-found]

    app = duro.App(lease_ttl=TTL, call_timeout=CALL_TIMEOUT, idle_timeout=600.0)
    app.namespace(Counter)
    return app


class _Proc:
    def __init__(self, url: str, cwd: Path) -> None:
        self.log = cwd / f"serve-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duro.serve_cli", f"{THIS}:make_app", "--port", "0",
             "--backend", url],
            stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, cwd=cwd)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("duro serve: http://"), self.log.read_text()
        self.base = line.split()[2]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class _Tally:
    acked: dict[int, list[int]] = field(default_factory=dict)  # object → values answered
    statuses: dict[int, int] = field(default_factory=dict)
    unknown_504: list[tuple[float, str]] = field(default_factory=list)  # (start, body)
    client_errors: int = 0
    no_retry_after: int = 0
    latencies: list[float] = field(default_factory=list)
    sent: int = 0


async def _client(servers: list[str], tally: _Tally, t0: float, rng: random.Random) -> None:
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT + 20) as http:
        while (start := time.monotonic() - t0) < END_AT:
            obj = rng.randrange(OBJECTS)
            base = rng.choice(servers)
            tally.sent += 1
            try:
                r = await http.post(f"{base}/Counter/name/o{obj}/increment")
            except httpx.HTTPError:
                tally.client_errors += 1  # the process died or is stopped: outcome unknown
                continue
            tally.statuses[r.status_code] = tally.statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                tally.acked.setdefault(obj, []).append(int(r.json()["n"]))
                tally.latencies.append(time.monotonic() - t0 - start)
            elif r.status_code == 504:
                tally.unknown_504.append((start, r.text))
            elif r.status_code == 503 and "retry-after" not in r.headers:
                tally.no_retry_after += 1
            if r.status_code != 200:
                await asyncio.sleep(0.05)  # a client that backs off, as Retry-After asks


async def _faults(procs: list[_Proc], servers: list[str], url: str, cwd: Path,
                  t0: float) -> list[_Proc]:
    started: list[_Proc] = []
    await asyncio.sleep(KILL_AT)
    procs[0].proc.kill()  # SIGKILL: its leases stay until they run out
    procs[0].proc.wait(10)
    fresh = await asyncio.to_thread(_Proc, url, cwd)
    started.append(fresh)
    servers[0] = fresh.base
    await asyncio.sleep(STOP_AT - (time.monotonic() - t0))
    os.kill(procs[1].proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(STOP_FOR)
    finally:
        os.kill(procs[1].proc.pid, signal.SIGCONT)
    return started


def test_soak_two_processes_kill_and_pause(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'duro.db'}?busy_timeout=2"
    procs = [_Proc(url, tmp_path), _Proc(url, tmp_path)]
    tally = _Tally()
    try:
        servers = [p.base for p in procs]

        async def main() -> list[_Proc]:
            t0 = time.monotonic()
            rng = random.Random(19)
            faults = asyncio.ensure_future(_faults(procs, servers, url, tmp_path, t0))
            await asyncio.gather(*(_client(servers, tally, t0, random.Random(rng.random()))
                                   for _ in range(CLIENTS)))
            return await faults

        procs += asyncio.run(main())
        finals = _read_all(procs[-1].base)
    finally:
        for p in procs:
            p.stop()

    acked = sum(len(v) for v in tally.acked.values())
    duplicated = sum(len(v) - len(set(v)) for v in tally.acked.values())
    lost = sum(1 for obj, values in tally.acked.items() for n in values if n > finals[obj])
    short = sum(1 for obj, values in tally.acked.items() if finals[obj] < len(values))
    # A 504 means "sent, not answered": only a stopped process leaves calls unanswered.
    pause = (STOP_AT - CALL_TIMEOUT - 1, STOP_AT + STOP_FOR + 1)
    outside = [(t, body) for t, body in tally.unknown_504 if not pause[0] <= t <= pause[1]]
    lat = sorted(tally.latencies)
    print(f"\nsoak: {tally.sent} requests, {acked} acknowledged ({acked / END_AT:.0f}/s), "
          f"statuses {dict(sorted(tally.statuses.items()))}, client errors "
          f"{tally.client_errors}; p50 {lat[len(lat) // 2] * 1000:.0f} ms, p99 "
          f"{lat[int(len(lat) * 0.99)] * 1000:.0f} ms; lost {lost}, duplicated {duplicated}, "
          f"final below acknowledged count {short}; 504 {len(tally.unknown_504)} (outside "
          f"the pause {len(outside)}); 503 without Retry-After {tally.no_retry_after}")
    assert acked > 0
    assert lost == 0 and short == 0
    assert duplicated == 0
    assert outside == [], outside[:5]
    assert tally.no_retry_after == 0


def _read_all(base: str) -> dict[int, int]:
    async def main() -> dict[int, int]:
        out: dict[int, int] = {}
        sem = asyncio.Semaphore(50)
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:

            async def one(i: int) -> None:
                async with sem:
                    for _ in range(30):  # bounded: the other process may still hand over
                        r = await http.get(f"/Counter/name/o{i}/")
                        if r.status_code == 200:
                            out[i] = int(r.json()["n"])
                            return
                        await asyncio.sleep(0.5)
                    raise AssertionError(f"o{i}: HTTP {r.status_code} {r.text}")

            await asyncio.gather(*(one(i) for i in range(OBJECTS)))
        return out

    return asyncio.run(main())
