"""A durable counter over HTTP: every name is its own counter, reachable from any process.

    duro serve examples/counter_http.py:app --port 8787
    curl -X POST 'http://127.0.0.1:8787/Counter/name/alice/increment?by=2'   # {"n":2}
    curl http://127.0.0.1:8787/Counter/name/alice/                            # {"n":2}

Run a second ``duro serve`` on the same backend (``--port 8788``): requests to it reach the
same object, forwarded to the process that owns it.
"""

from __future__ import annotations

import duro
from duro.fetch import Request, Response


class Counter(duro.DurableObject):
    """``GET /`` reads, ``POST /increment?by=N`` adds; also callable through stubs."""

    async def fetch(self, request: Request) -> Response:
        if request.path == "/" and request.method == "GET":
            return Response.json({"n": await self.value()})
        if request.path == "/increment" and request.method == "POST":
            try:
                by = int(request.query_params.get("by", "1"))
            except ValueError:
                return Response.text("by must be an integer", 400)
            return Response.json({"n": await self.increment(by)})
        return Response.text("not found", 404)

    async def increment(self, by: int = 1) -> int:
        n = await self.storage.get("n", 0)
        self.storage.put("n", n + by)  # the response leaves only once this is durable
        return int(n + by)

    async def value(self) -> int:
        return int(await self.storage.get("n", 0))


app = duro.App()
app.namespace(Counter)
