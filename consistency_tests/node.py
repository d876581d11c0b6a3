"""One OS process of a free-running consistency run: ``python -m duro.consistency.node CONFIG``.

*CONFIG* is a JSON file: ``url``, ``plans`` (this process's clients: ``client``, ``object``,
``ops`` as ``[f, key, arg, pad]``), ``history`` (this process's history file), ``acquires`` (file
of lease grants), ``first_process``, ``lease_ttl``, ``error_rate``, ``latency``, ``seed``,
``mutant``. The process starts a real :class:`duro.App` that listens on 127.0.0.1 (so calls
for objects another process owns are forwarded there), prints one JSON line
``{"ready": true, "pid", "owner", "address"}``, waits for a line on stdin (the start barrier),
runs its clients concurrently as asyncio tasks, and prints ``{"done": true, "injected": n,
"calls": n}``. Every history event and every lease grant is appended to its file as one
flushed line, so a ``kill -9`` loses nothing already recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from duro.app import App
from duro.backends import Backend, open_backend
from duro.consistency.faults import AcquireLog, FaultyBackend
from duro.consistency.history import Recorder
from duro.consistency.mutants import get_mutant
from duro.consistency.target import KV, object_id
from duro.consistency.workloads import ClientPlan, OpSpec, run_client

__all__ = ["main"]


def _plans(raw: list[dict[str, Any]]) -> list[ClientPlan]:
    return [ClientPlan(p["client"], p["object"], 0, [OpSpec(*o) for o in p["ops"]])
            for p in raw]


async def _run(cfg: dict[str, Any], out: TextIO) -> None:
    mutant = get_mutant(cfg.get("mutant"))
    real = open_backend(cfg["url"])
    backend: Backend = real
    faulty: FaultyBackend | None = None
    if cfg.get("error_rate", 0) > 0:
        faulty = FaultyBackend(real, rate=cfg["error_rate"], seed=cfg.get("seed", 0),
                               latency=cfg.get("latency", 0.0))
        backend = faulty
    if mutant is not None and mutant.wrap is not None:
        backend = mutant.wrap(backend)
    acq_fh = Path(cfg["acquires"]).open("a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process

    def sink(t: int, oid: str, epoch: int) -> None:
        acq_fh.write(json.dumps([t, oid, epoch]) + "\n")
        acq_fh.flush()

    logged = AcquireLog(backend, time.monotonic_ns, sink)
    ttl = float(cfg.get("lease_ttl", 1.0))
    app = App(logged, listen="127.0.0.1:0", lease_ttl=ttl, drift_margin=ttl / 4,
              idle_timeout=float(cfg.get("idle_timeout", 0.5)), call_timeout=60.0,
              alarm_poll_interval=1.0,
              unsafe=mutant.unsafe if mutant is not None else frozenset())
    await app.start()
    ns = app.namespace(KV)
    rec = Recorder(cfg["history"], first_process=int(cfg["first_process"]))
    out.write(json.dumps({"ready": True, "pid": os.getpid(), "owner": app.owner_id,
                          "address": app.address}) + "\n")
    out.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async def call(obj: str, method: str, args: tuple[Any, ...]) -> Any:
        return await getattr(ns.get(object_id(obj)), method)(*args)

    plans = _plans(cfg["plans"])
    tasks = [run_client(p, call, rec, str(object_id(p.object)),
                        new_process=rec.new_process) for p in plans]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    await app.close()
    rec.close()
    real.close()
    acq_fh.close()
    out.write(json.dumps({"done": True, "errors": errors,
                          "injected": faulty.total_injected if faulty else 0,
                          "calls": faulty.calls if faulty else 0}) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m duro.consistency.node CONFIG.json``."""
    args = sys.argv[1:] if argv is None else argv
    cfg = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    asyncio.run(_run(cfg, sys.stdout))


if __name__ == "__main__":
    main()
