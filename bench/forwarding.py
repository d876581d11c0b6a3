"""Forwarding and handover costs: ``python -m duro.bench.forwarding [--backend URL]``.

Measures, in one run on this machine:

- a call to an object owned by this process vs the same call forwarded to the owning process
  over HTTP on loopback (sequential latency and concurrent throughput, with the ratio);
- the cost of authenticating the cluster channel: forwarded calls with signed requests (the
  default) against the same calls with authentication switched off (the test-only
  ``unsafe={"skip_cluster_auth"}``). Both pairs of Apps run side by side in this process, on
  separate backends, and the bench alternates many short rounds between them (the order
  swaps every round), so drift in the machine's load hits both alike. It reports the median
  signed/unsigned ratio of calls/s over the round pairs with its spread (quartiles, min-max),
  and the CPU time this process spends per forwarded call (``time.process_time``: both
  Apps, the forwarding one and the owner, run here), which a noisy machine disturbs far less
  than wall-clock rates; the target is a ratio of 0.9 or more;
- handover after ``kill -9`` of the owner: how long the first call through another process
  waits until it is served (the dead owner's lease must run out: about ``lease_ttl`` plus the
  drift margin);
- handover after a graceful close of the owner (the lease is released at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
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


async def _auth_rounds(urls: dict[str, str], rounds: int, n: int,
                       seq: int) -> dict[str, list[float]]:
    """Alternate short rounds of forwarded calls between a signed and an unsigned pair of Apps.

    Each round runs *seq* sequential calls, then *n* concurrent ones, through the forwarding
    App of one pair; the next round does the same through the other pair (the order swaps
    every round). Returns, per label, lists of per-round figures: ``rate`` (concurrent
    calls/s), ``cpu_us`` (process CPU µs per concurrent call), ``p50_ms`` (sequential).
    """
    out: dict[str, list[float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        stubs = {}
        for label, url in urls.items():
            unsafe = frozenset({"skip_cluster_auth"}) if label == "unsigned" else frozenset()
            owner = await stack.enter_async_context(duro.App(url, unsafe=unsafe))
            other = await stack.enter_async_context(duro.App(url, unsafe=unsafe))
            # The owner activates the object (one per label: the URLs may be one backend).
            await owner.namespace(Echo).get_by_name(f"auth-{label}").ping(0)
            stubs[label] = other.namespace(Echo).get_by_name(f"auth-{label}")
            await asyncio.gather(*(stubs[label].ping(i) for i in range(n)))  # warm the pool
        labels = list(stubs)
        for r in range(rounds):
            for label in labels if r % 2 == 0 else labels[::-1]:
                stub = stubs[label]
                lat = []
                for i in range(seq):
                    t = time.perf_counter()
                    await stub.ping(i)
                    lat.append(time.perf_counter() - t)
                # Every round starts from a clean heap: otherwise whether a full collection
                # (tens of ms) lands inside a 0.1 s round decides most of its variance.
                gc.collect()
                t, cpu = time.perf_counter(), time.process_time()
                await asyncio.gather(*(stub.ping(i) for i in range(n)))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - t
                out.setdefault(f"{label}_rate", []).append(n / wall)
                out.setdefault(f"{label}_cpu_us", []).append(cpu / n * 1e6)
                out.setdefault(f"{label}_p50_ms", []).append(statistics.median(lat) * 1e3)
    return out


def _spread(xs: list[float]) -> str:
    """``median [IQR q1..q3, range min..max]`` of *xs*."""
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"{q[1]:.3f} [IQR {q[0]:.3f}..{q[2]:.3f}, range {min(xs):.3f}..{max(xs):.3f}]"


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
    parser.add_argument("--auth-rounds", type=int, default=40,
                        help="rounds per mode, alternating signed and unsigned")
    parser.add_argument("--auth-calls", type=int, default=None,
                        help="concurrent calls per round (default: --calls)")
    parser.add_argument("--auth-seq", type=int, default=50,
                        help="sequential calls per round (for the p50)")
    parser.add_argument("--no-handover", action="store_true", help="skip the handover figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        url = args.backend or f"sqlite:///{tmp}/fwd.db"
        calls = asyncio.run(_calls(url, args.calls))
        urls = {label: args.backend or f"sqlite:///{tmp}/{label}.db"
                for label in ("signed", "unsigned")}
        rounds = asyncio.run(_auth_rounds(urls, args.auth_rounds, args.auth_calls or args.calls,
                                          args.auth_seq))
        handover = {} if args.no_handover else _handover(url, args.lease_ttl)
    console = Console(width=max(Console().width, 110))
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
    med = {k: statistics.median(v) for k, v in rounds.items()}
    pairs = list(zip(rounds["signed_rate"], rounds["unsigned_rate"], strict=True))
    rate_ratio = [s / u for s, u in pairs]
    cpu_ratio = [u / s for s, u in zip(rounds["signed_cpu_us"], rounds["unsigned_cpu_us"],
                                       strict=True)]
    p50_ratio = [s / u for s, u in zip(rounds["signed_p50_ms"], rounds["unsigned_p50_ms"],
                                       strict=True)]
    auth = Table(title=f"cluster authentication: {len(pairs)} alternating round pairs "
                       "(median of per-pair ratios [quartiles, range]; target >= 0.9)")
    for col in ("measure (median per round)", "signed", "unsigned", "signed / unsigned"):
        auth.add_column(col, justify="right")
    auth.add_row("forwarded concurrent calls/s", f"{med['signed_rate']:,.0f}",
                 f"{med['unsigned_rate']:,.0f}", _spread(rate_ratio))
    auth.add_row("calls per CPU second (1e6 / CPU µs per call)",
                 f"{1e6 / med['signed_cpu_us']:,.0f}", f"{1e6 / med['unsigned_cpu_us']:,.0f}",
                 _spread(cpu_ratio))
    auth.add_row("process CPU µs per forwarded call (both Apps)", f"{med['signed_cpu_us']:.1f}",
                 f"{med['unsigned_cpu_us']:.1f}",
                 f"+{med['signed_cpu_us'] - med['unsigned_cpu_us']:.1f} µs signed")
    low = {k: statistics.quantiles(v, n=4)[0] for k, v in rounds.items() if k.endswith("_cpu_us")}
    auth.add_row("the same, lower quartile (the least disturbed rounds)",
                 f"{low['signed_cpu_us']:.1f}", f"{low['unsigned_cpu_us']:.1f}",
                 f"ratio {low['unsigned_cpu_us'] / low['signed_cpu_us']:.3f}, "
                 f"+{low['signed_cpu_us'] - low['unsigned_cpu_us']:.1f} µs signed")
    auth.add_row("forwarded sequential latency p50 (ms)", f"{med['signed_p50_ms']:.3f}",
                 f"{med['unsigned_p50_ms']:.3f}", _spread(p50_ratio))
    console.print(auth)
    wall, cpu = statistics.median(rate_ratio), statistics.median(cpu_ratio)
    console.print(f"signed / unsigned forwarded calls: wall-clock {wall:.3f} (median of "
                  f"{len(pairs)}), CPU-time {cpu:.3f}; target >= 0.9: "
                  f"{'met' if min(wall, cpu) >= 0.9 else 'MISSED'}")
    if not handover:
        return
    ho = Table(title=f"handover to another process (lease_ttl={args.lease_ttl} s)")
    ho.add_column("owner", justify="left")
    ho.add_column("first call served after (s)", justify="right")
    for how, seconds in handover.items():
        ho.add_row(how, f"{seconds:.2f}")
    console.print(ho)


if __name__ == "__main__":
    main()
