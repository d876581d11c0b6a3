"""The cluster channel: calls forwarded between processes, on a listener of its own.

Each :class:`~duro.app.App` whose backend other processes can share listens on an address
recorded in the leases it holds; a process that receives a call for an object owned elsewhere
POSTs it to the owner's ``/_duro/call``. The body and the reply are msgpack; the reply is the
same envelope an in-process call produces. The same listener takes the WebSocket relays of
:mod:`duro.server` (a client connected to one process, its object owned by another).

This listener is not the public HTTP surface (``duro serve``'s port, or the host app a duro
app is mounted in): nothing on it runs before the request is authenticated
(:mod:`duro.cluster_auth`: signature, timestamp, nonce), and a call runs only what a stub may
call, plus the runtime's own events (``__fetch__``, ``__delete__``). Refusals are logged with
the peer's address; the calling process gets a clear :class:`~duro.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Protocol

import aiohttp
import msgpack
import uvicorn
from starlette.datastructures import Headers

from duro import tracing
from duro.calls import pack_error
from duro.cluster_auth import AUTH_HEADER, ReplayGuard, Signer
from duro.errors import BackendUnavailable, CallTimeout, ConfigError, Overloaded, ValueTooLarge
from duro.signals import AppClosing, Chain, OwnerUnreachable

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from duro.ids import ObjectId
    from duro.settings import AppConfig

__all__ = ["CALL_PATH", "Cluster", "EmbeddedServer", "Transport", "advertised_address",
           "parse_address"]

log = logging.getLogger("duro.transport")

CALL_PATH: Final = "/_duro/call"
RUNTIME_METHODS: Final = frozenset({"__fetch__", "__delete__"})
"""Internal methods a peer may send besides the stub methods (an HTTP request, a deletion)."""
_CONTENT_TYPE = "application/x-duro-call"
_AUTH_HEADER_B = AUTH_HEADER.encode()
_CLOSE_GRACE = 0.2
# Peers drop a kept-alive connection idle this long instead of sending a call into it; a
# closing server keeps its idle connections at least this long (plus a margin) after the last
# call it saw, so no peer's call can meet a connection being closed under it.
_CLIENT_KEEPALIVE = 2.0
_KEEPALIVE_MARGIN = 0.5
_UNSPECIFIED: Final = frozenset({"", "0.0.0.0", "::"})
_CONNECT_TIMEOUT = 2.0


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``, with a clear error for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen address {address!r} must look like '127.0.0.1:0' (host:port)")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _routable(ipv6: bool) -> str | None:
    """This host's address on its default route (a UDP connect sends no packet), if any."""
    family, probe = ((socket.AF_INET6, "2001:db8::1") if ipv6 else
                     (socket.AF_INET, "192.0.2.1"))  # documentation addresses (RFC 3849/5737)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((probe, 9))
            found = str(s.getsockname()[0])
        except OSError:
            return None
    ip = ipaddress.ip_address(found.split("%", 1)[0])
    return None if ip.is_unspecified or ip.is_loopback else found


def advertised_address(host: str, port: int, advertise: str | None) -> str:
    """The address peers should use for a listener bound to *host*:*port*.

    *advertise* (``host`` or ``host:port``) wins; an unspecified bind address (``0.0.0.0``,
    ``::``) is never advertised: this host's routable address replaces it, or, without one,
    a :class:`ConfigError` asks for ``advertise``.
    """
    if advertise:
        if advertise.rpartition(":")[2].isdigit() and (
                advertise.startswith("[") or advertise.count(":") == 1):
            adv_host, adv_port = parse_address(advertise)
        else:
            adv_host, adv_port = advertise.strip("[]"), port
        if adv_host in _UNSPECIFIED:
            raise ConfigError(f"advertise={advertise!r}: {adv_host or 'an empty host'} is not an "
                              "address peers can reach; give this host's name or IP")
        return _join(adv_host, adv_port)
    if host not in _UNSPECIFIED:
        return _join(host, port)
    found = _routable(ipv6=host == "::")
    if found is None:
        raise ConfigError(f"listening on {_join(host, port)} (every interface), but this host has "
                          "no routable address to tell peers: pass --advertise HOST[:PORT] "
                          "(advertise= in code)")
    return _join(found, port)


class Cluster(Protocol):
    """What a :class:`Transport` uses of its App."""

    @property
    def config(self) -> AppConfig: ...
    @property
    def _http(self) -> Any: ...
    @property
    def _namespaces(self) -> Mapping[str, Any]: ...

    async def _serve_forwarded(self, ns_name: str, hex_id: str, name: str | None, method: str,
                               payload: bytes, chain: Chain, hops: int,
                               trace: Any = None) -> bytes:
        """Run a call another process forwarded here (*trace*: its trace context, if any)."""
        ...


class _Peer:
    """The calls to one other process: at most ``forward_connections`` in flight, at most
    ``forward_queue`` waiting (for at most ``forward_wait`` seconds) for a connection."""

    __slots__ = ("slots", "waiting")

    def __init__(self, connections: int) -> None:
        self.slots = asyncio.Semaphore(connections)
        self.waiting = 0


_EMBEDDED: ContextVar[bool] = ContextVar("duro_embedded_uvicorn", default=False)


class _QuietEmbedded(logging.Filter):
    """Drops uvicorn's info records (started, shutting down…) emitted by duro's own listeners,
    so a host app's uvicorn log shows only its own; warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _EMBEDDED.get()


_QUIET = _QuietEmbedded()


class EmbeddedServer(uvicorn.Server):
    """uvicorn without signal handling: the App's host program owns the signals."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve (in its own task: its uvicorn info records do not reach the host's log)."""
        _EMBEDDED.set(True)
        uv_log = logging.getLogger("uvicorn.error")
        if _QUIET not in uv_log.filters:
            uv_log.addFilter(_QUIET)
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:
        pass


class _QuietConfig(uvicorn.Config):
    """uvicorn's config without its logging setup: the host program's loggers stay as they are."""

    def configure_logging(self) -> None:
        pass


class _Refused(Exception):
    """A cluster request this process will not run (logged; answered with *status*)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class Transport:
    """Serves forwarded calls for one App on its cluster listener and forwards calls to others."""

    def __init__(self, app: Cluster, key: bytes, *, authenticate: bool = True) -> None:
        self._app = app
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: aiohttp.ClientSession | None = None
        self._last_call = 0.0  # loop time of the last forwarded call served (start or end)
        self._signer = Signer(key)
        self._guard = ReplayGuard(key)
        self._authenticate = authenticate
        self.max_body_bytes = app.config.cluster_max_body_bytes
        self._peers: dict[str, _Peer] = {}

    async def start(self, listen: str, advertise: str | None) -> str:
        """Bind *listen* and serve; return the address other processes should use."""
        host, port = parse_address(listen)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit TCP_NODELAY; without it every small reply waits for
        # the peer's delayed ACK (about 40 ms per forwarded call).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror}", orig=exc) from exc
        try:
            address = advertised_address(host, sock.getsockname()[1], advertise)
        except ConfigError:
            sock.close()
            raise
        http = self._app._http  # duro.server.Server: relayed WebSockets reach its objects
        if http is not None:
            self.max_body_bytes = max(self.max_body_bytes, http.options.max_body_bytes + 65536)
        options: dict[str, Any] = {} if http is None else http.uvicorn_options()
        # No proxy_headers: peers connect directly, and X-Forwarded-For must not change the
        # peer address a refusal is logged with.
        config = _QuietConfig(self, lifespan="off", access_log=False, log_config=None,
                              proxy_headers=False, **options)
        self._server = EmbeddedServer(config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.001)
        # aiohttp, not httpx: on loopback it forwards 6-15x more calls per second under
        # concurrency (measured in one run: 6,800 vs 585 requests/s with 32 in flight).
        # Calls wait for a pooled connection in _Peer, never inside aiohttp: its ``connect``
        # timeout would also cover that wait and report a call never sent as unanswered.
        cfg = self._app.config
        timeout = aiohttp.ClientTimeout(total=cfg.call_timeout + 5, connect=None,
                                        sock_connect=_CONNECT_TIMEOUT)
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends them, so a call
        # is never sent into a connection the server is closing.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=cfg.forward_connections,
                                         keepalive_timeout=_CLIENT_KEEPALIVE)
        self._client = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False)
        return address

    async def stop(self) -> None:
        """Stop serving and close the client.

        Calls that arrive meanwhile are answered "moving" (503) with ``Connection: close``. A
        call sent into an idle keep-alive connection just as the server closes it is lost
        without an answer, and the sender cannot tell it from an owner that died mid-call. So
        the server stops only once no peer may still use an idle connection: when none is
        left open, or none has carried a call for longer than peers keep one idle.
        """
        if self._server is not None:
            if self._server.started:
                await asyncio.sleep(_CLOSE_GRACE)
                loop = asyncio.get_running_loop()
                while (self._server.server_state.connections
                       and loop.time() - self._last_call < _CLIENT_KEEPALIVE + _KEEPALIVE_MARGIN):
                    await asyncio.sleep(0.05)
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    def sign(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        """Authentication headers for a request to a peer (e.g. a WebSocket relay)."""
        return self._signer.headers(method, path, body) if self._authenticate else {}

    # -- the cluster listener (ASGI) ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return
        headers = Headers(scope=scope)
        # The signature header, looked up twice: a one-item dict, not Headers' scans.
        auth: dict[str, str] = {}
        if self._authenticate:
            for k, v in scope["headers"]:
                if k == _AUTH_HEADER_B:
                    auth[AUTH_HEADER] = v.decode("latin-1")
                    break
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "an unknown peer"
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        qs: bytes = scope.get("query_string", b"")
        path = raw.decode("latin-1") + (f"?{qs.decode('latin-1')}" if qs else "")
        try:
            if kind == "websocket":
                self._check("GET", path, auth)
                http = self._app._http
                if http is None:
                    raise _Refused(404, "this process serves no objects over WebSockets")
                await http({**scope, "duro.peer": True}, receive, send)
                return
            if self._authenticate:
                why = self._guard.precheck(auth)
                if why is not None:
                    raise _Refused(401, why)
            body = await self._body(scope, receive, headers)
            self._check(scope["method"], path, auth, body)
            if scope["path"] != CALL_PATH or scope["method"] != "POST":
                raise _Refused(404, f"no cluster endpoint {scope['method']} {scope['path']}")
            status, reply, extra = await self._call(body)
        except _Refused as refused:
            log.warning("refused a cluster %s %s from %s: %s", scope.get("method", "WEBSOCKET"),
                        scope["path"], peer, refused.why)
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            status, reply = refused.status, f"duro cluster call refused: {refused.why}".encode()
            extra = {"connection": "close"} if refused.status in (401, 413) else {}
        out = [(b"content-type", _CONTENT_TYPE.encode() if status == 200 else b"text/plain"),
               (b"content-length", str(len(reply)).encode())]
        out += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": reply})

    def _check(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        if self._authenticate:
            why = self._guard.verify(method, path, headers, body)
            if why is not None:
                raise _Refused(401, why)

    async def _body(self, scope: Scope, receive: Receive, headers: Headers) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _Refused(413, f"a body of {declared} bytes exceeds the cluster limit of "
                          f"{limit:,} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "the peer disconnected mid-request")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Refused(413, f"the body exceeds the cluster limit of {limit:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _call(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        self._last_call = asyncio.get_running_loop().time()
        try:
            msg: dict[str, Any] = msgpack.unpackb(body)
            ns_name, hex_id, name, method = msg["ns"], msg["id"], msg.get("name"), msg["method"]
            payload, hops = msg["payload"], int(msg["hops"])
            chain = tuple((str(a), str(b)) for a, b in msg["chain"])
            if not (isinstance(method, str) and isinstance(ns_name, str)
                    and isinstance(hex_id, str) and isinstance(payload, bytes)
                    and (name is None or isinstance(name, str))):
                raise TypeError("wrong field types")
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a malformed call
            raise _Refused(400, f"malformed cluster call ({type(exc).__name__})") from None
        ns = self._app._namespaces.get(ns_name)
        if ns is not None and method not in ns._methods and method not in RUNTIME_METHODS:
            raise _Refused(403, f"{ns_name}.{method} is not callable through a stub")
        try:
            reply = await self._app._serve_forwarded(ns_name, hex_id, name, method, payload,
                                                     chain, hops, msg.get(tracing.TRACE_FIELD))
        except AppClosing:
            # The call did not start here: the caller retries at the next owner.
            return 503, b"", {"x-duro-moving": "1", "connection": "close"}
        except Exception as exc:  # noqa: BLE001 - the method's error, sent back to the caller
            reply = pack_error(exc)
        finally:
            self._last_call = asyncio.get_running_loop().time()
        return 200, reply, {}

    async def forward(self, address: str, ns: str, oid: ObjectId, method: str, payload: bytes,
                      chain: Chain, hops: int) -> bytes:
        """POST a call to the owner at *address*; :class:`OwnerUnreachable` if it cannot take it."""
        assert self._client is not None
        body = msgpack.packb({"ns": ns, "id": oid.hex, "name": oid.name, "method": method,
                              "payload": payload, "chain": [list(c) for c in chain],
                              "hops": hops, **tracing.carrier()})
        headers = {"content-type": _CONTENT_TYPE, **self.sign("POST", CALL_PATH, body)}
        peer = await self._take_slot(address)
        try:
            async with self._client.post(f"http://{address}{CALL_PATH}", data=body,
                                         headers=headers) as resp:
                content = await resp.read()
                status, moving = resp.status, resp.headers.get("x-duro-moving")
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            raise OwnerUnreachable(moving=False) from None  # no connection: it never arrived
        except TimeoutError as exc:
            raise CallTimeout(f"the owner at {address} did not answer in time; the outcome "
                              "is unknown", orig=exc) from exc
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(f"lost the connection to the owner at {address}; the "
                                     "outcome is unknown", orig=exc) from exc
        finally:
            peer.slots.release()
        if status == 503 and moving:
            raise OwnerUnreachable(moving=True)
        if status != 200:
            raise _refusal(status, content, ns, method, len(body))
        return content

    async def _take_slot(self, address: str) -> _Peer:
        """A connection slot to *address*, or :class:`Overloaded` (the call is not sent)."""
        cfg = self._app.config
        peer = self._peers.get(address)
        if peer is None:
            if len(self._peers) > 1000:  # addresses of processes long gone
                self._peers = {a: p for a, p in self._peers.items()
                               if p.waiting or p.slots.locked()}
            peer = self._peers[address] = _Peer(cfg.forward_connections)
        if not peer.slots.locked():
            await peer.slots.acquire()  # free: returns at once
            return peer
        if peer.waiting >= cfg.forward_queue:
            raise Overloaded(f"{cfg.forward_connections} calls to the owner at {address} are in "
                             f"flight and {peer.waiting} wait; this call was not sent, retry later",
                             not_run=True)
        peer.waiting += 1
        try:
            async with asyncio.timeout(cfg.forward_wait):
                await peer.slots.acquire()
        except TimeoutError:
            raise Overloaded(f"no connection to the owner at {address} came free within "
                             f"{cfg.forward_wait:g} s; this call was not sent, retry later",
                             not_run=True) from None
        finally:
            peer.waiting -= 1
        return peer


def _refusal(status: int, content: bytes, ns: str, method: str, size: int) -> Exception:
    """The duro error for a peer's refusal of a forwarded call (the peer logged why)."""
    why = content.decode("utf-8", "replace").removeprefix("duro cluster call refused: ")[:200]
    if status == 401:
        return ConfigError(
            f"the process owning this {ns} object refused this process's forwarded call: {why}. "
            "Processes that share a backend must run the same duro and, if one sets "
            "DURO_CLUSTER_SECRET, all must set the same one")
    if status == 413:
        return ValueTooLarge(f"a call to {ns}.{method} of {size:,} bytes is too large to forward: "
                             f"{why}")
    if status == 403:
        return ConfigError(f"the owning process refused {ns}.{method}: {why}")
    return BackendUnavailable(f"the process owning this {ns} object could not take the call "
                              f"(HTTP {status}: {why})")
