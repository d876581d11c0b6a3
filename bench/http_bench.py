"""HTTP requests/s to durable objects, against a bare Starlette handler doing the same work.

    python -m duro.bench.http_bench [--seconds 3] [--clients 32] [--objects 64] [--json out.json]

Every request is ``POST /<name>/increment``: read a counter, write counter + 1, answer once the
write is durable (SQLite, WAL, ``synchronous=FULL``). Measured, in one run on this machine:

- ``duro direct``: two ``duro serve`` processes on one SQLite file, requests sent to the
  process that owns the objects;
- ``duro forwarded``: the same requests sent to the other process, which forwards each one to
  the owner (one extra HTTP hop);
- ``baseline``: a bare Starlette handler on uvicorn doing the same read-modify-write with
  ``sqlite3`` (one connection, one transaction per request, a thread for the blocking calls);

each for one hot object and spread over ``--objects`` objects. The load generator is a minimal
keep-alive HTTP/1.1 client (asyncio streams), so it costs far less than the servers. Results
are ratios against the baseline from the same run; the data lives in a temporary directory
under ``--dir`` (default: the current directory, a real disk rather than tmpfs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duro
from duro.fetch import Request, Response

__all__ = ["BenchCounter", "main", "make_app"]


class BenchCounter(duro.DurableObject):
    """``POST /increment`` adds one and answers the new value."""

    async def fetch(self, request: Request) -> Response:
        n = int(await self.storage.get("n", 0)) + 1
        self.storage.put("n", n)
        return Response(str(n), media_type="text/plain")


def make_app() -> duro.App:
    """The App ``duro serve duro.bench.http_bench:make_app`` runs."""
    app = duro.App(idle_timeout=600.0, lease_ttl=30.0, max_queue=100_000)
    app.namespace(BenchCounter, "c")
    return app


# -- baseline server --------------------------------------------------------------------------


def baseline_server(port: int, db: str) -> None:
    """A bare Starlette app on uvicorn: the same read-modify-write with sqlite3."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request as SRequest
    from starlette.responses import Response as SResponse
    from starlette.routing import Route

    pool = ThreadPoolExecutor(1)
    conn: list[sqlite3.Connection] = []

    def setup() -> None:
        c = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID")
        conn.append(c)

    def increment(name: str) -> int:
        c = conn[0]
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute("SELECT v FROM kv WHERE k = ?", (name,)).fetchone()
            n = (row[0] if row else 0) + 1
            c.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (name, n))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return int(n)

    pool.submit(setup).result()

    async def handler(request: SRequest) -> SResponse:
        n = await asyncio.get_running_loop().run_in_executor(
            pool, increment, request.path_params["name"])
        return SResponse(str(n), media_type="text/plain")

    web = Starlette(routes=[Route("/{name}/increment", handler, methods=["POST"])])
    print("ready", flush=True)
    uvicorn.run(web, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="off")


# -- load generator ---------------------------------------------------------------------------


@dataclass
class Run:
    """One measurement."""

    label: str
    objects: int
    ops: int
    seconds: float
    latencies: list[float]

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else 0.0


async def _client(host: str, port: int, paths: list[str], stop_at: float, lat: list[float],
                  counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            path = random.choice(paths)
            t0 = time.perf_counter()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         "Content-Length: 0\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}")
            lat.append(time.perf_counter() - t0)
            counts[0] += 1
    finally:
        writer.close()


async def load(address: str, paths: list[str], clients: int, seconds: float,
               warmup: float = 0.5) -> tuple[int, float, list[float]]:
    """Run *clients* keep-alive connections for *seconds*; return ops, seconds, latencies."""
    host, port = address.rsplit(":", 1)
    end = time.perf_counter() + warmup
    await asyncio.gather(*(_client(host, int(port), paths, end, [], [0])
                           for _ in range(clients)))
    lat: list[float] = []
    counts = [0]
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(host, int(port), paths, t0 + seconds, lat, counts)
                           for _ in range(clients)))
    return counts[0], time.perf_counter() - t0, lat


# -- orchestration ----------------------------------------------------------------------------


def _start(cmd: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=cwd)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{cmd} did not start")
    return proc, line


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_port(port: int) -> None:
    import socket

    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(seconds: float, clients: int, objects: int, workdir: Path) -> list[dict[str, Any]]:
    """Run every configuration; return result rows (report schema of duro.bench)."""
    url = f"sqlite:///{workdir.absolute()}/duro.db"
    serve = [sys.executable, "-m", "duro.serve_cli", "duro.bench.http_bench:make_app",
             "--port", "0", "--backend", url]
    procs: list[subprocess.Popen[str]] = []
    runs: dict[tuple[str, int], Run] = {}
    try:
        a, line_a = _start(serve, workdir)
        procs.append(a)
        b, line_b = _start(serve, workdir)
        procs.append(b)
        addr_a = line_a.split()[2].removeprefix("http://")
        addr_b = line_b.split()[2].removeprefix("http://")
        port = _free_port()
        base, _ = _start([sys.executable, "-m", "duro.bench.http_bench", "--baseline-server",
                          str(port), str(workdir / "baseline.db")], workdir)
        procs.append(base)
        addr_base = f"127.0.0.1:{port}"
        _wait_port(port)
        for n in (1, objects):
            names = [f"obj{i}" for i in range(n)]
            duro_paths = [f"/c/name/{x}/increment" for x in names]
            # Activate every object on A first, so B forwards all of them.
            asyncio.run(_touch(addr_a, duro_paths))
            for label, addr, paths in (
                ("baseline", addr_base, [f"/{x}/increment" for x in names]),
                ("duro direct", addr_a, duro_paths),
                ("duro forwarded", addr_b, duro_paths),
            ):
                ops, secs, lat = asyncio.run(load(addr, paths, clients, seconds))
                runs[(label, n)] = Run(label, n, ops, secs, lat)
                r = runs[(label, n)]
                print(f"  {label:15} objects={n:<4} {r.ops_per_s:9.0f} req/s  "
                      f"p50 {r.pct(0.5):6.2f} ms  p99 {r.pct(0.99):6.2f} ms", flush=True)
    finally:
        for p in procs:
            _stop(p)
    rows: list[dict[str, Any]] = []
    for (label, n), r in runs.items():
        if label == "baseline":
            continue
        base_run = runs[("baseline", n)]
        rows.append({
            "workload": f"http-increment-{'one-object' if n == 1 else 'many-objects'}",
            "mode": label.removeprefix("duro "), "backend": "sqlite", "clients": clients,
            "objects": n, "value_size": 8, "ops": r.ops, "seconds": round(r.seconds, 3),
            "ops_per_s": round(r.ops_per_s, 1), "p50_ms": round(r.pct(0.5), 3),
            "p99_ms": round(r.pct(0.99), 3), "baseline": "starlette+sqlite3",
            "baseline_ops_per_s": round(base_run.ops_per_s, 1),
            "baseline_p50_ms": round(base_run.pct(0.5), 3),
            "baseline_p99_ms": round(base_run.pct(0.99), 3),
            "ratio": round(r.ops_per_s / base_run.ops_per_s, 3) if base_run.ops_per_s else None,
        })
    return rows


async def _touch(address: str, paths: list[str]) -> None:
    host, port = address.rsplit(":", 1)
    for path in paths:
        await _one(host, int(port), path)


async def _one(host: str, port: int, path: str) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
                     .encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line[15:]) for line in head.split(b"\r\n")
                       if line[:15].lower() == b"content-length:"), 0)
        await reader.readexactly(length)
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m duro.bench.http_bench",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--dir", default=".", help="where the temporary data directory goes")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--baseline-server", nargs=2, metavar=("PORT", "DB"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server:
        baseline_server(int(args.baseline_server[0]), args.baseline_server[1])
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="duro-http-bench-", dir=args.dir)).absolute()
    try:
        print(f"HTTP increments, {args.clients} clients, {args.seconds:g} s each "
              f"(data in {workdir})", flush=True)
        rows = measure(args.seconds, args.clients, args.objects, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'workload':32} {'mode':10} {'req/s':>9} {'baseline':>9} {'ratio':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7}")
    for r in rows:
        print(f"{r['workload']:32} {r['mode']:10} {r['ops_per_s']:9.0f} "
              f"{r['baseline_ops_per_s']:9.0f} {r['ratio']:6.2f} {r['p50_ms']:7.2f} "
              f"{r['p99_ms']:7.2f}")
    if args.json:
        report = {
            "schema": 1,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "versions": {"duro": duro.__version__},
            "config": {"seconds": args.seconds, "clients": args.clients,
                       "objects": args.objects, "sync": "full"},
            "results": rows,
            "targets": [],
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
