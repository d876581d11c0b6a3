"""Serving durable objects over HTTP and WebSockets (the ASGI app behind ``duro serve``).

Routes (relative to the ASGI ``root_path``, so the app can be mounted, e.g. under Starlette's
``Mount("/objects", app=configure(app))``):

- ``/<namespace>/name/<name>/<path>`` - the object ``id_from_name(name)``;
- ``/<namespace>/id/<64-hex>/<path>`` - the object with that ID (400 if malformed);

each reaching the object's ``fetch(request)`` (404 for an unknown namespace or a class without
``fetch``, answered only after the ``auth`` hook let the request in, so a refused client
learns nothing about which namespaces exist). This is the public surface only: calls between
processes use the separate, authenticated cluster listener of :mod:`duro.transport`.

The request runs on the object's owner: here, or forwarded by value to the process
holding its lease, like any stub call; the response leaves through the output gate. A WebSocket
upgrade on the same routes is offered to ``fetch`` in the owner process (``request.websocket``);
at another process it is proxied to the owner. Overload answers 503 with ``Retry-After``.

Use :func:`configure` before the App starts (``duro serve`` does it), for instance to add an
``auth`` hook: ``auth(conn, namespace, object_id)`` (sync or async; ``conn`` is Starlette's
``HTTPConnection``) returns ``True``/``None`` to let the request in, ``False`` for 403, or a
:class:`duro.fetch.Response` to answer with. It runs in the process the client reached; a
request or WebSocket relayed to the owner is not checked again there.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote

from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.websockets import WebSocket as ASGIWebSocket

from duro import tracing
from duro.calls import unpack
from duro.errors import (
    BackendUnavailable,
    CallTimeout,
    InvalidObjectId,
    ObjectReset,
    Overloaded,
)
from duro.fetch import (
    FETCH_METHOD,
    Response,
    encode_http_request,
    encode_request,
    response_from_value,
)
from duro.fetch import Request as DuroRequest
from duro.ids import id_from_name, id_from_string
from duro.namespace import MAX_HOPS
from duro.signals import AppClosing, Elsewhere, Gone
from duro.websockets import CODE_MOVED, Hub, local_instance

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from duro.app import App
    from duro.ids import ObjectId
    from duro.namespace import Namespace

__all__ = ["AuthHook", "Server", "ServerOptions", "configure", "route_path"]

log = logging.getLogger("duro.server")

AuthHook = Callable[[HTTPConnection, str, "ObjectId"], "bool | Response | Awaitable[Any] | None"]
HOPS_HEADER: Final = "x-duro-hops"
_HOP_BY_HOP: Final = frozenset({
    "host", "upgrade", "connection", "keep-alive", "transfer-encoding", "content-length",
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept", HOPS_HEADER,
})
_PHRASES: Final = {400: "Bad Request", 403: "Forbidden", 404: "Not Found",
                   413: "Content Too Large", 415: "Unsupported Media Type",
                   422: "Unprocessable Content", 431: "Request Header Fields Too Large",
                   500: "Internal Server Error", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True)
class ServerOptions:
    """Limits and hooks of the HTTP server."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body (413 beyond)."""
    max_message_bytes: int = 1024 * 1024
    """Largest WebSocket message, either way (close code 1009 beyond)."""
    max_sockets_per_object: int = 32768
    retry_after: int = 1
    """Seconds in ``Retry-After`` of 503 answers."""
    header_timeout: float = 10.0
    """Seconds a client has to send a request's headers (``duro serve``'s listener)."""
    max_header_bytes: int = 16 * 1024
    """Largest request head: 431 beyond."""
    auth: AuthHook | None = None


class _Refused(Exception):
    def __init__(self, status: int, message: str = "", headers: dict[str, str] | None = None,
                 response: Response | None = None) -> None:
        super().__init__(message)
        self.response = response or _error(status, message, headers)


NOT_RUN_HEADER: Final = "x-duro-not-run"
"""Set (``1``) on a 503 whose call certainly never started: retrying cannot apply it twice."""


def _error(status: int, message: str = "", headers: dict[str, str] | None = None) -> Response:
    phrase = _PHRASES.get(status, "Error")
    return Response.text(f"{status} {phrase}" + (f": {message}" if message else "") + "\n",
                         status, headers)


class Server:
    """One App's HTTP/WebSocket front: an ASGI app served by the App's transport."""

    def __init__(self, app: App, options: ServerOptions) -> None:
        self.app = app
        self.options = options
        self.hub = Hub(app, max_message_bytes=options.max_message_bytes,
                       max_sockets_per_object=options.max_sockets_per_object)
        self._proxies: set[asyncio.Task[Any]] = set()

    # -- wiring (called by duro.transport and duro.app) -------------------------------------------

    def uvicorn_options(self) -> dict[str, Any]:
        """Options for uvicorn's ``Config``."""
        return {"ws_max_size": self.options.max_message_bytes + 1024}

    async def closing(self) -> None:
        """The App is closing: close every WebSocket with 1012 so clients reconnect elsewhere."""
        await self.hub.close_all(CODE_MOVED, "server closing")

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return
        parts = route_path(scope).split("/", 4)
        conn: HTTPConnection = (Request(scope, receive) if kind == "http"
                                else ASGIWebSocket(scope, receive, send))
        try:
            if sum(len(k) + len(v) for k, v in scope["headers"]) > self.options.max_header_bytes:
                raise _Refused(431, f"the request head limit is {self.options.max_header_bytes:,} "
                               "bytes")
            if len(parts) < 4 or parts[0] or parts[2] not in ("name", "id") or not parts[3]:
                raise _Refused(404, "use /<namespace>/name/<name>/<path> or "
                               "/<namespace>/id/<64-hex id>/<path>")
            ns_name, ident = unquote(parts[1]), unquote(parts[3])
            try:  # well-formed or not whether or not the namespace exists: reveals nothing
                oid = id_from_name(ns_name, ident) if parts[2] == "name" else \
                    id_from_string(ns_name, ident)
            except InvalidObjectId as exc:
                raise _Refused(400, str(exc)) from None
            if not scope.get("duro.peer"):  # a relay from a peer was let in where it arrived
                await self._authorize(conn, ns_name, oid)
            ns = self._target(ns_name)
            rest = "/" + (unquote(parts[4]) if len(parts) == 5 else "")
            if isinstance(conn, Request):
                await self._http(conn, send, ns, oid, rest)
            else:
                assert isinstance(conn, ASGIWebSocket)
                await self._websocket(conn, ns, oid, rest)
        except _Refused as refused:
            if kind == "http":
                await _send_response(send, refused.response)
            else:
                await _deny(ASGIWebSocket(scope, receive, send), refused.response)

    def _target(self, ns_name: str) -> Namespace[Any]:
        ns = self.app._namespaces.get(ns_name)
        if ns is None:
            raise _Refused(404, f"no namespace {ns_name!r}")
        if not callable(getattr(ns.cls, "fetch", None)):
            raise _Refused(404, f"{ns.cls.__qualname__} has no fetch()")
        return ns

    async def _authorize(self, conn: HTTPConnection, ns_name: str, oid: ObjectId) -> None:
        auth = self.options.auth
        if auth is None:
            return
        verdict = auth(conn, ns_name, oid)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is False:
            raise _Refused(403)
        if isinstance(verdict, Response):
            raise _Refused(verdict.status, response=verdict)

    # -- HTTP -------------------------------------------------------------------------------------

    async def _http(self, request: Request, send: Send, ns: Namespace[Any], oid: ObjectId,
                    rest: str) -> None:
        scope = request.scope
        limit = self.options.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Refused(413, f"the body limit is {limit:,} bytes")
        # The body straight from ``receive`` (what ``request.stream()`` does, without its
        # async generator), then the payload straight from the ASGI scope: no intermediate
        # duro Request, no header round trip through str and back.
        chunks: list[bytes] = []
        size = 0
        receive = request.receive
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _Refused(413, f"the body limit is {limit:,} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        client = f"{scope['client'][0]}:{scope['client'][1]}" if scope.get("client") else None
        payload = encode_http_request(
            scope["method"], str(request.url), rest,
            scope.get("query_string", b"").decode("latin-1"), scope["headers"],
            b"".join(chunks), client)
        with tracing.http_span(scope, ns.name, oid) as span:
            resp = await self._fetch(ns, oid, payload)
            span.status(resp.status)
        await _send_response(send, resp)

    async def _fetch(self, ns: Namespace[Any], oid: ObjectId, payload: bytes) -> Response:
        """Run ``fetch`` on the owner (here or forwarded); map failures to HTTP statuses."""
        retry = {"retry-after": str(self.options.retry_after)}
        # The App's deadline sweep, not a loop timer per request (see duro.deadlines).
        deadlines = self.app._deadlines
        token = deadlines.add(self.app.clock.monotonic() + self.app.config.call_timeout)
        try:
            try:
                reply = await ns._invoke(oid, FETCH_METHOD, payload, ())
            except asyncio.CancelledError:
                if deadlines.expired(token):
                    return _error(504, "the object did not answer in time")
                raise
            finally:
                deadlines.discard(token)
            resp = response_from_value(unpack(reply))
            if resp.status == 101:
                return _error(500, "fetch answered 101 to a request that is not a WebSocket")
            return resp
        except CallTimeout as exc:
            return _error(504, exc.message)
        except (Overloaded, ObjectReset, BackendUnavailable) as exc:
            if exc.retry_after is not None:
                retry = {"retry-after": str(int(exc.retry_after))}
            if exc.not_run:
                retry[NOT_RUN_HEADER] = "1"
            return _error(503, exc.message, retry)
        except Exception:
            log.exception("fetch of %s %s failed in the runtime", ns.name, oid.hex[:12])
            return _error(500)

    # -- WebSockets -------------------------------------------------------------------------------

    async def _websocket(self, conn: ASGIWebSocket, ns: Namespace[Any], oid: ObjectId,
                         rest: str) -> None:

        hops = int(conn.headers.get(HOPS_HEADER, "0") or 0) if conn.scope.get("duro.peer") else 0
        while True:
            try:
                inst = await local_instance(ns, oid)
            except Elsewhere as where:
                if hops >= MAX_HOPS:
                    raise _Refused(503, "the object's owner could not be reached",
                                   {"retry-after": str(self.options.retry_after)}) from None
                await self._proxy(conn, where.address, hops)
                return
            except AppClosing:
                raise _Refused(503, "server closing",
                               {"retry-after": str(self.options.retry_after)}) from None
            rec = self.hub.open(conn, ns, oid)
            client = f"{conn.client.host}:{conn.client.port}" if conn.client else None
            req = DuroRequest("GET", str(conn.url), rest,
                              query_string=conn.scope.get("query_string", b"").decode("latin-1"),
                              headers=[(k.decode("latin-1"), v.decode("latin-1"))
                                       for k, v in conn.scope["headers"]], client=client)
            try:
                reply = await inst.call(FETCH_METHOD, encode_request(req, rec.sid), ())
            except Gone:
                self.hub.discard(rec)
                continue
            except (Overloaded, ObjectReset, BackendUnavailable) as exc:
                self.hub.discard(rec)
                after = self.options.retry_after if exc.retry_after is None else exc.retry_after
                raise _Refused(503, exc.message, {"retry-after": str(int(after))}) from None
            except BaseException:
                self.hub.discard(rec)
                raise
            break
        try:
            resp = response_from_value(unpack(reply))
        except ObjectReset as exc:
            resp = _error(503, exc.message, {"retry-after": str(self.options.retry_after)})
        except Exception:
            log.exception("the WebSocket upgrade of %s %s failed", ns.name, oid.hex[:12])
            resp = _error(500)
        if resp.status != 101 or rec.state == "pending":
            self.hub.discard(rec)
            if resp.status == 101:
                resp = _error(500, "fetch answered 101 without ctx.accept_websocket()")
            raise _Refused(resp.status, response=resp)
        if rec.state != "open":  # closed by the object, or moved, before the handshake
            self.hub.discard(rec)
            raise _Refused(503, "the WebSocket was closed before it opened",
                           {"retry-after": str(self.options.retry_after)})
        await conn.accept(subprotocol=resp.header("sec-websocket-protocol"))
        await self.hub.run(rec)

    async def _proxy(self, conn: ASGIWebSocket, address: str, hops: int) -> None:
        """Relay a WebSocket to the owner process at *address*, both ways, until either closes."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        scope = conn.scope
        qs = scope.get("query_string", b"").decode("latin-1")
        target = route_path(scope) + (f"?{qs}" if qs else "")
        url = f"ws://{address}{target}"  # the owner's cluster listener
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in _HOP_BY_HOP]
        headers.append((HOPS_HEADER, str(hops + 1)))
        assert self.app._transport is not None  # Elsewhere is raised only when it is running
        headers += self.app._transport.sign("GET", target).items()
        protocols = [p.strip() for p in conn.headers.get("sec-websocket-protocol", "").split(",")
                     if p.strip()]
        retry = {"retry-after": str(self.options.retry_after)}
        try:
            upstream = await connect(url, additional_headers=headers,
                                     subprotocols=protocols or None,  # type: ignore[arg-type]
                                     max_size=self.options.max_message_bytes + 1024,
                                     open_timeout=self.app.config.call_timeout,
                                     compression=None, ping_interval=None)
        except InvalidStatus as exc:
            r = exc.response
            keep = [(k, v) for k, v in r.headers.raw_items()
                    if k.lower() in ("content-type", "retry-after")]
            raise _Refused(r.status_code, response=Response(bytes(r.body or b""), r.status_code,
                                                           keep)) from None
        except (OSError, WebSocketException, TimeoutError):
            raise _Refused(503, "the object's owner could not be reached", retry) from None
        async with upstream:
            await conn.accept(subprotocol=upstream.subprotocol)
            await self._relay(conn, upstream)

    async def _relay(self, conn: ASGIWebSocket, upstream: Any) -> None:
        """Pump messages both ways until either side closes, then close the other side.

        Whichever side leaves first, in whatever order the closes cross, both pumps end and
        are awaited here: a send to a side that has gone ends its pump, never the relay.
        """
        from websockets.exceptions import ConnectionClosed

        async def downstream() -> tuple[int, str] | None:
            """Owner → client; the owner's close code, or ``None`` once the client is gone."""
            try:
                async for msg in upstream:
                    if isinstance(msg, str):
                        await conn.send_text(msg)
                    else:
                        await conn.send_bytes(msg)
            except ConnectionClosed:
                pass
            except (RuntimeError, OSError) as exc:  # the client left while we sent to it
                log.debug("WebSocket relay: the client left mid-send: %s", exc)
                return None
            rcvd = upstream.close_code
            code = rcvd if rcvd not in (None, 1005, 1006) else CODE_MOVED
            return code, upstream.close_reason or ""

        async def upstream_pump() -> tuple[int, str]:
            """Client → owner; the client's close code."""
            while True:
                msg = await conn.receive()
                if msg["type"] == "websocket.disconnect":
                    code = int(msg.get("code") or 1000)
                    return code if code not in (1005, 1006) else 1000, msg.get("reason") or ""
                data = msg.get("text")
                try:
                    await upstream.send(data if data is not None else msg.get("bytes") or b"")
                except ConnectionClosed:
                    return 1000, ""

        down = asyncio.ensure_future(downstream())
        up = asyncio.ensure_future(upstream_pump())
        pumps = (down, up)
        self._proxies.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if down.done() and down.exception() is None and (owner := down.result()):
                # The owner closed: pass its code on (1012: reconnect elsewhere).
                up.cancel()
                with contextlib.suppress(RuntimeError, OSError):  # the client may be gone too
                    await conn.close(*owner)
            else:  # the client left: tell the owner
                code, reason = (up.result() if up.done() and up.exception() is None
                                else (1000, ""))
                down.cancel()
                with contextlib.suppress(ConnectionClosed, OSError):
                    await upstream.close(code, reason)
        finally:
            for t in pumps:
                t.cancel()
            for t, result in zip(pumps, await asyncio.gather(*pumps, return_exceptions=True),
                                 strict=True):
                if isinstance(result, Exception):
                    log.warning("WebSocket relay: a pump failed: %r", result)
                self._proxies.discard(t)


def route_path(scope: Scope) -> str:
    """The request's raw path (percent-encoded, latin-1) after the ASGI ``root_path``."""
    path: str = scope["path"]
    raw_bytes: bytes = scope.get("raw_path") or path.encode()
    raw = raw_bytes.decode("latin-1").split("?", 1)[0]
    root: str = scope.get("root_path", "")
    if root:
        quoted = quote(root)
        if raw.startswith(quoted):
            raw = raw[len(quoted):]
        elif path.startswith(root):  # no raw path to trust: fall back to the decoded one
            raw = quote(path[len(root):])
    return raw


async def _send_response(send: Send, resp: Response) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers
               if k != "content-length"]
    headers.append((b"content-length", str(len(resp.body)).encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": resp.body})


async def _deny(conn: ASGIWebSocket, resp: Response) -> None:
    from starlette.responses import Response as StarletteResponse

    out = StarletteResponse(resp.body, resp.status)
    for k, v in resp.headers:
        if k != "content-length":
            out.headers.append(k, v)
    try:
        await conn.send_denial_response(out)
    except RuntimeError:  # the server lacks the denial extension: a bare 403
        await conn.close(1008)


def configure(app: App, *, auth: AuthHook | None = None, **limits: Any) -> Server:
    """Make *app*'s objects reachable over HTTP/WebSockets (before it starts); returns the ASGI app.

    ``duro serve`` serves it on its public listener; or mount it in an ASGI app of your own
    (``Mount("/objects", app=configure(app))``) and run the App in that app's lifespan.
    *limits* are :class:`ServerOptions` fields (``max_body_bytes``, ``max_message_bytes``, …).
    Calling it again replaces the options.
    """
    if app._state != "new":
        raise RuntimeError("configure() must run before the App starts")
    options = ServerOptions(auth=auth, **limits)
    server = Server(app, options)
    app._http = server
    app._websockets = server.hub
    return server
