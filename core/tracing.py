"""OpenTelemetry spans for object calls (the optional ``duro[otel]`` extra).

With ``opentelemetry-api`` installed and a tracer provider configured (the global one, set by
``opentelemetry.trace.set_tracer_provider`` or the OTel SDK's auto-configuration, or one given
to ``configure()``), duro records:

- one span per object call, in the process that runs it, named ``<namespace>.<method>``
  (``Counter.increment``; an HTTP request to an object is ``<namespace>.fetch``): kind
  ``SERVER`` when the call arrived from another process, else ``INTERNAL``. It lasts from the
  moment the call is queued at the object until its result leaves the output gate, and is the
  current span while the method runs, so calls the method makes are its children. Attributes:
  ``duro.namespace``, ``duro.object_id`` (64 hex), ``duro.object_name`` (for objects addressed
  by name) and ``duro.method``. A method that raises sets the span's status to ``ERROR``
  (``error.type`` names the exception class) and records the exception;
- a ``CLIENT`` span when a call is forwarded to the process owning the object
  (``server.address``, ``server.port``), whose trace context (W3C ``traceparent`` and
  ``tracestate``, plus baggage: whatever propagators OpenTelemetry is configured with) travels
  inside the forwarded call's body. The body is what the cluster's HMAC signature covers, so
  the context is as authenticated as the call; the owner continues that trace, and the two
  processes' spans form one trace;
- a ``SERVER`` span per HTTP request on the public edge (``GET /Counter/name/{name}``), which
  continues a ``traceparent`` sent by the client; when the host ASGI app already traces the
  request (a current span exists), duro's span is an ``INTERNAL`` child of it instead;
- a root span per alarm run (``<namespace>.alarm``, with ``duro.alarm.retry_count``).

Without OpenTelemetry, or with no tracer provider configured, duro makes no spans and pays a
check of one global per call: this module is the only one that imports ``opentelemetry``, and
only on first use.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from importlib import metadata
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from duro.calls import unpack
from duro.errors import BackendNotInstalled, ObjectError
from duro.signals import Gone

if TYPE_CHECKING:
    import asyncio

    from duro.ids import ObjectId

__all__ = ["configure"]

log = logging.getLogger("duro.tracing")

TRACE_FIELD: Final = "trace"
"""Key of the (optional) trace context carrier in a forwarded call's body."""

_absent = False  # opentelemetry-api is not installed (found on first use)
_api: Any = None  # the opentelemetry modules, once imported: see _import()
_override: Any = None  # the tracer provider given to configure(), if any
_tracer_cache: Any = None  # the tracer, once a real provider was found
_version = ""


def configure(tracer_provider: Any = None) -> None:
    """Make duro's spans with *tracer_provider* (an OpenTelemetry ``TracerProvider``) instead
    of the global one; ``None`` goes back to the global provider.

    Not needed when the global provider is set (``opentelemetry.trace.set_tracer_provider``,
    or ``opentelemetry-instrument``): duro picks it up by itself, even once calls have run.
    """
    global _override, _tracer_cache
    if tracer_provider is not None:
        _import()
        if _absent:
            raise BackendNotInstalled(
                "tracing needs OpenTelemetry: pip install 'duro[otel]'")
    _override = tracer_provider
    _tracer_cache = None


class _Api:
    """The parts of ``opentelemetry`` duro uses (imported together, once)."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.context, self.propagate, self.trace = context, propagate, trace
        self.SpanKind, self.Status, self.StatusCode = SpanKind, Status, StatusCode
        self.noop_providers = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        # The global provider is read from the API's module global (a dict lookup per call,
        # where get_tracer_provider() also reads os.environ); if a later API renames it, the
        # public function is used instead.
        self.has_global = hasattr(trace, "_TRACER_PROVIDER")
        if self.has_global and os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
            trace.get_tracer_provider()  # loads and installs the provider the variable names


def _import() -> None:
    global _absent, _api, _version
    if _api is not None or _absent:
        return
    try:
        _api = _Api()
    except ImportError:
        _absent = True
        return
    except Exception:  # a broken installation: say so once, then run without spans
        log.warning("duro: OpenTelemetry failed to import; no spans will be recorded",
                    exc_info=True)
        _absent = True
        return
    try:
        _version = metadata.version("duro")
    except metadata.PackageNotFoundError:
        _version = ""


def _tracer() -> Any:
    """The tracer, or ``None`` when spans would go nowhere (the per-call check)."""
    if _tracer_cache is not None:
        return _tracer_cache
    if _absent:
        return None
    return _resolve()


def _resolve() -> Any:
    global _tracer_cache
    if _api is None:
        _import()
        if _api is None:
            return None
    provider = _override
    if provider is None:
        trace = _api.trace
        provider = trace._TRACER_PROVIDER if _api.has_global else trace.get_tracer_provider()
        if provider is None or isinstance(provider, _api.noop_providers):
            return None
    # A global provider, once set, cannot be replaced (OpenTelemetry refuses): cache it.
    _tracer_cache = provider.get_tracer("duro", _version or None)
    return _tracer_cache


def _display(method: str) -> str:
    return method[2:-2] if method.startswith("__") and method.endswith("__") else method


def _object_attributes(namespace: str, oid: ObjectId, method: str) -> dict[str, str]:
    attrs = {"duro.namespace": namespace, "duro.object_id": oid.hex, "duro.method": method}
    if oid.name is not None:
        attrs["duro.object_name"] = oid.name
    return attrs


def _set_error(span: Any, exc: BaseException, type_name: str | None = None) -> None:
    api = _api
    name = type_name or type(exc).__name__
    span.record_exception(exc)
    span.set_attribute("error.type", name)
    span.set_status(api.Status(api.StatusCode.ERROR, f"{name}: {exc}"))


# -- calls at the owner (duro.instance) --------------------------------------------------------


def start_call(namespace: str, oid: ObjectId, method: str, fut: asyncio.Future[bytes]) -> Any:
    """A span for a call just queued at an object (``None`` when not tracing): its parent is the
    caller's current context. Returns the context to make current while the call's turn runs;
    the span ends when *fut* (the reply envelope) is done."""
    tracer = _tracer_cache  # _tracer(), inlined: this runs on every call
    if tracer is None:
        if _absent:
            return None
        tracer = _resolve()
        if tracer is None:
            return None
    api = _api
    parent = api.context.get_current()
    remote = api.trace.get_current_span(parent).get_span_context().is_remote
    span = tracer.start_span(
        f"{namespace}.{_display(method)}", context=parent,
        kind=api.SpanKind.SERVER if remote else api.SpanKind.INTERNAL,
        attributes=_object_attributes(namespace, oid, method))
    fut.add_done_callback(functools.partial(_call_done, span))
    return api.trace.set_span_in_context(span, parent)


def _call_done(span: Any, fut: asyncio.Future[bytes]) -> None:
    try:
        if fut.cancelled():
            span.set_status(_api.Status(_api.StatusCode.ERROR,
                                        "cancelled: the caller stopped waiting"))
            return
        exc = fut.exception()
        if isinstance(exc, Gone):  # dispatched again (to a new activation or another owner)
            span.set_attribute("duro.redispatched", True)
        elif exc is not None:
            _set_error(span, exc)
        else:
            reply = fut.result()
            if reply[:1] == b"\x00":  # an error envelope (duro.calls.pack_error)
                try:
                    unpack(reply)
                except Exception as err:  # noqa: BLE001 - recorded on the span
                    _set_error(span, err,
                               err.type_name if isinstance(err, ObjectError) else None)
    finally:
        span.end()


def attach(ctx: Any) -> Any:
    """Make *ctx* (from :func:`start_call`) current; returns the token for :func:`detach`."""
    return _api.context.attach(ctx)


def detach(token: Any) -> None:
    """Undo :func:`attach`."""
    _api.context.detach(token)


class _NoSpan:
    """What the span context managers give when not tracing: does nothing, costs nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.end(exc)

    def end(self, exc: BaseException | None = None) -> None:
        """Not tracing: nothing to end."""

    def reply(self, reply: bytes | None) -> None:
        """Not tracing: nothing to record."""

    def status(self, status: int) -> None:
        """Not tracing: nothing to record."""

    def failed(self, exc: BaseException) -> None:
        """Not tracing: nothing to record."""


_NO_SPAN: Final = _NoSpan()


class _Span(_NoSpan):
    """A started span, current inside ``with``; ended (with an exception's status) on exit."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Any, ctx: Any) -> None:
        self._span = span
        self._token = _api.context.attach(_api.trace.set_span_in_context(span, ctx))

    def end(self, exc: BaseException | None = None) -> None:
        """Record *exc* (if any), leave the span's context and end the span."""
        try:
            if exc is not None:
                self.failed(exc)
        finally:
            _api.context.detach(self._token)
            self._span.end()

    def reply(self, reply: bytes | None) -> None:
        """A forwarded call's reply: an error envelope sets the error status."""
        if reply is None:
            self._span.set_attribute("duro.moving", True)  # the owner is handing it over
            return
        if reply[:1] == b"\x00":
            try:
                unpack(reply)
            except Exception as err:  # noqa: BLE001 - recorded on the span
                _set_error(self._span, err,
                           err.type_name if isinstance(err, ObjectError) else None)

    def status(self, status: int) -> None:
        """An HTTP response's status (5xx sets the error status)."""
        self._span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self._span.set_status(_api.Status(_api.StatusCode.ERROR))

    def failed(self, exc: BaseException) -> None:
        """Record *exc* and set the error status."""
        _set_error(self._span, exc)


# -- alarms (duro.instance) --------------------------------------------------------------------


def alarm_span(namespace: str, oid: ObjectId, retry: int) -> _NoSpan:
    """A root span for one alarm run of an object, current until ``end(failure)``."""
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    root = _api.context.Context()
    attrs: dict[str, Any] = _object_attributes(namespace, oid, "alarm")
    attrs["duro.alarm.retry_count"] = retry
    return _Span(tracer.start_span(f"{namespace}.alarm", context=root,
                                   kind=_api.SpanKind.INTERNAL, attributes=attrs), root)


# -- forwarding (duro.app, duro.transport) -----------------------------------------------------


def forward_span(namespace: str, oid: ObjectId, method: str, address: str) -> _NoSpan:
    """A ``CLIENT`` span for a call forwarded to *address* (``with``; its context is what
    :func:`carrier` puts in the forwarded body)."""
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    attrs: dict[str, Any] = _object_attributes(namespace, oid, method)
    host, _, port = address.rpartition(":")
    attrs["server.address"] = host.strip("[]")
    if port.isdigit():
        attrs["server.port"] = int(port)
    parent = _api.context.get_current()
    return _Span(tracer.start_span(f"{namespace}.{_display(method)}", context=parent,
                                   kind=_api.SpanKind.CLIENT, attributes=attrs), parent)


def carrier() -> dict[str, Any]:
    """Fields to add to a forwarded call's body: ``{}`` when not tracing, else
    ``{"trace": {"traceparent": …, "tracestate": …}}`` (the current context, injected by the
    configured propagators)."""
    if _tracer() is None:
        return {}
    headers: dict[str, str] = {}
    _api.propagate.inject(headers)
    return {TRACE_FIELD: headers} if headers else {}


def inbound(fields: Any) -> _NoSpan:
    """Continue the trace a forwarded call carries (``with``, around serving it): *fields* is
    the body's ``trace`` value (anything a peer sent; malformed values are ignored).

    The call's context is exactly what the peer sent (none: a new trace), never what the
    listener's task happened to inherit from the code that started the App.
    """
    if _tracer() is None:
        return _NO_SPAN
    if fields is None:
        fields = {}
    elif not (isinstance(fields, dict)
              and all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())):
        log.debug("duro: ignored a malformed trace context in a forwarded call: %.200r", fields)
        fields = {}
    return _Inbound(_api.propagate.extract(fields))


class _Inbound(_NoSpan):
    """The remote context made current (no span of its own: the call's span is its child)."""

    __slots__ = ("_token",)

    def __init__(self, ctx: Any) -> None:
        self._token = _api.context.attach(ctx)

    def end(self, exc: BaseException | None = None) -> None:
        """Leave the remote context."""
        _api.context.detach(self._token)


# -- the public HTTP edge (duro.server) ------------------------------------------------------


def http_span(scope: Any, namespace: str, oid: ObjectId) -> _NoSpan:
    """A span for an HTTP request to an object (``with``; call ``status()`` with the answer).

    It continues the client's ``traceparent``; under a host app that already traces the request
    it is an ``INTERNAL`` child of the host's span.
    """
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    api = _api
    route = f"/{namespace}/name/{{name}}" if oid.name is not None else f"/{namespace}/id/{{id}}"
    method = scope.get("method", "GET")
    attrs: dict[str, Any] = {"http.request.method": method, "http.route": route,
                             "url.path": scope.get("path", ""), "duro.namespace": namespace,
                             "duro.object_id": oid.hex}
    current = api.context.get_current()
    if api.trace.get_current_span(current).is_recording():  # the host app's request span
        parent, kind = current, api.SpanKind.INTERNAL
    else:  # a new trace, or the client's: not whatever the listener's task inherited
        parent = api.propagate.extract(_headers(scope.get("headers", ())))
        kind = api.SpanKind.SERVER
    return _Span(tracer.start_span(f"{method} {route}", context=parent, kind=kind,
                                   attributes=attrs), parent)


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw:
        key = k.decode("latin-1").lower()
        out[key] = f"{out[key]},{v.decode('latin-1')}" if key in out else v.decode("latin-1")
    return out
