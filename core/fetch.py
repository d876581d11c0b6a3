"""HTTP requests and responses of durable objects, passed by value.

An object that defines ``async def fetch(self, request: duro.fetch.Request) -> Response`` is
reachable over HTTP (see :mod:`duro.server`). The request and the response cross the object's
boundary through the codec, exactly like a stub call: the server encodes the request, runs the
internal method ``"__fetch__"`` on the object's owner (here, or forwarded to the process holding
the lease), and the reply - the encoded response - leaves the object through the output gate,
so a client never sees a response before the writes made while producing it are durable.
"""

from __future__ import annotations

import json as _json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from starlette.datastructures import Headers

from duro.codec import decode, encode
from duro.errors import DuroError, ObjectError

if TYPE_CHECKING:
    from duro.instance import Instance
    from duro.websockets import WebSocket

__all__ = ["FETCH_METHOD", "BadRequest", "Request", "Response", "decode_request",
           "encode_http_request", "encode_request"]

log = logging.getLogger("duro.fetch")

FETCH_METHOD: Final = "__fetch__"
"""The internal method name under which an HTTP request runs as a turn of its object."""


class BadRequest(DuroError, ValueError):
    """The client sent something the object cannot read; the client gets *status* (4xx).

    Raised by :meth:`Request.json` (malformed JSON: 400; a non-JSON content type: 415), or by
    a ``fetch`` method itself; unless ``fetch`` catches it, the server answers with *status*.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _raw_headers(headers: Mapping[str, str] | Sequence[tuple[str, str]] | None) -> list[list[str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [[str(k).lower(), str(v)] for k, v in items]


class Request:
    """An HTTP request as an object's ``fetch`` sees it (already fully read; by value).

    ``method``, ``url`` (as the client sent it), ``path`` (the part after the object's address,
    always starting with ``/``), ``query_string``, ``query_params``, ``headers``
    (case-insensitive), ``body`` (bytes), ``client`` (``"host:port"`` or ``None``). For a
    WebSocket upgrade, ``websocket`` is the socket to pass to ``ctx.accept_websocket``; the
    object then answers ``Response(status=101)``, or any other response to refuse it.
    """

    __slots__ = ("_ws", "body", "client", "headers", "method", "path", "query_string", "url")

    def __init__(self, method: str, url: str, path: str, *, query_string: str = "",
                 headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
                 body: bytes = b"", client: str | None = None) -> None:
        self.method = method.upper()
        self.url = url
        self.path = path
        self.query_string = query_string
        self.headers = Headers(raw=[(k.encode("latin-1"), v.encode("latin-1"))
                                    for k, v in _raw_headers(headers)])
        self.body = body
        self.client = client
        self._ws: WebSocket | None = None

    @property
    def query_params(self) -> dict[str, str]:
        """The query string as a dict (the last value wins for repeated names)."""
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def websocket(self) -> WebSocket | None:
        """The WebSocket to accept, if this request is a WebSocket upgrade; else ``None``."""
        return self._ws

    @property
    def is_websocket(self) -> bool:
        """Whether this request asks for a WebSocket."""
        return self._ws is not None

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8", errors="replace")

    async def json(self) -> Any:
        """The body parsed as JSON (awaitable, as in Starlette).

        Raises :class:`BadRequest` (a ``ValueError``): status 415 if the request declares a
        content type that is not JSON, 400 if the body is not valid UTF-8 JSON.
        """
        ctype = self.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype and ctype != "application/json" and not ctype.endswith("+json"):
            raise BadRequest(f"expected a JSON body, not {ctype}", 415)
        try:
            return _json.loads(self.body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise BadRequest(f"malformed JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"<duro.fetch.Request {self.method} {self.path}>"


class Response:
    """An HTTP response returned by an object's ``fetch``.

    ``Response(body, status=200, headers=None, media_type=None)``; ``body`` is ``bytes`` or
    ``str`` (UTF-8). :meth:`json` and :meth:`text` build common ones. ``status=101`` accepts a
    WebSocket upgrade (after ``ctx.accept_websocket``).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes | str = b"", status: int = 200,
                 headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
                 media_type: str | None = None) -> None:
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"HTTP status must be an int in 100..599, not {status!r}")
        if isinstance(body, str):
            body = body.encode("utf-8")
            if media_type is None:
                media_type = "text/plain; charset=utf-8"
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"Response body must be bytes or str, not {type(body).__name__}")
        self.body = bytes(body)
        self.status = status
        self.headers = _raw_headers(headers)
        if media_type is not None and not any(k == "content-type" for k, _ in self.headers):
            self.headers.append(["content-type", media_type])

    @classmethod
    def json(cls, value: Any, status: int = 200,
             headers: Mapping[str, str] | None = None) -> Response:
        """A JSON response."""
        body = _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(body, status, headers, "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200,
             headers: Mapping[str, str] | None = None) -> Response:
        """A ``text/plain`` response."""
        return cls(text, status, headers, "text/plain; charset=utf-8")

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or ``None``."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def __repr__(self) -> str:
        return f"<duro.fetch.Response {self.status} {len(self.body)} bytes>"


# -- by value ------------------------------------------------------------------------------------


def encode_request(req: Request, websocket: str | None = None) -> bytes:
    """The request as codec bytes (the payload of a ``__fetch__`` call)."""
    return encode({
        "m": req.method, "u": req.url, "p": req.path, "q": req.query_string,
        "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers.raw],
        "b": req.body, "c": req.client, "ws": websocket,
    })


def encode_http_request(method: str, url: str, path: str, query_string: str,
                        raw_headers: Sequence[tuple[bytes, bytes]], body: bytes,
                        client: str | None) -> bytes:
    """The bytes :func:`encode_request` gives for the request these parts make (ASGI header
    pairs as they arrive), without building the :class:`Request` (the server's hot path)."""
    return encode({
        "m": method.upper(), "u": url, "p": path, "q": query_string,
        "h": [[k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in raw_headers],
        "b": body, "c": client, "ws": None,
    })


def decode_request(data: bytes) -> tuple[Request, str | None]:
    """Inverse of :func:`encode_request`: the request and the pending WebSocket's id, if any."""
    d = decode(data)
    req = Request(d["m"], d["u"], d["p"], query_string=d["q"],
                  headers=[(k, v) for k, v in d["h"]], body=d["b"], client=d["c"])
    return req, d["ws"]


def response_value(resp: Any) -> dict[str, Any]:
    """A ``fetch`` result as a codec value; also takes a non-streaming Starlette response."""
    if isinstance(resp, Response):
        return {"s": resp.status, "h": resp.headers, "b": resp.body}
    from starlette.responses import Response as StarletteResponse
    from starlette.responses import StreamingResponse

    if isinstance(resp, StarletteResponse) and not isinstance(resp, StreamingResponse):
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in resp.raw_headers
                   if k.lower() != b"content-length"]
        return {"s": resp.status_code, "h": headers, "b": bytes(resp.body)}
    raise TypeError(f"fetch() must return a duro.fetch.Response, not {type(resp).__name__}")


def response_from_value(value: dict[str, Any]) -> Response:
    """Inverse of :func:`response_value`."""
    return Response(value["b"], value["s"], [(k, v) for k, v in value["h"]])


async def _fetch_turn(inst: Instance, payload: bytes) -> Any:
    """The ``__fetch__`` turn: decode the request, call ``fetch``, encode the response."""
    fetch = getattr(inst.obj, "fetch", None)
    if fetch is None:
        raise ObjectError("NoFetch", f"{inst.ns.cls.__qualname__} has no fetch() method")
    req, ws_id = decode_request(payload)
    if ws_id is not None:
        hub = inst.app._websockets
        req._ws = None if hub is None else hub.pending(ws_id, inst)
    try:
        return response_value(await fetch(req))
    except BadRequest as exc:
        return response_value(Response.text(f"{exc.status} {exc.message}\n", exc.status))
    except Exception:
        log.exception("%s.fetch(%s %s) failed", inst.ns.name, req.method, req.path)
        raise


EVENTS: Final = {FETCH_METHOD: _fetch_turn}
"""The runtime event this module adds to every App (see ``App.events``)."""
