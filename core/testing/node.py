"""A duro process driven by JSON lines, for multi-process tests and benchmarks.

``python -m duro.testing.node BACKEND_URL [lease_ttl] [idle_timeout] [failover_wait]`` runs an
App with a ``Counter`` namespace (calls wait up to *failover_wait*, default 30 s, for a dead
owner's lease to end). It prints ``{"address": ...}`` once ready, then answers each command
line with one JSON line:

- ``{"id": n, "call": [ns, name, method, args]}`` → ``{"id": n, "ok": result}`` or
  ``{"id": n, "err": [class, message]}``; calls run concurrently.
- ``{"id": n, "stats": ns}``, ``{"id": n, "evict": true}``, ``{"id": n, "close": true}``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

import duro

__all__ = ["Counter", "Node"]


class Counter(duro.DurableObject):
    async def increment(self, by: int = 1) -> int:
        n = await self.storage.get("n", 0)
        self.storage.put("n", n + by)
        return int(n + by)

    async def read(self) -> int:
        return int(await self.storage.get("n", 0))

    async def whoami(self) -> int:
        return os.getpid()

    async def arm(self, delay: float) -> float:
        t = time.time() + delay
        self.storage.set_alarm(t)
        return t

    async def alarm(self, info: duro.AlarmInfo) -> None:
        fired = await self.storage.get("fired", [])
        self.storage.put("fired", [*fired, os.getpid()])
        delay = float(await self.storage.get("alarm_sleep", 0))
        if delay:
            await self.storage.sync()
            await asyncio.sleep(delay)
        self.storage.put("done", int(await self.storage.get("done", 0)) + 1)

    async def set(self, key: str, value: Any) -> None:
        self.storage.put(key, value)

    async def get(self, key: str) -> Any:
        return await self.storage.get(key)


class Node:
    """Starts ``python -m duro.testing.node`` and drives it over stdin/stdout (thread-safe)."""

    def __init__(self, url: str, ttl: float = 2.0, idle: float = 60.0,
                 failover_wait: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duro.testing.node", url, str(ttl), str(idle),
             str(failover_wait)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline() or "{}")
        assert "address" in hello, "node did not start"
        self.address, self.pid = hello["address"], hello["pid"]
        self._ids = itertools.count()
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._dead = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            self._answer(msg["id"], msg)
        with self._lock:  # the process died: its open calls never answer
            self._dead = True
            dead, self._pending = self._pending, {}
        for fut in dead.values():
            fut.set_result({"err": ["Died", "process ended"]})

    def _answer(self, n: int, msg: dict[str, Any]) -> None:
        """Complete call *n* with *msg*, unless something else already answered it."""
        with self._lock:
            fut = self._pending.pop(n, None)
        if fut is not None:
            fut.set_result(msg)

    def send(self, **cmd: Any) -> Future[Any]:
        n = next(self._ids)
        fut: Future[Any] = Future()
        with self._lock:
            if self._dead:
                fut.set_result({"err": ["NotSent", "process is dead"], "not_sent": True})
                return fut
            self._pending[n] = fut
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"id": n, **cmd}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the process is dead: the call was never sent
            # The reader thread may have seen the process end and answered "Died" already.
            self._answer(n, {"err": ["NotSent", "process is dead"], "not_sent": True})
        return fut

    def call_async(self, name: str, method: str, *args: Any) -> Future[Any]:
        return self.send(call=["Counter", name, method, list(args)])

    def call(self, name: str, method: str, *args: Any, timeout: float = 60) -> Any:
        msg = self.call_async(name, method, *args).result(timeout)
        if "err" in msg:
            raise RuntimeError(f"{msg['err'][0]}: {msg['err'][1]}")
        return msg["ok"]

    def stats(self) -> dict[str, int]:
        msg = self.send(stats="Counter").result(30)
        return dict(msg["ok"])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def main() -> None:
    url = sys.argv[1]
    ttl = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    idle = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    wait = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    app = duro.App(url, lease_ttl=ttl, drift_margin=min(0.5, ttl / 4), idle_timeout=idle,
                   alarm_poll_interval=0.2, call_timeout=30.0, failover_wait=wait)
    await app.start()
    ns = app.namespace(Counter)
    out = sys.stdout

    def reply(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    reply({"address": app.address, "pid": os.getpid(), "owner": app.owner_id})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def handle(cmd: dict[str, Any]) -> None:
        n = cmd.get("id")
        try:
            if "call" in cmd:
                _ns, name, method, args = cmd["call"]
                result = await getattr(ns.get_by_name(name), method)(*args)
                reply({"id": n, "ok": result})
            elif "stats" in cmd:
                reply({"id": n, "ok": ns.stats().as_dict()})
            elif "evict" in cmd:
                await asyncio.gather(*(i.evict() for i in list(ns._instances.values())))
                reply({"id": n, "ok": True})
            elif "close" in cmd:
                await app.close()
                reply({"id": n, "ok": True})
        except Exception as exc:  # noqa: BLE001 - sent back to the test as the call's error
            reply({"id": n, "err": [type(exc).__name__, str(exc)]})

    tasks = set()
    while line := await reader.readline():
        t = asyncio.ensure_future(handle(json.loads(line)))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    await app.close()


if __name__ == "__main__":
    asyncio.run(main())
