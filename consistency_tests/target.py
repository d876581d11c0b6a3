"""The durable object the consistency suite drives: one method per history op.

Each public method is one op of the history format (DESIGN §5) and runs as one turn, so its
reads and writes happen atomically with respect to every other op on the same object. Results
are shaped exactly as the history records them:

* ``get(key)`` → the value, or ``None`` if absent;
* ``put(key, value)`` → ``None`` (the value written is the invoke's);
* ``delete(key)`` → whether the key existed;
* ``cas(key, expected, new)`` → ``True`` if the stored value equalled *expected* (``None`` =
  absent) and *new* was written, else ``False`` (nothing written);
* ``list(bounds)`` → ``[[key, value], ...]`` in the order ``storage.list`` returns them;
* ``txn(micro)`` → the micro-ops ``[["r", k, v], ["w", k, v], ["d", k, None]]`` with each
  ``r`` filled in with the value read, applied all-or-nothing through ``storage.transaction()``.

Workloads never write ``None`` and give every written value a unique string, so a read pins
its writer.

Over HTTP (``duro serve``, the ``http`` mode of :mod:`duro.consistency.http_mode`), ``fetch``
maps ``POST /KV/name/<object>/<op>`` with a JSON body of the op's arguments to the same
methods, in the same turn: ``get``/``delete`` ``{"key"}``, ``put`` ``{"key", "value"}``, ``cas``
``{"key", "expected", "new"}``, ``list`` ``{"bounds"}``, ``txn`` ``{"micro"}``. It answers
``200 {"result": <the method's result>, "server": <env["server"] of the serving App>}``, so a
client learns which process served a request it sent elsewhere (a forwarded request); 400 for
a malformed body, 404 for an unknown op.
"""

from __future__ import annotations

import builtins
from typing import Any, Final

import duro
from duro.fetch import Request, Response

__all__ = ["HTTP_ARGS", "KV", "NAMESPACE"]

NAMESPACE = "KV"
HTTP_ARGS: Final = {"get": ("key",), "put": ("key", "value"), "delete": ("key",),
                    "cas": ("key", "expected", "new"), "list": ("bounds",), "txn": ("micro",)}
"""The JSON body fields of each op over HTTP, in the order of the method's arguments."""


class KV(duro.DurableObject):
    """A key-value register per key, with list and multi-key transactions."""

    async def get(self, key: str) -> Any:
        """The value under *key*, or None."""
        return await self.storage.get(key)

    async def put(self, key: str, value: Any) -> None:
        """Write *value* under *key*."""
        self.storage.put(key, value)

    async def delete(self, key: str) -> bool:
        """Delete *key*; whether it existed."""
        return bool(await self.storage.delete(key))

    async def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Compare-and-set: write *new* iff the value equals *expected* (None = absent)."""
        current = await self.storage.get(key)
        if current != expected:
            return False
        self.storage.put(key, new)
        return True

    async def list(self, bounds: dict[str, Any]) -> list[list[Any]]:
        """``storage.list(**bounds)`` as ``[[key, value], ...]`` in the order returned."""
        kw = {k: v for k, v in bounds.items() if v is not None}
        rows = await self.storage.list(**kw)
        return [[k, v] for k, v in rows.items()]

    async def txn(self, micro: builtins.list[builtins.list[Any]]
                  ) -> builtins.list[builtins.list[Any]]:
        """Apply the micro-ops atomically, in order; ``r`` entries get the value read."""
        out: builtins.list[builtins.list[Any]] = []
        async with self.storage.transaction() as t:
            for kind, key, value in micro:
                if kind == "r":
                    out.append(["r", key, await t.get(key)])
                elif kind == "w":
                    t.put(key, value)
                    out.append(["w", key, value])
                else:
                    t.delete(key)
                    out.append(["d", key, None])
        return out

    async def fetch(self, request: Request) -> Response:
        """The ops over HTTP: ``POST /<op>`` with the arguments as a JSON object (module doc)."""
        op = request.path.strip("/")
        names = HTTP_ARGS.get(op)
        if names is None or request.method != "POST":
            return Response.json({"error": f"no op {request.method} {request.path}"}, 404)
        try:
            body = await request.json()
            args = [body[n] for n in names]
        except (ValueError, KeyError, TypeError) as exc:
            return Response.json({"error": f"bad body for {op}: {exc!r}"}, 400)
        result = await getattr(self, op)(*args)
        server = self.env.get("server") if isinstance(self.env, dict) else None
        return Response.json({"result": result, "server": server})
