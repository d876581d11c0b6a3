"""Forwarding and handover costs: ``python -m duro.bench.forwarding [--backend URL]``.

Measures, in one run on this machine:

- a call to an object owned by this process vs the same call forwarded to the owning process
  over HTTP on loopback (sequential latency and concurrent throughput, with the ratio);
- the cost of authenticating the cluster channel: forwarded calls/s with signed requests (the
  default) against the same run with authentication switched off (the test-only
  ``unsafe={"skip_cluster_auth"}``), alternating rounds, best of each; the target is a ratio of
  0.9 or more;
- handover after ``kill -9`` of the owner: how long the first call through another process
  waits until it is served (the dead owner's lease must run out: about ``lease_ttl`` plus the
  drift margin);
- handover after a graceful close of the owner (the lease is released at once).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import duro
from duro.testing.node import Node


class Echo(duro.DurableObject):
    """A call with no storage: measures the path, not the disk."""

    async def ping(self, n: int) -> int:
        return n


async def _calls(url: str, n: int, *, auth: bool = True) -> dict[str, float]:
    out: dict[str, float] = {}
    unsafe = frozenset() if auth else frozenset({"skip_cluster_auth"})
    async with duro.App(url, unsafe=unsafe) as owner, duro.App(url, unsafe=unsafe) as other:
        local = owner.namespace(Echo).get_by_name("fwd")
        remote = other.namespace(Echo).get_by_name("fwd")
        await local.ping(0)  # the owner activates the object
        for label, stub in (("local", local), ("forwarded", remote)):
            lat = []
            for i in range(n):
                t = time.perf_counter()
                await stub.ping(i)
                lat.append(time.perf_counter() - t)
            out[f"{label}_p50_ms"] = statistics.median(lat) * 1e3
            t = time.perf_counter()
            await asyncio.gather(*(stub.ping(i) for i in range(n)))
            out[f"{label}_concurrent_per_s"] = n / (time.perf_counter() - t)
        assert other.stats()["Echo"].forwarded >= 2 * n
    return out


def _handover(url: str, ttl: float) -> dict[str, float]:
    result = {}
    for how in ("kill -9", "graceful close"):
        a, b = Node(url, ttl=ttl), Node(url, ttl=ttl)
        try:
            name = f"h-{how[0]}"
            a.call(name, "increment")
            t = time.perf_counter()
            if how == "kill -9":
                a.kill()
            else:
                a.send(close=True).result(60)
            b.call(name, "increment", timeout=120)
            result[how] = time.perf_counter() - t
        finally:
            a.stop()
            b.stop()
    return result


def main() -> None:
    """Run the measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", help="a backend shared between processes (default: a "
                        "fresh SQLite file in a temporary directory)")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--auth-rounds", type=int, default=3,
                        help="alternating rounds with and without cluster authentication")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        url = args.backend or f"sqlite:///{tmp}/fwd.db"
        calls = asyncio.run(_calls(url, args.calls))
        signed, unsigned = [], []
        for _ in range(args.auth_rounds):
            unsigned.append(asyncio.run(_calls(url, args.calls, auth=False)))
            signed.append(asyncio.run(_calls(url, args.calls, auth=True)))
        handover = _handover(url, args.lease_ttl)
    console = Console()
    table = Table(title=f"forwarding and handover ({url.split('?')[0]})")
    for col in ("measure", "local", "forwarded", "forwarded / local"):
        table.add_column(col, justify="right")
    table.add_row("sequential latency p50 (ms)", f"{calls['local_p50_ms']:.3f}",
                  f"{calls['forwarded_p50_ms']:.3f}",
                  f"{calls['forwarded_p50_ms'] / calls['local_p50_ms']:.1f}x")
    table.add_row("concurrent calls/s", f"{calls['local_concurrent_per_s']:,.0f}",
                  f"{calls['forwarded_concurrent_per_s']:,.0f}",
                  f"{calls['forwarded_concurrent_per_s'] / calls['local_concurrent_per_s']:.3f}")
    console.print(table)
    best = {label: max(r["forwarded_concurrent_per_s"] for r in runs)
            for label, runs in (("signed", signed), ("unsigned", unsigned))}
    p50 = {label: min(r["forwarded_p50_ms"] for r in runs)
           for label, runs in (("signed", signed), ("unsigned", unsigned))}
    auth = Table(title="cluster authentication (HMAC-signed forwarded calls; target ratio >= 0.9)")
    for col in ("measure", "signed", "unsigned", "signed / unsigned"):
        auth.add_column(col, justify="right")
    auth.add_row("forwarded concurrent calls/s", f"{best['signed']:,.0f}",
                 f"{best['unsigned']:,.0f}", f"{best['signed'] / best['unsigned']:.3f}")
    auth.add_row("forwarded latency p50 (ms)", f"{p50['signed']:.3f}", f"{p50['unsigned']:.3f}",
                 f"{p50['signed'] / p50['unsigned']:.3f}")
    console.print(auth)
    ho = Table(title=f"handover to another process (lease_ttl={args.lease_ttl} s)")
    ho.add_column("owner", justify="left")
    ho.add_column("first call served after (s)", justify="right")
    for how, seconds in handover.items():
        ho.add_row(how, f"{seconds:.2f}")
    console.print(ho)


if __name__ == "__main__":
    main()
