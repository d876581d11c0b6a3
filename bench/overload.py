"""Overload and failover figures for two ``duro serve`` processes on one SQLite file.

    python -m duro.bench.overload [--seconds 5] [--objects 1000] [--ttl 5] [--json out.json]

Every request is ``POST /c/name/<obj>/increment`` (read, write + 1, answer once durable). In
one run it reports:

- requests/s and p50/p99 with 150 and with 1,500 concurrent clients, spread over both
  processes (so about half the requests are forwarded); 503s are counted, not retried;
- server CPU time per request: ``duro`` (requests sent to the owning process; both duro
  processes counted) against a bare Starlette handler doing the same read-modify-write with
  ``sqlite3`` (the baseline of :mod:`duro.bench.http_bench`), measured from ``/proc`` in the
  same run, in ``--cpu-rounds`` alternating rounds of ``--cpu-seconds``: the median of the
  per-round-pair ratios, with quartiles and range; target <= 1.5x. Closed loop by default
  (duro, which commits many objects' writes together, then answers more requests/s than the
  baseline, which commits each alone); ``--cpu-rate`` offers both the same requests/s;
- ownership moves (epoch changes) while 1,500 clients overload the pair with no fault;
  target 0;
- failover time: kill -9 of an object's owner to the first 200 from the other process;
  target <= lease TTL + 1 s.

Linux only (CPU time comes from ``/proc/<pid>/stat``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duro
from duro.bench.http_bench import BenchCounter, _free_port, _start, _stop, _wait_port

__all__ = ["main", "make_app"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def make_app() -> duro.App:
    """The App both processes run (lease TTL from ``DURO_BENCH_TTL``)."""
    ttl = float(os.environ.get("DURO_BENCH_TTL", "5"))
    app = duro.App(idle_timeout=600.0, lease_ttl=ttl, drift_margin=min(1.0, ttl / 4))
    app.namespace(BenchCounter, "c")
    return app


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process *pid*."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


async def _client(addrs: list[str], paths: list[str], stop_at: float, lat: list[float],
                  statuses: dict[int, int], interval: float = 0.0) -> None:
    host, port = random.choice(addrs).rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    next_at = time.perf_counter() + random.random() * interval
    try:
        while time.perf_counter() < stop_at:
            if interval:  # paced: one request every *interval* seconds (if answers keep up)
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
            path = random.choice(paths)
            t0 = time.perf_counter()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
                         .encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next((int(line[15:]) for line in head.split(b"\r\n")
                           if line[:15].lower() == b"content-length:"), 0)
            await reader.readexactly(length)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                lat.append(time.perf_counter() - t0)
            else:
                await asyncio.sleep(0.05)
    except (OSError, asyncio.IncompleteReadError):
        statuses[-1] = statuses.get(-1, 0) + 1
    finally:
        writer.close()


def _load(addrs: list[str], paths: list[str], clients: int,
          seconds: float, rate: float = 0.0) -> dict[str, Any]:
    lat: list[float] = []
    statuses: dict[int, int] = {}

    async def run() -> float:
        t0 = time.perf_counter()
        interval = clients / rate if rate else 0.0
        await asyncio.gather(*(_client(addrs, paths, t0 + seconds, lat, statuses, interval)
                               for _ in range(clients)))
        return time.perf_counter() - t0

    secs = asyncio.run(run())
    lat.sort()

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else 0.0

    return {"clients": clients, "ok": len(lat), "seconds": round(secs, 2),
            "ok_per_s": round(len(lat) / secs, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "statuses": statuses}


def _epochs(url: str, objects: int) -> list[int]:
    from duro.backends import ObjectRef, open_backend
    from duro.ids import id_from_name

    backend = open_backend(url)
    try:
        leases = [backend.read_lease(ObjectRef("c", id_from_name("c", f"o{i}").hex))
                  for i in range(objects)]
        return [0 if lease is None else lease.epoch for lease in leases]
    finally:
        backend.close()


def _post_until_ok(addr: str, path: str, limit: float) -> float:
    """Seconds until a POST to *path* at *addr* answers 200 (polls every 50 ms)."""
    import httpx

    t0 = time.monotonic()
    with httpx.Client(base_url=f"http://{addr}", timeout=limit) as http:
        while time.monotonic() - t0 < limit:
            if http.post(path).status_code == 200:
                return time.monotonic() - t0
            time.sleep(0.05)
    return float("inf")


def measure(seconds: float, objects: int, ttl: float, workdir: Path, cpu_rounds: int = 6,
            cpu_seconds: float = 2.0, cpu_only: bool = False,
            cpu_rate: float = 0.0) -> dict[str, Any]:
    """Run every measurement; return the report."""
    url = f"sqlite:///{workdir.absolute()}/duro.db"
    serve = [sys.executable, "-m", "duro.serve_cli", "duro.bench.overload:make_app",
             "--port", "0", "--backend", url]
    os.environ["DURO_BENCH_TTL"] = str(ttl)
    procs: list[subprocess.Popen[str]] = []
    out: dict[str, Any] = {"objects": objects, "seconds": seconds, "lease_ttl": ttl}
    paths = [f"/c/name/o{i}/increment" for i in range(objects)]
    try:
        a, line_a = _start(serve, workdir)
        b, line_b = _start(serve, workdir)
        procs += [a, b]
        addr_a = line_a.split()[2].removeprefix("http://")
        addr_b = line_b.split()[2].removeprefix("http://")
        port = _free_port()
        base, _ = _start([sys.executable, "-m", "duro.bench.http_bench", "--baseline-server",
                          str(port), str(workdir / "baseline.db")], workdir)
        procs.append(base)
        _wait_port(port)
        addr_base = f"127.0.0.1:{port}"
        _load([addr_a], paths, 50, 1.0)  # warm up A

        # CPU per request, same work, same run: duro at the owner vs the bare handler, in
        # alternating rounds (the order swaps every round) so the machine's drift hits both;
        # the ratio is the median of the per-round-pair ratios, with its spread.
        targets = (
            ("duro", addr_a, [a.pid, b.pid], paths),
            ("baseline", addr_base, [base.pid], [f"/o{i}/increment" for i in range(objects)]),
        )
        rounds: dict[str, list[dict[str, Any]]] = {"duro": [], "baseline": []}
        for i in range(cpu_rounds):
            for label, addr, pids, ps in targets if i % 2 == 0 else targets[::-1]:
                cpu0 = sum(_cpu(p) for p in pids)
                r = _load([addr], ps, 150, cpu_seconds, cpu_rate)
                cpu = sum(_cpu(p) for p in pids) - cpu0
                r["cpu_ms_per_request"] = cpu / max(r["ok"], 1) * 1000
                rounds[label].append(r)
        ratios = sorted(d["cpu_ms_per_request"] / b["cpu_ms_per_request"]
                        for d, b in zip(rounds["duro"], rounds["baseline"], strict=True))
        for label, rs in rounds.items():
            ok = sum(r["ok"] for r in rs)
            secs = sum(r["seconds"] for r in rs)
            cpu_ms = statistics.median(r["cpu_ms_per_request"] for r in rs)
            out[f"cpu_{label}"] = {"rounds": len(rs), "ok": ok, "ok_per_s": round(ok / secs, 1),
                                   "cpu_ms_per_request": round(cpu_ms, 3),
                                   "cpu_ms_per_request_rounds": [
                                       round(r["cpu_ms_per_request"], 3) for r in rs]}
            print(f"  {label:9} 150 clients: {ok / secs:7.0f} req/s, {cpu_ms:.3f} ms CPU per "
                  f"request (median of {len(rs)} rounds)", flush=True)
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out["cpu_ratio"] = round(statistics.median(ratios), 2)
        out["cpu_ratio_spread"] = {"q1": round(q[0], 2), "q3": round(q[2], 2),
                                   "min": round(ratios[0], 2), "max": round(ratios[-1], 2)}
        print(f"  CPU per request, duro / baseline: {out['cpu_ratio']} (median of "
              f"{len(ratios)} round pairs; IQR {q[0]:.2f}..{q[2]:.2f}, range "
              f"{ratios[0]:.2f}..{ratios[-1]:.2f})", flush=True)
        if cpu_only:
            return out

        # Throughput and latency over both processes; moves under 10x load with no fault.
        for clients in (150, 1500):
            before = _epochs(url, objects)
            r = _load([addr_a, addr_b], paths, clients, seconds)
            # A first activation (epoch 0 -> 1) is not a move.
            r["ownership_moves"] = sum(x and x != y for x, y in zip(
                before, _epochs(url, objects), strict=True))
            out[f"load_{clients}"] = r
            print(f"  {clients:5} clients over both: {r['ok_per_s']:7.0f} req/s, p50 "
                  f"{r['p50_ms']} ms, p99 {r['p99_ms']} ms, statuses {r['statuses']}, "
                  f"ownership moves {r['ownership_moves']}", flush=True)

        # Failover: kill -9 the owner of o0, time to the first 200 from B.
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        t = _post_until_ok(addr_b, paths[0], ttl * 3 + 10)
        out["failover_s"] = round(t, 2)
        print(f"  failover after kill -9: {t:.2f} s (lease TTL {ttl:g} s)", flush=True)
    finally:
        for p in procs:
            _stop(p)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m duro.bench.overload",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--ttl", type=float, default=5.0)
    parser.add_argument("--dir", default=".", help="where the temporary data directory goes")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--cpu-rounds", type=int, default=6,
                        help="alternating duro/baseline rounds for CPU per request")
    parser.add_argument("--cpu-seconds", type=float, default=2.0, help="length of one round")
    parser.add_argument("--cpu-rate", type=float, default=0.0,
                        help="offered requests/s in the CPU rounds, the same for duro and the "
                             "baseline (default 0: closed loop, each as fast as it answers)")
    parser.add_argument("--cpu-only", action="store_true",
                        help="measure only CPU per request")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="duro-overload-", dir=args.dir)).absolute()
    try:
        print(f"overload bench: {args.objects} objects, {args.seconds:g} s per run",
              flush=True)
        report = measure(args.seconds, args.objects, args.ttl, workdir, args.cpu_rounds,
                         args.cpu_seconds, args.cpu_only, args.cpu_rate)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    targets = {"cpu_ratio <= 1.5": report["cpu_ratio"] <= 1.5}
    if not args.cpu_only:
        targets |= {
            "failover_s <= ttl + 1": report["failover_s"] <= args.ttl + 1,
            "ownership moves at 1,500 clients == 0":
                report["load_1500"]["ownership_moves"] == 0,
        }
    report["targets"] = targets
    print(f"\nCPU per request: {report['cpu_ratio']}x the bare handler "
          f"(IQR {report['cpu_ratio_spread']['q1']}..{report['cpu_ratio_spread']['q3']}); "
          f"failover {report.get('failover_s', '-')} s; targets: " +
          ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    if args.json:
        report["versions"] = {"duro": duro.__version__}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
