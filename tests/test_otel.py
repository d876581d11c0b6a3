"""OpenTelemetry spans (the ``duro[otel]`` extra), recorded by the SDK's in-memory exporter:
a span per call with its attributes, one trace across a forwarded call between two Apps that
share a SQLite file (real cluster listeners), an HTTP request continuing the client's
``traceparent``, error status, a root span per alarm, and nothing at all (and nothing broken)
without a tracer provider or without OpenTelemetry installed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import duro
import duro.tracing
from duro.fetch import Request, Response
from duro.server import configure

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

_FIRED: dict[str, asyncio.Event] = {}


class Greeter(duro.DurableObject):
    async def hello(self, who: str) -> str:
        return f"hello {who}"

    async def boom(self) -> None:
        raise ValueError("no greeting today")

    async def relay(self, other: str) -> str:
        """Call another Greeter from inside this call (a child span)."""
        result: str = await self.env.namespace(Greeter).get_by_name(other).hello(self.id.name)
        return result

    async def arm(self, when: float) -> None:
        self.storage.set_alarm(when)

    async def alarm(self, info: duro.AlarmInfo) -> None:
        await self.env.namespace(Greeter).get_by_name("helper").hello("alarm")
        _FIRED.setdefault(self.id.name or "", asyncio.Event()).set()

    async def fetch(self, request: Request) -> Response:
        return Response.text(f"fetched {request.path}")


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp, exporter
    tp.shutdown()


@pytest.fixture
def spans(provider: tuple[TracerProvider, InMemorySpanExporter]
          ) -> Iterator[InMemorySpanExporter]:
    """duro's spans go to a fresh in-memory exporter during the test."""
    tp, exporter = provider
    exporter.clear()
    duro.tracing.configure(tp)
    yield exporter
    duro.tracing.configure(None)
    exporter.clear()


def only(found: Sequence[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    match = [s for s in found if s.name == name and (kind is None or s.kind == kind)]
    assert len(match) == 1, [(s.name, s.kind) for s in found]
    return match[0]


def make_env(holder: list[duro.App]) -> Any:
    class Env:
        def namespace(self, cls: type[Greeter]) -> duro.Namespace[Greeter]:
            return holder[0].namespace(cls)

    return Env()


async def test_a_local_call_makes_one_span_with_the_objects_attributes(
        duro_app_factory: Callable[..., duro.App], spans: InMemorySpanExporter) -> None:
    async with duro_app_factory() as app:
        stub = app.namespace(Greeter).get_by_name("ada")
        assert await stub.hello("you") == "hello you"
    (span,) = spans.get_finished_spans()
    assert span.name == "Greeter.hello"
    assert span.kind == SpanKind.INTERNAL
    assert span.parent is None
    assert span.status.status_code == StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "duro.namespace": "Greeter", "duro.object_id": stub.id.hex, "duro.object_name": "ada",
        "duro.method": "hello"}


async def test_calls_made_inside_a_call_are_its_children(
        duro_app_factory: Callable[..., duro.App], spans: InMemorySpanExporter) -> None:
    holder: list[duro.App] = []
    async with duro_app_factory(env=make_env(holder)) as app:
        holder.append(app)
        ns = app.namespace(Greeter)
        for _ in range(2):  # the object's worker outlives the first call: no stale parent
            assert await ns.get_by_name("a").relay("b") == "hello a"
    found = spans.get_finished_spans()
    outer = [s for s in found if s.name == "Greeter.relay"]
    inner = [s for s in found if s.name == "Greeter.hello"]
    assert len(outer) == 2 and len(inner) == 2
    for parent, child in zip(outer, inner, strict=True):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
        assert child.context.trace_id == parent.context.trace_id
    assert outer[0].context.trace_id != outer[1].context.trace_id


async def test_an_error_sets_the_span_status(
        duro_app_factory: Callable[..., duro.App], spans: InMemorySpanExporter) -> None:
    async with duro_app_factory() as app:
        with pytest.raises(ValueError, match="no greeting"):
            await app.namespace(Greeter).get_by_name("ada").boom()
    span = only(spans.get_finished_spans(), "Greeter.boom")
    assert span.status.status_code == StatusCode.ERROR
    assert "no greeting today" in (span.status.description or "")
    assert (span.attributes or {})["error.type"] == "ValueError"
    assert [e.name for e in span.events] == ["exception"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'duro.db'}"


async def test_a_forwarded_call_is_one_trace_across_both_processes(
        sqlite_url: str, spans: InMemorySpanExporter,
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer = provider[0].get_tracer("test")
    async with duro.App(sqlite_url) as owner, duro.App(sqlite_url) as caller:
        assert owner.address and caller.address and owner.address != caller.address
        assert await owner.namespace(Greeter).get_by_name("k").hello("owner") == "hello owner"
        stub = caller.namespace(Greeter).get_by_name("k")
        spans.clear()
        with tracer.start_as_current_span("request") as root:
            assert await stub.hello("caller") == "hello caller"
        with pytest.raises(ValueError, match="no greeting"):
            await stub.boom()
        assert caller.stats()["Greeter"].forwarded == 2
    found = spans.get_finished_spans()
    client = only(found, "Greeter.hello", SpanKind.CLIENT)
    server = only(found, "Greeter.hello", SpanKind.SERVER)
    trace_id = root.get_span_context().trace_id
    assert client.context.trace_id == server.context.trace_id == trace_id
    assert client.parent is not None and client.parent.span_id == root.get_span_context().span_id
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == client.context.span_id
    host, port = owner.address.rsplit(":", 1)
    assert (client.attributes or {})["server.address"] == host
    assert (client.attributes or {})["server.port"] == int(port)
    assert (server.attributes or {})["duro.object_name"] == "k"
    # The owner's error marks both sides.
    assert only(found, "Greeter.boom", SpanKind.CLIENT).status.status_code == StatusCode.ERROR
    assert only(found, "Greeter.boom", SpanKind.SERVER).status.status_code == StatusCode.ERROR


async def test_an_http_request_continues_the_clients_traceparent(
        duro_app_factory: Callable[..., duro.App], spans: InMemorySpanExporter) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    app = duro_app_factory()
    app.namespace(Greeter)
    server = configure(app)
    async with app, httpx.AsyncClient(transport=httpx.ASGITransport(app=server),
                                      base_url="http://duro.test") as client:
        resp = await client.get("/Greeter/name/ada/hi",
                                headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
        assert resp.status_code == 200 and resp.text == "fetched /hi"
    found = spans.get_finished_spans()
    edge = only(found, "GET /Greeter/name/{name}")
    call = only(found, "Greeter.fetch")
    assert edge.kind == SpanKind.SERVER
    assert f"{edge.context.trace_id:032x}" == trace_id
    assert edge.parent is not None and f"{edge.parent.span_id:016x}" == parent_id
    assert (edge.attributes or {})["http.response.status_code"] == 200
    assert call.parent is not None and call.parent.span_id == edge.context.span_id
    assert call.context.trace_id == edge.context.trace_id


async def test_under_a_host_app_that_traces_requests_the_edge_span_is_its_child(
        duro_app_factory: Callable[..., duro.App], spans: InMemorySpanExporter,
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer = provider[0].get_tracer("host")
    app = duro_app_factory()
    app.namespace(Greeter)
    server = configure(app)

    async def host(scope: Any, receive: Any, send: Any) -> None:  # an instrumented host app
        with tracer.start_as_current_span("host request", kind=SpanKind.SERVER):
            await server(scope, receive, send)

    async with app, httpx.AsyncClient(transport=httpx.ASGITransport(app=host),
                                      base_url="http://duro.test") as client:
        assert (await client.get("/Greeter/name/ada/")).status_code == 200
    found = spans.get_finished_spans()
    outer = only(found, "host request")
    edge = only(found, "GET /Greeter/name/{name}")
    assert edge.kind == SpanKind.INTERNAL
    assert edge.parent is not None and edge.parent.span_id == outer.context.span_id


async def test_requests_do_not_inherit_the_context_the_app_was_started_in(
        duro_app_factory: Callable[..., duro.App], spans: InMemorySpanExporter,
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    """The public listener's tasks are created while the App starts, inside a span here: a
    request without ``traceparent`` still starts a new trace."""
    from duro.listener import start_public_listener, stop_public_listener

    tracer = provider[0].get_tracer("test")
    app = duro_app_factory()
    app.namespace(Greeter)
    server = configure(app)
    with tracer.start_as_current_span("startup") as startup:
        await app.start()
        public, url = await start_public_listener(server, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/Greeter/name/ada/")).status_code == 200
    finally:
        await stop_public_listener(public)
        await app.close()
    edge = only(spans.get_finished_spans(), "GET /Greeter/name/{name}")
    assert edge.kind == SpanKind.SERVER and edge.parent is None
    assert edge.context.trace_id != startup.get_span_context().trace_id


async def test_an_alarm_run_is_a_root_span(
        duro_app_factory: Callable[..., duro.App], duro_clock: duro.ManualClock,
        spans: InMemorySpanExporter) -> None:
    _FIRED.clear()
    holder: list[duro.App] = []
    async with duro_app_factory(env=make_env(holder)) as app:
        holder.append(app)
        await app.namespace(Greeter).get_by_name("clock").arm(duro_clock.time() + 5)
        fired = _FIRED.setdefault("clock", asyncio.Event())
        async with asyncio.timeout(60):
            while not fired.is_set():
                duro_clock.advance(1.0)
                await asyncio.sleep(0.01)
    found = spans.get_finished_spans()
    alarm = only(found, "Greeter.alarm")
    arm = only(found, "Greeter.arm")
    assert alarm.parent is None and alarm.context.trace_id != arm.context.trace_id
    assert (alarm.attributes or {})["duro.alarm.retry_count"] == 0
    helper = only(found, "Greeter.hello")
    assert helper.parent is not None and helper.parent.span_id == alarm.context.span_id


async def test_without_a_tracer_provider_nothing_is_recorded_and_nothing_breaks(
        sqlite_url: str, provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    exporter = provider[1]
    exporter.clear()
    duro.tracing.configure(None)  # and no global provider is set in this test process
    async with duro.App(sqlite_url) as owner, duro.App(sqlite_url) as caller:
        assert await owner.namespace(Greeter).get_by_name("k").hello("a") == "hello a"
        assert await caller.namespace(Greeter).get_by_name("k").hello("b") == "hello b"
        assert caller.stats()["Greeter"].forwarded == 1
    assert duro.tracing._tracer() is None
    assert exporter.get_finished_spans() == ()


def test_a_malformed_trace_context_from_a_peer_is_ignored(
        spans: InMemorySpanExporter) -> None:
    for junk in ("00-abc", {"traceparent": 5}, [1, 2], {"traceparent": "not a traceparent"}):
        with duro.tracing.inbound(junk):
            pass
    assert spans.get_finished_spans() == ()


def test_duro_runs_without_opentelemetry_installed(tmp_path: Path) -> None:
    """A forwarded call and an HTTP request carrying a traceparent, with ``opentelemetry``
    unimportable: everything works, and duro never imports it."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # import opentelemetry raises ImportError
        import httpx
        import duro
        from duro.fetch import Response
        from duro.server import configure

        class Greeter(duro.DurableObject):
            async def hello(self, who):
                return "hello " + who
            async def fetch(self, request):
                return Response.text("fetched")

        async def main():
            url = "sqlite:///{tmp_path / 'duro.db'}"
            a = duro.App(url)
            server = configure(a)
            async with a, duro.App(url) as b:
                assert await a.namespace(Greeter).get_by_name("k").hello("a") == "hello a"
                assert await b.namespace(Greeter).get_by_name("k").hello("b") == "hello b"
                assert b.stats()["Greeter"].forwarded == 1
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server),
                                             base_url="http://duro.test") as client:
                    r = await client.get("/Greeter/name/k/", headers={{
                        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}})
                    assert r.text == "fetched", r.text
            assert duro.tracing._absent and duro.tracing._tracer() is None
            try:
                duro.tracing.configure(object())
            except duro.errors.BackendNotInstalled as exc:
                assert "duro[otel]" in str(exc), exc
            else:
                raise AssertionError("configure() accepted a provider without OpenTelemetry")
            print("ok")

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_a_global_provider_set_after_calls_ran_is_picked_up() -> None:
    """The usual setup, ``trace.set_tracer_provider``, in a process of its own (the global
    provider can be set only once per process)."""
    script = textwrap.dedent("""
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import duro

        class Greeter(duro.DurableObject):
            async def hello(self, who):
                return "hello " + who

        async def main():
            exporter = InMemorySpanExporter()
            async with duro.App("memory://", listen=None) as app:
                stub = app.namespace(Greeter).get_by_name("k")
                await stub.hello("before")
                provider = TracerProvider()
                provider.add_span_processor(SimpleSpanProcessor(exporter))
                trace.set_tracer_provider(provider)
                await stub.hello("after")
            print([s.name for s in exporter.get_finished_spans()])

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "['Greeter.hello']", done.stdout + done.stderr


def test_importing_duro_does_not_import_opentelemetry() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, duro, duro.server, duro.transport; "
                               "print('opentelemetry' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
