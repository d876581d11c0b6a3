"""Crash cycles on the power-loss filesystem: what a backend keeps of what duro acknowledged.

One cycle: mount :mod:`duro.testing.powerloss` over a backing directory; start a writer process
(an :class:`~duro.App` whose ``Sink`` objects each store unique keys and print one ``ack`` line
per write *after* the stub call returned, i.e. once duro said it was durable); after a seeded
random number of acknowledgements, cut the power (unsynced pages vanish, the writer sees EIO),
``kill -9`` the writer, unmount, mount again and open the backend directly. Every write ever
acknowledged, in this cycle or an earlier one, must be there, and the fencing state must be
intact: the recorded epoch is at least the one the writer held, a new acquire gets a higher one,
and a commit under the writer's epoch is refused with :class:`~duro.Fenced`.

``python -m duro.testing.durability [--cycles N] [--seed S]`` prints the table the README shows
under "Durability": per backend and ``sync`` level, writes acknowledged and lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duro
from duro.backends.base import Batch, ObjectRef
from duro.backends.registry import open_backend
from duro.codec import decode
from duro.ids import id_from_name
from duro.keys import encode_key
from duro.testing.powerloss import mounted

NAMESPACE = "Sink"
BACKENDS = ("sqlite", "lmdb")
SYNC_LEVELS = ("full", "normal", "off")


class Sink(duro.DurableObject):
    """Stores what it is told; the writer acknowledges each put once the call returns."""

    async def put(self, key: str, value: str) -> None:
        self.storage.put(key, value)


def backend_url(kind: str, directory: Path, sync: str) -> str:
    """The URL of a *kind* store inside *directory* at the given sync level."""
    if kind == "sqlite":
        return f"sqlite:///{directory / 'duro.db'}?sync={sync}"
    if kind == "lmdb":
        return f"lmdb:///{directory / 'duro.lmdb'}?sync={sync}"
    raise ValueError(f"no power-loss cycle for backend kind {kind!r}")


# -- the writer process ---------------------------------------------------------------------------


async def _write(url: str, cycle: int, objects: int, clients: int) -> None:
    async with duro.App(backend=url, listen=None, lease_ttl=3600.0) as app:
        ns = app.namespace(Sink)
        stubs = [ns.get_by_name(f"o{i}") for i in range(objects)]
        for i, stub in enumerate(stubs):  # activate (and so acquire) every object first
            await stub.put(f"c{cycle}-first", "x")
            print(json.dumps({"ack": [i, f"c{cycle}-first", "x"]}), flush=True)
        epochs = {s.name: s.epoch for s in await ns.list_objects(limit=objects)}
        print(json.dumps({"epochs": [epochs[f"o{i}"] for i in range(objects)]}), flush=True)

        async def client(c: int) -> None:
            for n in range(10**9):
                o = (c + n) % objects
                key, value = f"c{cycle}-{c}-{n}", f"v{cycle}-{c}-{n}" * (1 + n % 7)
                await stubs[o].put(key, value)
                print(json.dumps({"ack": [o, key, value]}), flush=True)

        await asyncio.gather(*(client(c) for c in range(clients)))


def writer_main(argv: list[str]) -> None:
    """``python -m duro.testing.durability write URL CYCLE OBJECTS CLIENTS``: runs until killed."""
    url, cycle, objects, clients = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    with contextlib.suppress(duro.DuroError, OSError):  # the power loss ends it; the test kills it
        asyncio.run(_write(url, cycle, objects, clients))
    # Stay alive: the harness kills this process (a crash) after cutting the power.
    signal.pause()


# -- the harness ----------------------------------------------------------------------------


@dataclass
class Acked:
    """What the writers acknowledged so far, and the epoch each object's writer held."""

    writes: dict[tuple[int, str], str] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)


@dataclass
class CycleResult:
    """The outcome of one crash cycle."""

    acked: int  # writes acknowledged in this cycle
    lost: int  # writes acknowledged (in any cycle so far) and missing after the crash
    pages_dropped: int
    fencing_ok: bool
    detail: str = ""


def _read_acks(proc: subprocess.Popen[str], want: int, acked: Acked, deadline: float) -> int:
    """Read the writer's lines until *want* acks of this cycle (or the deadline); the count."""
    assert proc.stdout is not None
    got = 0
    os.set_blocking(proc.stdout.fileno(), True)
    while got < want and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        msg = json.loads(line)
        if "ack" in msg:
            o, key, value = msg["ack"]
            acked.writes[(o, key)] = value
            got += 1
        elif "epochs" in msg:
            acked.epochs.update(enumerate(msg["epochs"]))
    return got


def _verify(url: str, objects: int, acked: Acked) -> tuple[int, bool, str]:
    """(acknowledged writes missing, fencing intact, detail) read straight from the backend."""
    backend = open_backend(url)
    try:
        refs = {o: ObjectRef(NAMESPACE, id_from_name(NAMESPACE, f"o{o}").hex)
                for o in range(objects)}
        lost = 0
        for o, ref in refs.items():
            keys = [k for (oo, k) in acked.writes if oo == o]
            found = backend.get_many(ref, [encode_key(k) for k in keys])
            for k in keys:
                raw = found.get(encode_key(k))
                if raw is None or decode(raw) != acked.writes[(o, k)]:
                    lost += 1
        problems = []
        for o, held in acked.epochs.items():
            lease = backend.read_lease(refs[o])
            recorded = 0 if lease is None else lease.epoch
            if recorded < held:
                problems.append(f"o{o}: recorded epoch {recorded} < writer's {held}")
                continue
            assert lease is not None
            # The writer is dead: take over as a process whose clock is past its lease.
            new = backend.acquire(refs[o], owner="verifier", address=None,
                                  now=lease.until + 1, until=lease.until + 61)
            if new.epoch <= held:
                problems.append(f"o{o}: takeover epoch {new.epoch} <= writer's {held}")
            try:
                backend.commit(refs[o], held, Batch(puts={b"zombie": b"x"}))
                problems.append(f"o{o}: a commit under the old epoch {held} landed")
            except duro.Fenced:
                pass
            backend.release(refs[o], new.epoch)
        return lost, not problems, "; ".join(problems)
    finally:
        backend.close()


@contextlib.contextmanager
def _writer(url: str, cycle: int, objects: int, clients: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "duro.testing.durability", "write", url, str(cycle), str(objects),
         str(clients)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def crash_cycles(kind: str, sync: str, cycles: int, seed: int, workdir: Path, *,
                 objects: int = 4, clients: int = 4, mutant: bool = False,
                 max_acks: int = 120, torn_seed: int | None = None) -> list[CycleResult]:
    """Run *cycles* crash cycles on one store; ``mutant`` acknowledges before fsync (sync=off
    behind a ``sync=full`` label), which these cycles must catch; ``torn_seed`` lets a random
    subset of the unsynced pages reach the disk at each crash."""
    rng = random.Random(seed)
    disk, mnt = workdir.resolve() / "disk", workdir.resolve() / "mnt"
    acked = Acked()
    results = []
    for cycle in range(cycles):
        want = rng.randint(objects + 1, max_acks)
        writer_url = backend_url(kind, mnt, "off" if mutant else sync)
        torn = None if torn_seed is None else torn_seed + cycle
        with mounted(disk, mnt, torn_seed=torn) as fs:
            before = len(acked.writes)
            with _writer(writer_url, cycle, objects, clients) as proc:
                _read_acks(proc, want, acked, time.monotonic() + 120)
                dropped, _ = fs.crash()
                os.killpg(proc.pid, signal.SIGKILL)
            got = len(acked.writes) - before
        with mounted(disk, mnt):
            lost, fencing_ok, detail = _verify(backend_url(kind, mnt, sync), objects, acked)
        results.append(CycleResult(got, lost, dropped, fencing_ok, detail))
    return results


def _table(cycles: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for kind in BACKENDS:
        for sync in SYNC_LEVELS:
            with tempfile.TemporaryDirectory(prefix="duro-powerloss-", dir=".") as tmp:
                res = crash_cycles(kind, sync, cycles, seed, Path(tmp))
            rows.append({"backend": kind, "sync": sync, "cycles": cycles,
                         "acked": sum(r.acked for r in res), "lost": max(r.lost for r in res),
                         "fencing_ok": all(r.fencing_ok for r in res)})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the durability table (or run the writer: ``write URL CYCLE OBJECTS CLIENTS``)."""
    import argparse

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["write"]:
        writer_main(args[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m duro.testing.durability")
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args(args)
    print("| backend | sync | crash cycles | writes acknowledged | acknowledged writes lost "
          "| fencing intact |")
    print("|---|---|---|---|---|---|")
    for row in _table(opts.cycles, opts.seed):
        print(f"| {row['backend']} | {row['sync']} | {row['cycles']} | {row['acked']} | "
              f"{row['lost']} | {'yes' if row['fencing_ok'] else 'NO'} |")


if __name__ == "__main__":
    main()
