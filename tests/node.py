"""A duro process for multi-process tests: an App driven by JSON lines on stdin.

Run as ``python tests/node.py BACKEND_URL [lease_ttl]``. It prints ``{"address": ...}`` once
ready, then answers each command line with one JSON line:

- ``{"id": n, "call": [ns, name, method, args]}`` → ``{"id": n, "ok": result}`` or
  ``{"id": n, "err": [class, message]}``; calls run concurrently.
- ``{"id": n, "stats": ns}``, ``{"id": n, "evict": true}``, ``{"id": n, "close": true}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import duro


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
        t = self.ctx_time() + delay
        self.storage.set_alarm(t)
        return t

    def ctx_time(self) -> float:
        import time

        return time.time()

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


async def main() -> None:
    url = sys.argv[1]
    ttl = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    idle = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    app = duro.App(url, lease_ttl=ttl, drift_margin=min(0.5, ttl / 4), idle_timeout=idle,
                   alarm_poll_interval=0.2, call_timeout=30.0)
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
        except Exception as exc:
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
