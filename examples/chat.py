"""A chat room over hibernatable WebSockets, one durable object per room.

    duro serve examples/chat.py:app --port 8787
    open http://127.0.0.1:8787/ChatRoom/name/lobby/?user=ann

The page connects to ``ws://…/ChatRoom/name/lobby/ws?user=ann``. Messages are stored in the
room's storage (the last 100 are replayed on join) and broadcast to every socket in the room,
including those that reached another ``duro serve`` process on the same backend: that process
proxies the socket to the room's owner. ``ping`` is answered ``pong`` without waking the room.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import duro
from duro.fetch import Request, Response
from duro.websockets import WebSocket

PAGE = Path(__file__).with_name("chat.html")
KEEP = 100


class ChatRoom(duro.DurableObject):
    """Stores messages under ``msg:<seq>``; each socket's user name is its attachment."""

    async def on_activate(self) -> None:
        self.ctx.set_websocket_auto_response("ping", "pong")

    async def fetch(self, request: Request) -> Response:
        if request.websocket is not None and request.path == "/ws":
            user = (request.query_params.get("user") or "anon").strip()[:32] or "anon"
            ws = request.websocket
            self.ctx.accept_websocket(ws, tags=[f"user:{user}"])
            ws.serialize_attachment({"user": user})
            ws.send(json.dumps({"type": "history", "messages": await self.history()}))
            self._broadcast({"type": "join", "user": user, "online": self._online()})
            return Response(status=101)
        if request.method == "GET" and request.path == "/":
            return Response(PAGE.read_bytes(), media_type="text/html; charset=utf-8")
        if request.method == "GET" and request.path == "/messages":
            return Response.json(await self.history())
        return Response.text("not found", 404)

    async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
        user = (ws.deserialize_attachment() or {}).get("user", "anon")
        try:
            text = str(json.loads(message)["text"])[:2000]
        except (ValueError, KeyError, TypeError):
            ws.send(json.dumps({"type": "error", "error": 'send {"text": "..."}'}))
            return
        seq = int(await self.storage.get("seq", 0)) + 1
        entry = {"seq": seq, "user": user, "text": text, "at": time.time()}
        self.storage.put_many({"seq": seq, f"msg:{seq:012d}": entry})
        if seq > KEEP:
            self.storage.delete(f"msg:{seq - KEEP:012d}")
        self._broadcast({"type": "message", **entry})  # sent once the message is durable

    async def websocket_close(self, ws: WebSocket, code: int, reason: str,
                              was_clean: bool) -> None:
        user = (ws.deserialize_attachment() or {}).get("user", "anon")
        self._broadcast({"type": "leave", "user": user, "online": self._online()})

    async def history(self) -> list[Any]:
        rows = await self.storage.list(prefix="msg:")
        return list(rows.values())

    def _online(self) -> list[str]:
        return sorted({(ws.deserialize_attachment() or {}).get("user", "anon")
                       for ws in self.ctx.get_websockets()})

    def _broadcast(self, event: dict[str, Any]) -> None:
        data = json.dumps(event)
        for ws in self.ctx.get_websockets():
            ws.send(data)


app = duro.App()
app.namespace(ChatRoom)
