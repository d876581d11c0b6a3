"""The durable object the consistency suite drives: one method per history op.

Each public method is one op of the history format (docs/reference/history.md) and runs as one
turn, so its reads and writes happen atomically with respect to every other op on the same
object. Results are shaped exactly as the history records them:

* ``get(key)`` → the value, or ``None`` if absent;
* ``put(key, value)`` → ``None`` (the value written is the invoke's);
* ``delete(key)`` → whether the key existed;
* ``cas(key, expected, new)`` → ``True`` if the stored value equalled *expected* (``None`` =
  absent) and *new* was written, else ``False`` (nothing written);
* ``list(bounds)`` → ``[[key, value], ...]`` in the order ``storage.list`` returns them;
* ``txn(micro)`` → the micro-ops ``[["r", k, v], ["w", k, v], ["d", k, None]]`` with each
  ``r`` filled in with the value read, applied all-or-nothing through ``storage.transaction()``
  (a txn of reads only is one ``storage.get_many``);
* ``delete_all(keys)`` → ``storage.delete_all()``, answered as the txn ``[["d", k, None], …]``
  over *keys* (every key the workload uses, the alarm's included);
* ``alarm_get()``, ``alarm_set(when)``, ``alarm_delete()`` → the alarm, which the history
  records as the key ``!alarm`` (:data:`duro.consistency.workloads.ALARM_KEY`).

Objects are named, or given as raw IDs ``id:<64 hex>`` (:func:`object_id`).

Workloads never write ``None`` and give every written value a unique string, so a read pins
its writer.

Over HTTP (``duro serve``, the ``http`` mode of :mod:`duro.consistency.http_mode`), ``fetch``
maps ``POST /KV/name/<object>/<op>`` (or ``/KV/id/<hex>/<op>``) with a JSON body of the op's
arguments to the same methods, in the same turn (:data:`HTTP_ARGS` names the fields). It answers
``200 {"result": <the method's result>, "server": <env["server"] of the serving App>}``, so a
client learns which process served a request it sent elsewhere (a forwarded request); 400 for
a malformed body, 404 for an unknown op.
"""

from __future__ import annotations

import builtins
import hashlib
from typing import Any, Final

import duro
from duro.fetch import Request, Response
from duro.ids import ObjectId, id_from_name, id_from_string

__all__ = ["HTTP_ARGS", "KV", "NAMESPACE", "object_id", "object_path", "shared_prefix_ids"]

NAMESPACE = "KV"
HTTP_ARGS: Final = {"get": ("key",), "put": ("key", "value"), "delete": ("key",),
                    "cas": ("key", "expected", "new"), "list": ("bounds",), "txn": ("micro",),
                    "alarm_get": (), "alarm_set": ("when",), "alarm_delete": (),
                    "delete_all": ("keys",)}
"""The JSON body fields of each op over HTTP, in the order of the method's arguments."""
RAW_ID: Final = "id:"


def object_id(name: str) -> ObjectId:
    """The ID of a workload object: ``id:<64 hex>`` is that ID, anything else a name."""
    if name.startswith(RAW_ID):
        return id_from_string(NAMESPACE, name[len(RAW_ID):])
    return id_from_name(NAMESPACE, name)


def object_path(name: str) -> str:
    """The object's part of an HTTP route: ``id/<hex>`` or ``name/<name>``."""
    if name.startswith(RAW_ID):
        return f"id/{name[len(RAW_ID):]}"
    return f"name/{name}"


def shared_prefix_ids(seed: str, n: int) -> list[str]:
    """*n* raw object IDs (``id:<hex>``) whose bodies differ only in their last two bytes.

    Minted like any ID of the namespace (so ``id_from_string`` takes them), they share 44 of
    their 64 hex characters: a backend that keys objects by a cut-down ID mixes them up.
    """
    from duro.ids import _make

    stem = hashlib.blake2b(seed.encode(), digest_size=22).digest()
    return [RAW_ID + _make(NAMESPACE, stem + i.to_bytes(2, "big"), None).hex for i in range(n)]


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

    async def alarm_get(self) -> float | None:
        """The alarm time, or None."""
        return await self.storage.get_alarm()

    async def alarm_set(self, when: float) -> None:
        """Set the alarm to *when* (epoch seconds)."""
        self.storage.set_alarm(when)

    async def alarm_delete(self) -> bool:
        """Delete the alarm; whether there was one."""
        existed = await self.storage.get_alarm() is not None
        self.storage.delete_alarm()
        return existed

    async def delete_all(self, keys: builtins.list[str]) -> builtins.list[builtins.list[Any]]:
        """``storage.delete_all()``, recorded as a txn deleting *keys* (every key in use)."""
        self.storage.delete_all()
        return [["d", k, None] for k in keys]

    async def txn(self, micro: builtins.list[builtins.list[Any]]
                  ) -> builtins.list[builtins.list[Any]]:
        """Apply the micro-ops atomically, in order; ``r`` entries get the value read.

        Reads only: one ``storage.get_many`` (missing keys read as None).
        """
        if micro and all(m[0] == "r" for m in micro):
            got = await self.storage.get_many([m[1] for m in micro])
            return [["r", m[1], got.get(m[1])] for m in micro]
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
