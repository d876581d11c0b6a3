"""Serving objects over HTTP and WebSockets: real `duro serve` processes, real clients.

Multi-process tests start ``python -m duro.serve_cli tests/test_serve.py:make_app`` (the code
behind ``duro serve``) twice on one SQLite file (and once on S3), and drive the examples with
httpx and the ``websockets`` client. Single-process tests serve an App in-process on a real
port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import duro
from duro.backends import ObjectRef, open_backend
from duro.codec import decode
from duro.fetch import Request, Response
from duro.ids import id_from_name
from duro.listener import start_public_listener, stop_public_listener
from duro.server import configure
from duro.testing import make_backend_url

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
THIS = Path(__file__).resolve()

# -- the app the server processes run ---------------------------------------------------------

_HELD: dict[str, asyncio.Event] = {}
_APP: list[duro.App] = []


class Bare(duro.DurableObject):
    """No fetch: not reachable over HTTP."""

    async def ping(self) -> str:
        return "pong"


class Probe(duro.DurableObject):
    """Reports on the process that serves it (each probe name is a fresh, local object)."""

    async def fetch(self, request: Request) -> Response:
        app = _APP[0]
        hub = app._websockets
        live = {name: len(ns._instances) for name, ns in app._namespaces.items()}
        stats = {name: s.as_dict() for name, s in app.stats().items()}
        return Response.json({"pid": os.getpid(), "address": app.address, "live": live,
                              "stats": stats, "sockets": hub.count() if hub else 0})


class Gate(duro.DurableObject):
    """``/hold`` waits until ``/release/<name>`` (sent to another Gate object) lets it go."""

    async def fetch(self, request: Request) -> Response:
        if request.path == "/hold":
            ev = _HELD.setdefault(self.id.name or "", asyncio.Event())
            await ev.wait()
            return Response.text("released")
        if request.path.startswith("/release/"):
            _HELD.setdefault(request.path.rsplit("/", 1)[1], asyncio.Event()).set()
            return Response.text("ok")
        if request.path == "/boom":
            raise RuntimeError("boom")
        if request.path == "/echo":
            return Response.json({"method": request.method, "path": request.path,
                                  "query": request.query_params, "len": len(request.body),
                                  "ctype": request.headers.get("content-type"),
                                  "url": request.url})
        return Response.text("?", 404)


def _auth(conn: Any, namespace: str, oid: duro.ObjectId) -> Any:
    if conn.headers.get("x-deny"):
        return False
    if conn.query_params.get("token") == "bad":
        return Response.text("bad token", 401)
    return True


def make_app() -> duro.App:
    """The served App: the examples plus test objects, tuned by environment variables."""
    sys.path.insert(0, str(EXAMPLES))
    from chat import ChatRoom  # type: ignore[import-not-found]
    from counter_http import Counter  # type: ignore[import-not-found]

    env = os.environ
    app = duro.App(lease_ttl=float(env.get("T_TTL", "10")),
                   drift_margin=float(env.get("T_MARGIN", "1")),
                   idle_timeout=float(env.get("T_IDLE", "60")),
                   max_queue=int(env.get("T_MAXQ", "1000")))
    for cls in (Counter, ChatRoom, Bare, Probe, Gate):
        app.namespace(cls)
    configure(app, auth=_auth, max_body_bytes=4096, max_message_bytes=4096)
    _APP.append(app)
    return app


# -- helpers --------------------------------------------------------------------------------


class Served:
    """One ``duro serve`` process."""

    def __init__(self, url: str, tmp: Path, **env: str) -> None:
        self.log = tmp / f"serve-{uuid.uuid4().hex[:6]}.log"
        full = {**os.environ, **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duro.serve_cli", f"{THIS}:make_app", "--port", "0",
             "--backend", url],
            stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, env=full, cwd=tmp)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("duro serve: http://"), self.log.read_text()
        self.address = line.split()[2].removeprefix("http://")  # the public listener
        self.cluster = line.split("cluster=")[1].split()[0]  # where peers forward (the lease)
        self.base = f"http://{self.address}"

    def probe(self) -> dict[str, Any]:
        r = httpx.get(f"{self.base}/Probe/name/{uuid.uuid4().hex}/", timeout=30)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        assert data["address"] == self.cluster  # a fresh probe object activates locally
        return data

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(url: str, **env: str) -> Served:
        s = Served(url, tmp_path, **env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def lease_of(url: str, ns: str, name: str) -> Any:
    backend = open_backend(url)
    try:
        return backend.read_lease(ObjectRef(ns, id_from_name(ns, name).hex))
    finally:
        backend.close()


async def recv_json(ws: ClientConnection, type_: str | None = None) -> dict[str, Any]:
    """The next JSON event (of *type_*, skipping others)."""
    while True:
        async with asyncio.timeout(30):
            raw = await ws.recv()
        msg: dict[str, Any] = json.loads(raw)
        if type_ is None or msg.get("type") == type_:
            return msg


async def closed_code(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                await ws.recv()
    return ws.close_code


# -- HTTP across two processes --------------------------------------------------------------


def test_http_counter_forwarded_keeps_epoch(serve: Callable[..., Served], tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    a, b = serve(url), serve(url)
    r = httpx.post(f"{a.base}/Counter/name/alice/increment?by=2", timeout=30)
    assert r.status_code == 200 and r.json() == {"n": 2}
    lease = lease_of(url, "Counter", "alice")
    assert lease.address == a.cluster  # A owns alice
    with httpx.Client(base_url=b.base, timeout=30) as client:
        for i in range(1000):
            r = client.post("/Counter/name/alice/increment")
            assert r.status_code == 200, r.text
            assert r.json() == {"n": 3 + i}
        assert client.get("/Counter/name/alice/").json() == {"n": 1002}
        oid = id_from_name("Counter", "alice")
        assert client.get(f"/Counter/id/{oid.hex}/").json() == {"n": 1002}
    after = lease_of(url, "Counter", "alice")
    assert (after.epoch, after.owner, after.address) == (lease.epoch, lease.owner, a.cluster)
    assert b.probe()["live"]["Counter"] == 0  # B never activated alice
    assert a.probe()["stats"]["Counter"]["forwarded"] == 0
    assert b.probe()["stats"]["Counter"]["forwarded"] == 1002
    # The responses left only after the writes were durable: the backend holds the count.
    backend = open_backend(url)
    try:
        ref = ObjectRef("Counter", id_from_name("Counter", "alice").hex)
        assert decode(backend.get_many(ref, [b"n"])[b"n"]) == 1002
    finally:
        backend.close()


def test_http_on_s3_two_processes(serve: Callable[..., Served], tmp_path: Path,
                                  duro_s3_endpoint: str) -> None:
    url = make_backend_url("s3", tmp_path, duro_s3_endpoint)
    a, b = serve(url), serve(url)
    assert httpx.post(f"{a.base}/Counter/name/s3/increment", timeout=30).json() == {"n": 1}
    epoch = lease_of(url, "Counter", "s3").epoch
    for i in range(20):
        r = httpx.post(f"{b.base}/Counter/name/s3/increment", timeout=30)
        assert r.json() == {"n": 2 + i}
    assert lease_of(url, "Counter", "s3").epoch == epoch

    async def chat() -> None:
        async with connect(f"ws://{a.address}/ChatRoom/name/s3room/ws?user=ann") as ann, \
                connect(f"ws://{b.address}/ChatRoom/name/s3room/ws?user=bob") as bob:
            await recv_json(bob, "history")
            await recv_json(ann, "join")
            await bob.send(json.dumps({"text": "over s3"}))
            for ws in (ann, bob):
                msg = await recv_json(ws, "message")
                assert (msg["user"], msg["text"], msg["seq"]) == ("bob", "over s3", 1)

    asyncio.run(chat())


# -- WebSockets across two processes --------------------------------------------------------


def test_chat_two_processes_and_handover(serve: Callable[..., Served], tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    a, b = serve(url), serve(url)

    async def scenario() -> None:
        ann = await connect(f"ws://{a.address}/ChatRoom/name/lobby/ws?user=ann")
        assert (await recv_json(ann))["type"] == "history"
        assert lease_of(url, "ChatRoom", "lobby").address == a.cluster
        bob = await connect(f"ws://{b.address}/ChatRoom/name/lobby/ws?user=bob")  # proxied
        assert (await recv_json(bob, "history"))["messages"] == []
        assert (await recv_json(ann, "join"))["user"] == "ann"
        assert (await recv_json(ann, "join"))["online"] == ["ann", "bob"]
        for sender, text in ((bob, "hi ann"), (ann, "hi bob"), (bob, "bye")):
            await sender.send(json.dumps({"text": text}))
            for ws in (ann, bob):
                assert (await recv_json(ws, "message"))["text"] == text
        assert a.probe()["sockets"] == 2 and b.probe()["sockets"] == 0
        # Auto-response: answered by the hub, in order, without a turn of the room.
        turns = a.probe()["stats"]["ChatRoom"]["turns"]
        await bob.send("ping")
        async with asyncio.timeout(30):
            assert await bob.recv() == "pong"
        assert a.probe()["stats"]["ChatRoom"]["turns"] == turns
        # Too large a message: closed with 1009, the others stay.
        big = await connect(f"ws://{b.address}/ChatRoom/name/lobby/ws?user=big",
                            max_size=None)
        await recv_json(big, "history")
        await big.send("x" * 5000)
        assert await closed_code(big) == 1009
        assert (await recv_json(ann, "leave"))["user"] == "big"
        # A hands over (graceful stop): both sockets close with 1012 …
        a.stop()
        assert await closed_code(ann) == 1012
        assert await closed_code(bob) == 1012
        # … and reconnecting reaches the new owner, with the history intact.
        bob2 = await connect(f"ws://{b.address}/ChatRoom/name/lobby/ws?user=bob")
        hist = await recv_json(bob2, "history")
        assert [m["text"] for m in hist["messages"]] == ["hi ann", "hi bob", "bye"]
        assert lease_of(url, "ChatRoom", "lobby").address == b.cluster
        await bob2.close()

    asyncio.run(scenario())


def test_hibernation_keeps_sockets_and_attachments(serve: Callable[..., Served],
                                                   tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    a = serve(url, T_IDLE="0.3")

    async def scenario() -> None:
        async with connect(f"ws://{a.address}/ChatRoom/name/den/ws?user=zoe") as zoe:
            await recv_json(zoe, "join")
            epoch = lease_of(url, "ChatRoom", "den").epoch
            for _ in range(600):  # wait for idle eviction (the socket stays open)
                if a.probe()["live"]["ChatRoom"] == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the room was never evicted")
            assert lease_of(url, "ChatRoom", "den").owner is None  # lease released
            await zoe.send("ping")  # answered without waking the room
            async with asyncio.timeout(30):
                assert await zoe.recv() == "pong"
            assert a.probe()["live"]["ChatRoom"] == 0
            await zoe.send(json.dumps({"text": "still here"}))  # re-activates the room here
            msg = await recv_json(zoe, "message")
            assert (msg["user"], msg["text"]) == ("zoe", "still here")  # attachment survived
            assert lease_of(url, "ChatRoom", "den").epoch == epoch + 1

    asyncio.run(scenario())


def test_takeover_while_hibernating_closes_1012(serve: Callable[..., Served],
                                                tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    a = serve(url, T_IDLE="0.3", T_TTL="2", T_MARGIN="0.5")
    b = serve(url)

    async def scenario() -> None:
        async with connect(f"ws://{a.address}/ChatRoom/name/loft/ws?user=kim") as kim:
            await recv_json(kim, "join")
            for _ in range(600):
                if a.probe()["live"]["ChatRoom"] == 0:
                    break
                await asyncio.sleep(0.05)
            # B takes the free room over; A's hibernated socket must not stay silently stale.
            r = httpx.get(f"{b.base}/ChatRoom/name/loft/messages", timeout=30)
            assert r.status_code == 200
            assert lease_of(url, "ChatRoom", "loft").address == b.cluster
            assert await closed_code(kim) == 1012

    asyncio.run(scenario())


# -- one process: routing, limits, errors ---------------------------------------------------


def _run(coro_fn: Callable[[duro.App], Any], tmp_path: Path, **env: str) -> None:
    async def main() -> None:
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            app = make_app()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        app.url = make_backend_url("sqlite", tmp_path)
        async with app:
            public, url = await start_public_listener(app._http, "127.0.0.1", 0)
            app.public = url.removeprefix("http://")  # type: ignore[attr-defined]
            try:
                await coro_fn(app)
            finally:
                await stop_public_listener(public)

    asyncio.run(main())


def test_routing_errors_limits_and_auth(tmp_path: Path) -> None:
    async def check(app: duro.App) -> None:
        async with httpx.AsyncClient(base_url=f"http://{app.public}", timeout=30) as c:
            assert (await c.get("/Nope/name/x/")).status_code == 404
            assert (await c.get("/Bare/name/x/")).status_code == 404  # no fetch()
            assert (await c.get("/Counter/")).status_code == 404
            assert (await c.get("/Counter/what/x/")).status_code == 404
            assert (await c.get("/Counter/id/xyz/")).status_code == 400
            assert (await c.get("/Counter/id/" + "A" * 64 + "/")).status_code == 400
            other = id_from_name("Gate", "g")  # a well-formed ID of another namespace
            assert (await c.get(f"/Counter/id/{other.hex}/")).status_code == 400
            r = await c.post("/Gate/name/g/echo?x=1&y=%2F", content=b"a" * 4096,
                             headers={"content-type": "text/plain"})
            assert r.status_code == 200
            body = r.json()
            assert body["query"] == {"x": "1", "y": "/"} and body["len"] == 4096
            assert body["method"] == "POST" and body["ctype"] == "text/plain"
            assert body["path"] == "/echo" and body["url"].endswith("/Gate/name/g/echo?x=1&y=%2F")
            # Names are percent-decoded per segment: "a/b" is one name.
            r = await c.post("/Counter/name/a%2Fb/increment")
            assert r.json() == {"n": 1}
            assert (await c.get("/Counter/name/a%2Fb")).status_code == 200
            assert await app.namespace(Bare).get_by_name("x").ping() == "pong"
            stub_n = await app._namespaces["Counter"].get_by_name("a/b").value()
            assert stub_n == 1
            assert (await c.post("/Gate/name/g/echo", content=b"a" * 4097)).status_code == 413

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b"b" * 1000

            r = await c.post("/Gate/name/g/echo", content=chunks())  # no content-length
            assert r.status_code == 413
            assert (await c.get("/Gate/name/g/echo", headers={"x-deny": "1"})).status_code == 403
            r = await c.get("/Gate/name/g/echo?token=bad")
            assert (r.status_code, r.text) == (401, "bad token")
            r = await c.get("/Gate/name/g/boom")
            assert r.status_code == 500 and "boom" not in r.text
            # The cluster endpoint is not on the public listener.
            assert (await c.post("/_duro/call", content=b"x")).status_code == 404

    _run(check, tmp_path)


def test_overload_answers_503_with_retry_after(tmp_path: Path) -> None:
    async def check(app: duro.App) -> None:
        async with httpx.AsyncClient(base_url=f"http://{app.public}", timeout=30) as c:
            first = asyncio.ensure_future(c.get("/Gate/name/busy/hold"))
            for _ in range(1000):  # until the first request holds the object
                if "busy" in _HELD:
                    break
                await asyncio.sleep(0.01)
            queued = [asyncio.ensure_future(c.get("/Gate/name/busy/echo")) for _ in range(2)]
            inst = app._namespaces["Gate"]._instances[id_from_name("Gate", "busy").hex]
            for _ in range(1000):  # until both wait in the object's queue
                if len(inst._queue) == 2:
                    break
                await asyncio.sleep(0.01)
            r = await c.get("/Gate/name/busy/echo")
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert (await c.get("/Gate/name/other/release/busy")).status_code == 200
            assert (await first).text == "released"
            assert [(await q).status_code for q in queued] == [200, 200]

    _run(check, tmp_path, T_MAXQ="2")


def test_websocket_refusals(tmp_path: Path) -> None:
    async def check(app: duro.App) -> None:
        base = f"ws://{app.public}"
        for path, status in (("/Nope/name/x/ws", 404), ("/Bare/name/x/ws", 404),
                             ("/ChatRoom/id/zz/ws", 400), ("/ChatRoom/name/x/other", 404),
                             ("/Counter/name/x/ws", 404)):
            with pytest.raises(InvalidStatus) as info:
                await connect(base + path)
            assert info.value.response.status_code == status, path
        with pytest.raises(InvalidStatus) as info:
            await connect(base + "/ChatRoom/name/x/ws", additional_headers={"x-deny": "1"})
        assert info.value.response.status_code == 403
        async with connect(base + "/ChatRoom/name/x/ws?user=al") as ws:
            assert (await recv_json(ws, "history"))["messages"] == []
            await ws.send("not json")
            assert (await recv_json(ws))["type"] in ("join", "error")
            assert (await recv_json(ws, "error"))["type"] == "error"

    _run(check, tmp_path)


# -- mounted in a host ASGI app ---------------------------------------------------------------


def test_mounted_in_starlette_example(tmp_path: Path) -> None:
    """examples/starlette_mount.py under uvicorn: root_path honoured, auth first, one public
    port (the host's), the host's logs intact."""
    url = make_backend_url("sqlite", tmp_path)
    env = {**os.environ, "DURO_BACKEND": url}
    env.pop("DURO_CLUSTER_SECRET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "starlette_mount:app", "--app-dir", str(EXAMPLES),
         "--port", "0", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        for line in proc.stderr:  # ends if the process dies
            seen.append(line)
            if "Uvicorn running on" in line:
                break
        base = seen[-1].split("running on ")[1].split()[0]
        assert base.startswith("http://127.0.0.1:"), seen
        auth = {"authorization": "Bearer demo"}
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.get("/").json()["objects"] == f"{base}/objects/"
            r = c.post("/objects/Counter/name/m/increment", headers=auth)
            assert r.status_code == 200 and r.json() == {"n": 1}
            assert c.get("/objects/Counter/name/m/", headers=auth).json() == {"n": 1}
            assert c.get("/objects/Counter/name/m/").status_code == 403
            assert c.get("/objects/Nope/name/m/").status_code == 403  # reveals nothing
            assert c.get("/objects/Nope/name/m/", headers=auth).status_code == 404
            assert c.post("/_duro/call", content=b"x").status_code == 404
            assert c.post("/objects/_duro/call", content=b"x").status_code == 404
        lease = lease_of(url, "Counter", "m")
        port = base.rsplit(":", 1)[1]
        assert lease.address.startswith("127.0.0.1:") and not lease.address.endswith(f":{port}")
    finally:
        proc.terminate()
        out, rest = proc.communicate(timeout=60)
    log = "".join(seen) + rest + out
    # The host's startup and access logs were not silenced by duro's own listener, which
    # adds no lines of its own to them.
    assert "Application startup complete" in log, log
    assert log.count("Started server process") == 1, log
    assert '"POST /objects/Counter/name/m/increment HTTP/1.1" 200' in log, log
