"""Hibernatable WebSockets: sockets held by the owner process, events delivered as turns.

An object accepts a WebSocket inside ``fetch`` with ``ctx.accept_websocket(request.websocket,
tags)`` and answers ``Response(status=101)``. From then on the connection belongs to this
process's :class:`Hub`, not to the object instance:

- each incoming message becomes a ``websocket_message(ws, message)`` turn of the object, in
  order, through its event queue (so it interleaves with calls and alarms like any event); a
  client close becomes ``websocket_close(ws, code, reason, was_clean)``;
- ``ws.send()`` and ``ws.close()`` are outputs: they leave only after every write made before
  them is durable, and only while the lease is valid (the output gate);
- a message equal to the object's auto-response request (``ctx.set_websocket_auto_response``)
  is answered by the hub without waking the object;
- the instance may be evicted while sockets stay open ("hibernation"); the sockets, their tags
  and their attachments (``ws.serialize_attachment``) stay here, and the next message
  re-activates the object in this process;
- if the object's ownership changes - its instance is reset, another process took its lease,
  or the App closes - the hub closes its sockets with code 1012 (service restart) so clients
  reconnect and reach the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from duro.backends.base import ObjectRef
from duro.calls import unpack
from duro.codec import decode, encode
from duro.errors import BackendUnavailable, DuroError, ObjectReset, Overloaded, ValueTooLarge
from duro.instance import current_call
from duro.signals import AppClosing, Elsewhere, Gone

if TYPE_CHECKING:
    from starlette.websockets import WebSocket as ASGIWebSocket

    from duro.host import Host
    from duro.ids import ObjectId
    from duro.instance import Instance
    from duro.namespace import Namespace

__all__ = ["Hub", "WebSocket", "local_instance"]

log = logging.getLogger("duro.websockets")

MESSAGE_METHOD: Final = "__ws_message__"
CLOSE_METHOD: Final = "__ws_close__"
MAX_TAGS: Final = 10
MAX_TAG_CHARS: Final = 256
MAX_ATTACHMENT_BYTES: Final = 16 * 1024
MAX_AUTO_RESPONSE_CHARS: Final = 2048
CODE_MOVED: Final = 1012
"""Close code sent when the object's ownership changes: reconnect to reach the new owner."""


async def local_instance(ns: Namespace[Any], oid: ObjectId) -> Instance:
    """The live instance of *oid* in this process, activating it here if nobody else owns it.

    Raises :class:`duro.namespace.Elsewhere` when another live process holds the lease.
    """
    while True:
        ns.app._check_open()
        inst = ns._instances.get(oid.hex)
        if inst is not None and inst.accepting:
            return inst
        if inst is not None:
            await inst.closed.wait()
            continue
        return await ns._activate(oid)


class WebSocket:
    """A hibernatable WebSocket as an object sees it (``request.websocket``, ``get_websockets``).

    The same handle is returned for a connection across turns and activations, so it can be
    compared and used as a dict key.
    """

    __slots__ = ("_rec",)

    def __init__(self, rec: _Socket) -> None:
        self._rec = rec

    @property
    def id(self) -> str:
        """A unique id of this connection."""
        return self._rec.sid

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags given to ``ctx.accept_websocket``."""
        return self._rec.tags

    @property
    def open(self) -> bool:
        """Whether the socket is accepted and neither side has closed it."""
        return self._rec.state == "open"

    @property
    def auto_response_timestamp(self) -> float | None:
        """Wall time of the last auto-response sent on this socket, if any."""
        return self._rec.auto_at

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message once earlier writes are durable.

        Sending on a closed socket does nothing (a client may leave at any time).
        """
        if not isinstance(message, str | bytes | bytearray | memoryview):
            raise TypeError(f"WebSocket.send() takes str or bytes, not {type(message).__name__}")
        data: str | bytes = message if isinstance(message, str) else bytes(message)
        rec = self._rec
        if len(data) > rec.hub.max_message_bytes:
            raise ValueTooLarge(f"WebSocket message of {len(data):,} bytes exceeds the limit of "
                                f"{rec.hub.max_message_bytes:,}")
        if rec.state in ("open", "pending"):
            rec.out.append(("send", rec.hub._gate(rec), data))
            rec.wake.set()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket (after earlier messages and writes); no ``websocket_close`` follows."""
        rec = self._rec
        if rec.state not in ("open", "pending"):
            return
        rec.hub._unindex(rec)
        rec.state = "closing"
        rec.out.append(("close", rec.hub._gate(rec), (code, reason[:123])))
        rec.wake.set()

    def serialize_attachment(self, value: Any) -> None:
        """Keep *value* (a codec value, ≤ 16 KiB encoded) with the socket, across hibernation."""
        data = encode(value)
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise ValueTooLarge(f"WebSocket attachment is {len(data):,} bytes; the limit is "
                                f"{MAX_ATTACHMENT_BYTES:,}")
        self._rec.attachment = data

    def deserialize_attachment(self) -> Any:
        """The value given to :meth:`serialize_attachment`, or ``None``."""
        data = self._rec.attachment
        return None if data is None else decode(data)

    def __repr__(self) -> str:
        return f"<duro WebSocket {self._rec.sid[:8]} {self._rec.state} tags={list(self.tags)}>"


class _Socket:
    """The hub's record of one connection."""

    def __init__(self, hub: Hub, conn: ASGIWebSocket | None, ns: Namespace[Any],
                 oid: ObjectId) -> None:
        self.hub = hub
        self.sid = uuid.uuid4().hex
        self.conn = conn
        self.ns = ns
        self.oid = oid
        self.key = (ns.name, oid.hex)
        self.tags: tuple[str, ...] = ()
        self.attachment: bytes | None = None
        self.state = "pending"  # pending → open → closing | closed
        self.auto_at: float | None = None
        self.out: deque[tuple[str, asyncio.Future[bytes] | None, Any]] = deque()
        self.wake = asyncio.Event()
        self.handle = WebSocket(self)


class Hub:
    """All hibernatable WebSockets of one App (``app._websockets``)."""

    def __init__(self, app: Host, *, max_message_bytes: int = 1024 * 1024,
                 max_sockets_per_object: int = 32768) -> None:
        self.app = app
        self.max_message_bytes = max_message_bytes
        self.max_sockets = max_sockets_per_object
        self._sockets: dict[str, _Socket] = {}
        self._by_key: dict[tuple[str, str], dict[str, _Socket]] = {}
        self._auto: dict[tuple[str, str], tuple[str, str]] = {}
        self._bound: dict[tuple[str, str], Instance] = {}
        self._epoch: dict[tuple[str, str], int] = {}
        self._checker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- used by Context and fetch ----------------------------------------------------------------

    def pending(self, sid: str, inst: Instance) -> WebSocket | None:
        """The handle of a connection waiting for *inst*'s ``fetch`` to accept it."""
        rec = self._sockets.get(sid)
        if rec is None or rec.key != inst.key or rec.state != "pending":
            return None
        return rec.handle

    def accept(self, inst: Instance, ws: Any, tags: tuple[str, ...]) -> None:
        """``ctx.accept_websocket``: the connection now belongs to *inst*'s object."""
        if not isinstance(ws, WebSocket) or ws._rec.hub is not self:
            raise TypeError("accept_websocket() takes request.websocket from this object's fetch")
        rec = ws._rec
        if rec.key != inst.key:
            raise ValueError("this WebSocket was opened for another object")
        if rec.state != "pending":
            raise RuntimeError(f"this WebSocket is already {rec.state}")
        if len(tags) > MAX_TAGS or not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG_CHARS
                                           for t in tags):
            raise ValueError(f"at most {MAX_TAGS} tags, each a non-empty str of at most "
                             f"{MAX_TAG_CHARS} characters")
        index = self._by_key.setdefault(rec.key, {})
        if len(index) >= self.max_sockets:
            raise Overloaded(f"object already holds {len(index)} WebSockets")
        self._bind(inst)
        rec.tags = tuple(dict.fromkeys(tags))
        rec.state = "open"
        index[rec.sid] = rec

    def sockets(self, inst: Instance, tag: str | None) -> list[WebSocket]:
        """``ctx.get_websockets``: open sockets of *inst*'s object, optionally with *tag*."""
        index = self._by_key.get(inst.key)
        if not index:
            return []
        self._bind(inst)
        return [r.handle for r in index.values()
                if r.state == "open" and (tag is None or tag in r.tags)]

    def set_auto_response(self, inst: Instance, request: str | None, response: str | None) -> None:
        """``ctx.set_websocket_auto_response``: answer *request* with *response* without a turn."""
        if request is None or response is None:
            self._auto.pop(inst.key, None)
            return
        if not (isinstance(request, str) and isinstance(response, str)) or max(
                len(request), len(response)) > MAX_AUTO_RESPONSE_CHARS:
            raise ValueError(f"auto-response request and response are str of at most "
                             f"{MAX_AUTO_RESPONSE_CHARS} characters")
        self._auto[inst.key] = (request, response)

    def count(self) -> int:
        """Open sockets held by this process."""
        return sum(len(i) for i in self._by_key.values())

    # -- ownership --------------------------------------------------------------------------------

    def _bind(self, inst: Instance) -> None:
        """Note that *inst* now serves its object's sockets; watch it for resets."""
        key = inst.key
        if self._bound.get(key) is inst:
            return
        last = self._epoch.get(key)
        if last is not None and inst.epoch > last + 1:
            # Another process owned the object since we last did: it never saw these sockets.
            self.close_object(key, CODE_MOVED, "object moved")
        self._bound[key] = inst
        self._epoch[key] = inst.epoch
        self._spawn(self._watch(inst))
        if self._checker is None:
            self._checker = asyncio.ensure_future(self._check_hibernated())

    async def _watch(self, inst: Instance) -> None:
        await inst.closed.wait()
        if self._bound.get(inst.key) is not inst:
            return
        del self._bound[inst.key]
        if inst._broken is not None:  # reset: another owner, or state rebuilt from storage
            self.close_object(inst.key, CODE_MOVED, "object reset")
        # else: evicted; the sockets hibernate here until the next event

    async def _check_hibernated(self) -> None:
        """Close hibernated sockets of objects that another process took over."""
        app = self.app
        while True:
            await app.clock.sleep(max(0.2, app.config.lease_ttl / 2))
            for key in [k for k, v in self._by_key.items() if v and k not in self._bound]:
                try:
                    lease = await app.io(app.backend.read_lease, ObjectRef(*key))
                except DuroError:
                    continue
                if lease is None:
                    continue
                moved = lease.epoch > self._epoch.get(key, 0) or (
                    lease.owner not in (None, app.owner_id)
                    and lease.until + app.config.drift_margin > app.clock.time())
                if moved and key not in self._bound:
                    self.close_object(key, CODE_MOVED, "object moved")

    def close_object(self, key: tuple[str, str], code: int, reason: str) -> None:
        """Close every socket of one object now (no ``websocket_close`` event)."""
        for rec in list(self._by_key.get(key, {}).values()):
            self._close_now(rec, code, reason)
        self._by_key.pop(key, None)
        self._auto.pop(key, None)

    def _close_now(self, rec: _Socket, code: int, reason: str) -> None:
        if rec.state in ("closing", "closed"):
            return
        self._unindex(rec)
        rec.state = "closing"
        rec.out.append(("close", None, (code, reason)))
        rec.wake.set()

    async def close_all(self, code: int = CODE_MOVED, reason: str = "server closing") -> None:
        """Close every socket (the App is closing: clients reconnect to the next owner)."""
        for key in list(self._by_key):
            self.close_object(key, code, reason)
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)
            self._checker = None
        for _ in range(200):  # let the senders put the close frames on the wire
            if not self._sockets:
                break
            await asyncio.sleep(0.005)

    def _unindex(self, rec: _Socket) -> None:
        index = self._by_key.get(rec.key)
        if index is not None:
            index.pop(rec.sid, None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _gate(self, rec: _Socket) -> asyncio.Future[bytes] | None:
        """A future that resolves when an output made now may leave (the output gate)."""
        cur = current_call.get()
        inst = cur[0] if cur is not None and cur[0].key == rec.key else self._bound.get(rec.key)
        if inst is None:
            return None
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        inst._release(fut, b"")
        return fut

    # -- connections ------------------------------------------------------------------------------

    def open(self, conn: ASGIWebSocket, ns: Namespace[Any], oid: ObjectId) -> _Socket:
        """Register a connection that is about to be offered to its object's ``fetch``."""
        rec = _Socket(self, conn, ns, oid)
        self._sockets[rec.sid] = rec
        return rec

    def discard(self, rec: _Socket) -> None:
        """Forget a connection whose upgrade was refused."""
        self._unindex(rec)
        rec.state = "closed"
        self._sockets.pop(rec.sid, None)

    async def run(self, rec: _Socket) -> None:
        """Serve an accepted connection until it closes: receive, deliver, send."""
        assert rec.conn is not None
        conn = rec.conn
        inbox: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(maxsize=64)
        sender = asyncio.ensure_future(self._send_loop(rec))
        dispatcher = asyncio.ensure_future(self._dispatch_loop(rec, inbox))
        receiving = asyncio.ensure_future(self._receive_loop(rec, conn, inbox))
        try:
            await asyncio.wait([sender, receiving], return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and not receiving.done():
                # We closed (or the connection failed): wait briefly for the client's close.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(receiving), 2.0)
                receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)
            if rec.state == "open":
                rec.state = "closed"
            self._unindex(rec)
            with contextlib.suppress(asyncio.CancelledError):
                await inbox.put(None)
                await dispatcher
        finally:
            for t in (sender, dispatcher, receiving):
                t.cancel()
            await asyncio.gather(sender, dispatcher, receiving, return_exceptions=True)
            rec.state = "closed"
            self._unindex(rec)
            self._sockets.pop(rec.sid, None)

    async def _receive_loop(self, rec: _Socket, conn: ASGIWebSocket,
                            inbox: asyncio.Queue[tuple[str, Any] | None]) -> None:
        while True:
            msg = await conn.receive()
            if msg["type"] == "websocket.disconnect":
                code = int(msg.get("code") or 1005)
                if rec.state == "open":
                    self._unindex(rec)
                    rec.state = "closed"
                    await inbox.put(("close", [code, msg.get("reason") or "",
                                               code not in (1005, 1006)]))
                return
            data: str | bytes | None = msg.get("text")
            if data is None:
                data = msg.get("bytes") or b""
            if rec.state != "open":
                continue
            if len(data) > self.max_message_bytes:
                self._close_now(rec, 1009, "message too big")
                await inbox.put(("close", [1009, "message too big", False]))
                continue
            auto = self._auto.get(rec.key)
            if auto is not None and data == auto[0]:
                rec.auto_at = self.app.clock.time()
                rec.out.append(("raw", None, auto[1]))
                rec.wake.set()
                continue
            await inbox.put(("message", data))

    async def _send_loop(self, rec: _Socket) -> None:
        conn = rec.conn
        assert conn is not None
        while True:
            while not rec.out:
                rec.wake.clear()
                await rec.wake.wait()
            kind, gate, data = rec.out.popleft()
            if gate is not None:
                try:
                    await gate
                except Exception as exc:  # noqa: BLE001 - the object was reset: its held output is dropped (logged)
                    log.debug("WebSocket output dropped: %s", exc)  # the object was reset
                    continue
            try:
                if kind == "close":
                    code, reason = data
                    await conn.close(code, reason)
                    return
                if isinstance(data, str):
                    await conn.send_text(data)
                else:
                    await conn.send_bytes(data)
            except Exception as exc:  # noqa: BLE001 - the client is gone or broke the protocol
                # Nothing more can reach it.
                log.debug("WebSocket send loop ends: the client connection failed: %r", exc)
                return

    async def _dispatch_loop(self, rec: _Socket,
                             inbox: asyncio.Queue[tuple[str, Any] | None]) -> None:
        while (item := await inbox.get()) is not None:
            kind, data = item
            method = MESSAGE_METHOD if kind == "message" else CLOSE_METHOD
            if not await self._deliver(rec, method, encode([rec.sid, data])):
                return

    async def _deliver(self, rec: _Socket, method: str, payload: bytes) -> bool:
        """Run one event as a turn of the socket's object in this process; False if it moved."""
        while True:
            try:
                inst = await local_instance(rec.ns, rec.oid)
            except (Elsewhere, AppClosing):
                self.close_object(rec.key, CODE_MOVED, "object moved")
                return False
            except DuroError:
                log.exception("cannot activate %s for a WebSocket event", rec.key)
                self.close_object(rec.key, 1011, "object unavailable")
                return False
            self._bind(inst)
            if method == MESSAGE_METHOD and rec.state != "open":
                return True  # closed meanwhile (by the object or the hub)
            try:
                reply = await inst.call(method, payload, ())
            except Gone:
                continue
            except Overloaded:
                await asyncio.sleep(0.01)
                continue
            except ObjectReset:
                return False
            except BackendUnavailable:  # this process lost the lease: the object moves
                self.close_object(rec.key, CODE_MOVED, "object moved (lease lost)")
                return False
            try:
                unpack(reply)
            except ObjectReset:
                return False
            except Exception:
                log.exception("%s.%s failed", rec.ns.name, method.strip("_"))
            return True


async def _message_turn(inst: Instance, payload: bytes) -> None:
    sid, data = decode(payload)
    hub: Hub | None = inst.app._websockets
    rec = None if hub is None else hub._sockets.get(sid)
    handler = getattr(inst.obj, "websocket_message", None)
    if rec is not None and handler is not None:
        await handler(rec.handle, data)


async def _close_turn(inst: Instance, payload: bytes) -> None:
    sid, (code, reason, clean) = decode(payload)
    hub: Hub | None = inst.app._websockets
    rec = None if hub is None else hub._sockets.get(sid)
    handler = getattr(inst.obj, "websocket_close", None)
    if rec is not None and handler is not None:
        await handler(rec.handle, code, reason, clean)


EVENTS: Final = {MESSAGE_METHOD: _message_turn, CLOSE_METHOD: _close_turn}
"""The runtime events this module adds to every App (see ``App.events``)."""
