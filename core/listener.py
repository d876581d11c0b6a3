"""The public HTTP listener of ``duro serve``: uvicorn serving a :class:`duro.server.Server`.

It is separate from the cluster listener (:mod:`duro.transport`): it serves only the object
routes, optionally over TLS (``ssl_certfile``/``ssl_keyfile``, as uvicorn takes them), and
closes connections whose request head does not arrive within ``header_timeout`` seconds
(slow-loris) or grows beyond ``max_header_bytes``, which uvicorn alone does not do (its
keep-alive timeout only covers idle time between requests; httptools bounds no head).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any, Final

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from duro.errors import ConfigError
from duro.transport import EmbeddedServer

if TYPE_CHECKING:
    from duro.server import Server

__all__ = ["start_public_listener", "stop_public_listener"]


_TOO_LARGE: Final = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                     b"connection: close\r\n\r\n")


def _guarded(base: type[asyncio.Protocol], timeout: float, max_head: int) -> type[asyncio.Protocol]:
    """*base* (a uvicorn HTTP protocol) refusing request heads that come too slowly (closed
    after *timeout* seconds) or are too large (431 beyond *max_head* bytes)."""

    class Protocol(base):  # type: ignore[valid-type,misc]
        # One timer per connection, moved forward lazily: a timer per request would keep
        # every finished request's cycle (and its events, deques, closures) alive for
        # *timeout* seconds, tens of thousands of objects that every full GC pass walks.
        _duro_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._duro_arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._duro_timer is not None:
                self._duro_timer.cancel()
                self._duro_timer = None
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._duro_arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is self._duro_cycle and self.transport.get_protocol() is self:
                self._duro_head += len(data)  # bytes that did not complete a request head
                if self._duro_head > max_head and not self.transport.is_closing():
                    self.transport.write(_TOO_LARGE)
                    self.transport.close()

        def _duro_arm(self) -> None:
            """The next request head must arrive within *timeout* seconds from now."""
            self._duro_cycle = self.cycle
            self._duro_head = 0
            self._duro_deadline = self.loop.time() + timeout
            if self._duro_timer is None:
                self._duro_timer = self.loop.call_at(self._duro_deadline, self._duro_expire)

        def _duro_expire(self) -> None:
            self._duro_timer = None
            transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                return  # closed, or upgraded to a WebSocket
            if self.cycle is not self._duro_cycle:
                return  # a request began since the deadline was set; its end re-arms
            if self.loop.time() < self._duro_deadline:  # re-armed since: wait for the rest
                self._duro_timer = self.loop.call_at(self._duro_deadline, self._duro_expire)
            else:
                transport.close()

    return Protocol


async def start_public_listener(server: Server, host: str, port: int, *,
                                ssl_certfile: str | None = None,
                                ssl_keyfile: str | None = None,
                                log_level: str | None = "warning") -> tuple[Any, str]:
    """Serve *server*'s routes on *host*:*port*; return the running uvicorn server and its URL."""
    if ssl_keyfile and not ssl_certfile:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no delayed-ACK wait per reply
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", orig=exc) from exc
    opts = server.options
    config = uvicorn.Config(
        server, lifespan="off", log_level=log_level, access_log=False,
        http=_guarded(AutoHTTPProtocol, opts.header_timeout, opts.max_header_bytes),
        h11_max_incomplete_event_size=opts.max_header_bytes,
        timeout_keep_alive=5, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        **server.uvicorn_options())
    try:
        config.load()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        sock.close()
        raise ConfigError(f"cannot use the TLS certificate/key: {exc}", orig=exc) from exc
    uv = EmbeddedServer(config)
    task = asyncio.ensure_future(uv.serve(sockets=[sock]))
    while not uv.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.001)
    uv.duro_task = task  # type: ignore[attr-defined]
    bound = sock.getsockname()[1]
    shown = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    return uv, ("https" if ssl_certfile else "http") + f"://{shown}"


async def stop_public_listener(uv: Any) -> None:
    """Stop a listener from :func:`start_public_listener` (open connections close)."""
    uv.should_exit = True
    await asyncio.gather(uv.duro_task, return_exceptions=True)
