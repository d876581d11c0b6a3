"""The security model: an authenticated cluster channel apart from the public HTTP surface.

Real parts only: ``duro serve`` subprocesses and ``duro.testing.node`` processes on a shared
SQLite file, real sockets on 127.0.0.1, and crafted requests from httpx / raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import msgpack
import pytest

import duro
import duro.websockets
from duro.backends import ObjectRef, open_backend
from duro.calls import encode_args, unpack
from duro.cluster_auth import ReplayGuard, Signer, derive_key
from duro.codec import decode
from duro.fetch import Request, Response
from duro.ids import id_from_name
from duro.listener import start_public_listener, stop_public_listener
from duro.server import configure
from duro.testing import make_backend_url
from duro.testing.node import Node
from duro.transport import CALL_PATH, advertised_address

THIS = Path(__file__).resolve()


# -- the app the served processes run ---------------------------------------------------------


class Cart(duro.DurableObject):
    """A cart whose HTTP routes require a token; it has private and destructive members."""

    async def add(self, item: str) -> int:
        items = [*await self.storage.get("items", []), item]
        self.storage.put("items", items)
        return len(items)

    async def count(self) -> int:
        return len(await self.storage.get("items", []))

    async def admin_clear(self) -> None:
        self.storage.delete_all()

    async def _wipe(self) -> None:
        self.storage.delete_all()

    async def on_activate(self) -> None:
        pass

    async def alarm(self, info: duro.AlarmInfo) -> None:
        self.storage.delete_all()

    async def websocket_message(self, ws: duro.websockets.WebSocket, message: str | bytes) -> None:
        try:
            item = json.loads(message)["item"]
            if not isinstance(item, str):
                raise TypeError(item)
        except (ValueError, KeyError, TypeError):
            ws.send("bad")  # nothing stored
            return
        ws.send(str(await self.add(item)))

    async def fetch(self, request: Request) -> Response:
        if request.websocket is not None and request.path == "/ws":
            self.ctx.accept_websocket(request.websocket)
            return Response(status=101)
        if request.method == "POST" and request.path == "/add":
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("item"), str):
                return Response.text("want {\"item\": str}", 422)
            return Response.json({"n": await self.add(body["item"])})
        if request.method == "GET" and request.path == "/":
            return Response.json({"n": await self.count()})
        return Response.text("no such route", 404)


def _auth(conn: Any, namespace: str, oid: duro.ObjectId) -> bool:
    return conn.headers.get("x-token") == "ok"


def make_app() -> duro.App:
    """The served App: a Cart namespace behind a token check."""
    app = duro.App()
    app.namespace(Cart)
    configure(app, auth=_auth, max_body_bytes=4096, max_message_bytes=4096, header_timeout=0.5)
    return app


# -- helpers ----------------------------------------------------------------------------------


class Served:
    """One ``duro serve`` process on *url* (extra CLI arguments in *args*)."""

    def __init__(self, url: str, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = tmp / f"serve-{uuid.uuid4().hex[:6]}.log"
        full = {k: v for k, v in os.environ.items() if k != "DURO_CLUSTER_SECRET"}
        full.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duro.serve_cli", f"{THIS}:make_app", "--port", "0",
             "--backend", url, *args],
            stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, env=full, cwd=tmp)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("duro serve: http"), self.log.read_text()
        self.base = line.split()[2]
        self.cluster = line.split("cluster=")[1].split()[0]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.log.read_text()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Served]]:
    procs: list[Served] = []
    yield procs
    for p in procs:
        p.stop()


def call_body(method: str, name: str = "c1", *args: Any) -> bytes:
    body: bytes = msgpack.packb({
        "ns": "Cart", "id": id_from_name("Cart", name).hex, "name": name, "method": method,
        "payload": encode_args(method, args, {}), "chain": [], "hops": 0})
    return body


def stored_items(url: str, name: str = "c1") -> Any:
    backend = open_backend(url)
    try:
        raw = backend.get_many(ObjectRef("Cart", id_from_name("Cart", name).hex), [b"items"])
        return decode(raw[b"items"]) if b"items" in raw else None
    finally:
        backend.close()


def member_signer(url: str) -> Signer:
    """A signer holding the backend's cluster key: what any process that opens it can do."""
    backend = open_backend(url)
    try:
        return Signer(derive_key(backend.cluster_key(b"unused: the key exists already")))
    finally:
        backend.close()


# -- the cluster channel ----------------------------------------------------------------------


def test_crafted_cluster_calls_never_reach_the_object(served: list[Served],
                                                      tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    s = Served(url, tmp_path)
    served.append(s)
    tok = {"x-token": "ok"}
    for item in ("apple", "pear"):
        r = httpx.post(f"{s.base}/Cart/name/c1/add", json={"item": item}, headers=tok, timeout=30)
        assert r.status_code == 200, r.text
    assert s.cluster != s.base.removeprefix("http://")  # two listeners
    call = f"http://{s.cluster}{CALL_PATH}"
    statuses: dict[str, int | str] = {}
    with httpx.Client(timeout=60) as c:
        # No credentials at all.
        for method in ("_wipe", "__delete__", "alarm", "on_activate", "admin_clear", "count"):
            statuses[f"bare {method}"] = c.post(call, content=call_body(method)).status_code
        try:
            statuses["bare 64 MiB"] = c.post(call, content=b"\0" * (64 << 20)).status_code
        except httpx.TransportError as exc:  # refused before the body was read: closed
            statuses["bare 64 MiB"] = type(exc).__name__
        # A key that is not the cluster's.
        wrong = Signer(derive_key(b"not the cluster key at all"))
        body = call_body("admin_clear")
        statuses["wrong key"] = c.post(call, content=body,
                                       headers=wrong.headers("POST", CALL_PATH, body)).status_code
        # Signed with the real key (a member), then replayed, tampered with, or stale.
        signer = member_signer(url)
        body = call_body("count")
        headers = signer.headers("POST", CALL_PATH, body)
        first = c.post(call, content=body, headers=headers)
        assert first.status_code == 200 and unpack(first.content) == 2  # a member may call
        statuses["replayed"] = c.post(call, content=body, headers=headers).status_code
        headers = signer.headers("POST", CALL_PATH, body)
        statuses["tampered"] = c.post(call, content=call_body("admin_clear"),
                                      headers=headers).status_code
        with mock.patch("duro.cluster_auth.time.time", return_value=time.time() - 120):
            old = signer.headers("POST", CALL_PATH, call_body("admin_clear"))
        statuses["stale"] = c.post(call, content=call_body("admin_clear"), headers=old).status_code
        # A member may run only what a stub may call, plus the runtime's own events.
        for method in ("_wipe", "alarm", "on_activate", "__ws_message__", "__init__"):
            body = call_body(method)
            statuses[f"member {method}"] = c.post(
                call, content=body, headers=signer.headers("POST", CALL_PATH, body)).status_code
        big = b"\0" * (64 << 20)
        try:
            statuses["member 64 MiB"] = c.post(
                call, content=big, headers=signer.headers("POST", CALL_PATH, big)).status_code
        except httpx.TransportError as exc:
            statuses["member 64 MiB"] = type(exc).__name__
        # The public listener has no cluster endpoint.
        statuses["public /_duro/call"] = c.post(f"{s.base}{CALL_PATH}",
                                                content=call_body("admin_clear")).status_code
    assert all(v != 200 for v in statuses.values()), statuses
    assert {k: v for k, v in statuses.items() if k.startswith("member ")
            and "64" not in k} == {f"member {m}": 403 for m in
                                   ("_wipe", "alarm", "on_activate", "__ws_message__",
                                    "__init__")}
    assert statuses["member 64 MiB"] in (413, "WriteError", "RemoteProtocolError",
                                         "ReadError"), statuses
    for key in ("bare count", "bare __delete__", "wrong key", "replayed", "tampered", "stale"):
        assert statuses[key] == 401, statuses
    # The object's state is unchanged, read through the public surface and in the backend.
    r = httpx.get(f"{s.base}/Cart/name/c1/", headers=tok, timeout=30)
    assert r.json() == {"n": 2}
    assert stored_items(url) == ["apple", "pear"]
    log = s.stop()
    assert "refused a cluster POST /_duro/call from 127.0.0.1:" in log, log
    assert "replayed request" in log and "bad signature" in log and "replay window" in log


def test_two_processes_forward_with_zero_configuration(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURO_CLUSTER_SECRET", raising=False)
    url = make_backend_url("sqlite", tmp_path)
    a, b = Node(url), Node(url)
    try:
        assert a.call("z", "increment") == 1
        assert b.call("z", "increment") == 2  # forwarded to a, signed with the stored key
        assert b.stats()["forwarded"] >= 1
        assert a.call("z", "read") == 2
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("backend", ["sqlite", "lmdb", "s3", "memory"])
def test_processes_racing_to_create_the_key_agree(backend: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    endpoint = request.getfixturevalue("duro_s3_endpoint") if backend == "s3" else None
    url = make_backend_url(backend, tmp_path, endpoint)
    if backend == "memory":  # one process: Apps sharing a named store share its key
        url = f"memory://key-{uuid.uuid4().hex}"
        keys = set()
        for _ in range(3):
            b = open_backend(url)
            keys.add(b.cluster_key(os.urandom(32)))
            b.close()
        assert len(keys) == 1
        return
    script = ("import os, sys\nfrom duro.backends import open_backend\n"
              "b = open_backend(sys.argv[1])\nprint(b.cluster_key(os.urandom(32)).hex())\n"
              "b.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    keys = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(keys) == 1 and len(keys.pop()) == 64
    again = open_backend(url)
    try:  # later processes read the same key; a new proposal changes nothing
        assert len(again.cluster_key(os.urandom(32))) == 32
        assert again.cluster_key(b"x" * 32) == again.cluster_key(b"y" * 32)
    finally:
        again.close()


def test_wrong_key_fails_clearly_on_both_sides(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    url = make_backend_url("sqlite", tmp_path)

    async def scenario() -> None:
        async with duro.App(url, cluster_secret="a" * 32) as owner, \
                duro.App(url, cluster_secret="b" * 32) as other:
            await owner.namespace(Cart).get_by_name("k").add("x")
            with pytest.raises(duro.ConfigError) as info:
                await other.namespace(Cart).get_by_name("k").add("y")
            msg = str(info.value)
            assert "refused this process's forwarded call" in msg
            assert "bad signature" in msg and "DURO_CLUSTER_SECRET" in msg
            assert "HTTP 403" not in msg and "503" not in msg
            assert await owner.namespace(Cart).get_by_name("k").count() == 1

    with caplog.at_level(logging.WARNING, logger="duro.transport"):
        asyncio.run(scenario())
    refused = [r for r in caplog.records if r.name == "duro.transport"
               and "refused a cluster POST /_duro/call from 127.0.0.1:" in r.getMessage()]
    assert refused and "bad signature" in refused[0].getMessage()


def test_replay_guard_accepts_reordered_nonces_once() -> None:
    key = derive_key(b"k" * 32)
    signer, guard = Signer(key), ReplayGuard(key)
    signed = [signer.headers("POST", "/p", b"b%d" % i) for i in range(5)]
    for i in (3, 0, 4, 1, 2):  # out of order, as over parallel connections
        assert guard.verify("POST", "/p", signed[i], b"b%d" % i) is None
    for i in range(5):
        assert guard.verify("POST", "/p", signed[i], b"b%d" % i) == \
            "replayed request (nonce already used)"
    assert guard.verify("POST", "/q", signer.headers("POST", "/p"), b"") is not None


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", "short", "x" * 15])
def test_empty_or_short_secret_is_a_config_error(secret: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(duro.ConfigError, match="at least 16 characters"):
        duro.App("memory://", cluster_secret=secret)
    monkeypatch.setenv("DURO_CLUSTER_SECRET", secret)
    with pytest.raises(duro.ConfigError, match="DURO_CLUSTER_SECRET"):
        duro.App("memory://")


def test_an_unshareable_app_opens_no_port() -> None:
    async def scenario() -> None:
        async with duro.App("memory://") as app:
            assert app.address is None and app._transport is None
            assert await app.namespace(Cart).get_by_name("m").add("x") == 1

    asyncio.run(scenario())


def test_unspecified_addresses_are_never_advertised(tmp_path: Path) -> None:
    with pytest.raises(duro.ConfigError, match="not an address peers can reach"):
        advertised_address("127.0.0.1", 5, "0.0.0.0:7")
    with pytest.raises(duro.ConfigError):
        advertised_address("0.0.0.0", 5, "[::]")
    assert advertised_address("0.0.0.0", 5, "10.1.2.3") == "10.1.2.3:5"
    assert advertised_address("0.0.0.0", 5, "db.example:9") == "db.example:9"
    assert advertised_address("::1", 5, None) == "[::1]:5"
    try:
        found = advertised_address("0.0.0.0", 5, None)
    except duro.ConfigError as exc:  # a host without a routable interface must say so
        assert "--advertise" in str(exc)
    else:
        assert not found.startswith(("0.0.0.0", "[::]")) and found.endswith(":5")

    async def scenario() -> None:
        url = make_backend_url("sqlite", tmp_path)
        async with duro.App(url, listen="0.0.0.0:0", advertise="127.0.0.1") as owner, \
                duro.App(url) as other:
            assert owner.address is not None and owner.address.startswith("127.0.0.1:")
            await owner.namespace(Cart).get_by_name("adv").add("x")
            assert await other.namespace(Cart).get_by_name("adv").count() == 1
            assert other.stats()["Cart"].forwarded == 1

    asyncio.run(scenario())


# -- the public edge --------------------------------------------------------------------------


def _serve_in_process(tmp_path: Path, check: Any) -> str:
    url = make_backend_url("sqlite", tmp_path)

    async def main() -> None:
        app = make_app()
        app.url = url
        async with app:
            public, base = await start_public_listener(app._http, "127.0.0.1", 0)
            try:
                await check(app, base)
            finally:
                await stop_public_listener(public)

    asyncio.run(main())
    return url


def test_bad_input_on_the_public_edge_gets_4xx_and_stores_nothing(tmp_path: Path) -> None:
    async def check(app: duro.App, base: str) -> None:
        tok = {"x-token": "ok"}
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            cases = {
                "malformed JSON": await c.post("/Cart/name/b/add", content=b"{not json",
                                               headers={**tok, "content-type":
                                                        "application/json"}),
                "not UTF-8": await c.post("/Cart/name/b/add", content=b"\xff\xfe",
                                          headers=tok),
                "wrong content type": await c.post("/Cart/name/b/add", content=b"item=x",
                                                   headers={**tok, "content-type":
                                                            "application/x-www-form-urlencoded"}),
                "wrong JSON shape": await c.post("/Cart/name/b/add", json=[1], headers=tok),
                "oversized body": await c.post("/Cart/name/b/add", content=b"{}" * 4096,
                                               headers=tok),
                "malformed ID": await c.get("/Cart/id/xyz/", headers=tok),
                "foreign ID": await c.get(f"/Cart/id/{id_from_name('Other', 'b').hex}/",
                                          headers=tok),
                "unknown namespace": await c.get("/Nope/name/b/", headers=tok),
                "unknown method": await c.delete("/Cart/name/b/add", headers=tok),
                "unknown route": await c.get("/Cart/name/b/nothing/here", headers=tok),
                "cluster path": await c.post(CALL_PATH, content=call_body("admin_clear")),
            }
            got = {k: r.status_code for k, r in cases.items()}
            assert got == {"malformed JSON": 400, "not UTF-8": 400, "wrong content type": 415,
                           "wrong JSON shape": 422, "oversized body": 413,
                           "malformed ID": 400, "foreign ID": 400, "unknown namespace": 404,
                           "unknown method": 404, "unknown route": 404,
                           "cluster path": 404}, got
            # Without the token, no answer says which namespaces exist.
            for path in ("/Nope/name/b/", "/Cart/name/b/", "/_duro/name/call/"):
                assert (await c.get(path)).status_code == 403, path
        assert all(o.keys == 0 for o in await app.namespace(Cart).list_objects())

    url = _serve_in_process(tmp_path, check)
    assert stored_items(url, "b") is None


def test_slow_and_oversized_headers_are_cut_off(tmp_path: Path) -> None:
    async def check(app: duro.App, base: str) -> None:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        # Slow-loris: one header byte every 50 ms; the server (header_timeout=0.5) hangs up.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /Cart/name/s/ HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(200):  # at most 10 s of trickle
            try:
                writer.write(b"X")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                data = await asyncio.wait_for(reader.read(1), 0.05)
            except TimeoutError:
                continue
            closed = data == b"" or data.startswith(b"H")
            break
        writer.close()
        assert closed, "the server kept a connection whose headers never completed"
        # The same on a kept-alive connection, after a first request was answered (sent a
        # while after connecting: the head deadline then moves past the first one armed).
        reader, writer = await asyncio.open_connection(host, int(port))
        await asyncio.sleep(0.15)
        writer.write(b"GET /Cart/name/s/ HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line[15:]) for line in head.split(b"\r\n")
                      if line[:15].lower() == b"content-length:")
        await reader.readexactly(length)
        writer.write(b"GET /Cart/name/s/ HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(200):  # at most 10 s of trickle
            try:
                writer.write(b"X")
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                data = await asyncio.wait_for(reader.read(1), 0.05)
            except TimeoutError:
                continue
            closed = data == b"" or data.startswith(b"H")
            break
        writer.close()
        assert closed, "the server kept a kept-alive connection whose next head never completed"
        # A head that never ends: refused once it passes the limit, not buffered on and on.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /Cart/name/s/ HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        answer: bytes | None = None
        for _ in range(64):  # up to 4 MiB, 64 KiB at a time
            try:
                writer.write(b"a" * 65536)
                await writer.drain()
            except ConnectionError:
                answer = b"(reset)"
                break
            try:
                answer = await asyncio.wait_for(reader.read(100), 0.05)
            except TimeoutError:
                continue
            break
        writer.close()
        assert answer is not None, "4 MiB of request head were taken without an answer"
        assert answer.startswith(b"HTTP/1.1 431") or answer == b"(reset)", answer
        # Oversized headers: refused with a 4xx, not served.
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            try:
                r = await c.get("/Cart/name/s/", headers={"x-token": "ok", "x-pad": "a" * 70000})
                assert 400 <= r.status_code < 500
            except httpx.RemoteProtocolError:
                pass  # the server hung up on the oversized head: also a refusal
            assert (await c.get("/Cart/name/s/", headers={"x-token": "ok"})).json() == {"n": 0}

    _serve_in_process(tmp_path, check)


def test_websocket_flood_and_bad_messages_are_contained(tmp_path: Path) -> None:
    """A client sending far more than the 64-message inbox: the server reads it at the object's
    pace (back-pressure), stays responsive, loses nothing and stores nothing for bad input."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    flood = 600

    async def check(app: duro.App, base: str) -> None:
        ws_url = base.replace("http://", "ws://") + "/Cart/name/f/ws"
        async with connect(ws_url, additional_headers={"x-token": "ok"}) as ws, \
                httpx.AsyncClient(base_url=base, timeout=30) as c:
            async def send_all() -> None:
                for i in range(flood):
                    await ws.send("not json" if i % 10 == 0 else json.dumps({"item": str(i)}))

            sending = asyncio.ensure_future(send_all())
            # While the flood is queued or back-pressured, other requests are answered.
            r = await c.post("/Cart/name/other/add", json={"item": "x"},
                             headers={"x-token": "ok"})
            assert r.json() == {"n": 1}
            replies = []
            async with asyncio.timeout(120):
                for _ in range(flood):
                    replies.append(await ws.recv())
                await sending
            good = [r for r in replies if r != "bad"]
            assert replies.count("bad") == flood // 10
            assert good == [str(n) for n in range(1, len(good) + 1)]  # in order, none lost
            await ws.send("x" * 5000)  # beyond max_message_bytes: closed, nothing stored
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(30):
                    extra = await ws.recv()
                    raise AssertionError(f"got {extra!r} after an oversized message")
            assert ws.close_code == 1009
            r = await c.get("/Cart/name/f/", headers={"x-token": "ok"})
            assert r.json() == {"n": flood - flood // 10}

    _serve_in_process(tmp_path, check)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def test_serve_over_tls(served: list[Served], tmp_path: Path) -> None:
    certfile, keyfile = _self_signed(tmp_path)
    url = make_backend_url("sqlite", tmp_path)
    s = Served(url, tmp_path, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile))
    served.append(s)
    assert s.base.startswith("https://127.0.0.1:")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(certfile)), timeout=30) as c:
        r = c.post(f"{s.base}/Cart/name/t/add", json={"item": "x"}, headers={"x-token": "ok"})
        assert r.json() == {"n": 1}
    with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken there
        httpx.get(s.base.replace("https://", "http://") + "/Cart/name/t/", timeout=30)


def test_serve_refuses_a_missing_certificate(tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "duro.serve_cli", f"{THIS}:make_app", "--port", "0",
         "--backend", url, "--ssl-certfile", str(tmp_path / "nope.pem")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "TLS certificate" in proc.stderr, proc.stderr

