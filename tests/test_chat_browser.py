"""The chat example in a real browser: two headless Chromium pages, two `duro serve` processes.

Page 1 loads the room from process A (which becomes the room's owner), page 2 from process B
(whose WebSocket is proxied to A). Messages typed in either page appear in both. Chromium is
Debian's ``chromium`` package (installed here with apt-get if missing) driven over the DevTools
protocol on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from duro.testing import make_backend_url


def _load_serve_helpers() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "duro_tests_serve", Path(__file__).with_name("test_serve.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_serve = _load_serve_helpers()
Served = _serve.Served
lease_of = _serve.lease_of

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
                  "--remote-debugging-address=127.0.0.1", "--remote-allow-origins=*"]


def chromium_binary() -> str:
    """Debian's chromium, installed with apt-get when missing (needs root, as in CI)."""
    found = shutil.which("chromium")
    if found is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.fail("chromium is missing: apt-get install -y chromium chromium-driver")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"], check=True,
                       env=env, stdout=subprocess.DEVNULL)
        found = shutil.which("chromium")
    assert found is not None
    return found


class DevTools:
    """A minimal Chrome DevTools Protocol client over the browser's WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    def send(self, method: str, session: str | None = None, **params: Any) -> Any:
        n = next(self._ids)
        msg: dict[str, Any] = {"id": n, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == n:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open_page(self, url: str) -> str:
        target = self.send("Target.createTarget", url=url)["targetId"]
        return str(self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"])

    def eval(self, session: str, expr: str) -> Any:
        out = self.send("Runtime.evaluate", session, expression=expr, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expr}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_for(self, session: str, expr: str, what: str) -> Any:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            value = self.eval(session, expr)
            if value:
                return value
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             "about:blank"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=30) as r:
            ws_url = json.load(r)["webSocketDebuggerUrl"]
        with connect(ws_url, max_size=None, open_timeout=30) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[str, Any, Any]]:
    url = make_backend_url("sqlite", tmp_path)
    a = Served(url, tmp_path)
    b = Served(url, tmp_path)
    try:
        yield url, a, b
    finally:
        a.stop()
        b.stop()


SAY = ("(() => {{ const t = document.getElementById('text'); t.value = {text};"
       " document.getElementById('form').requestSubmit(); return true; }})()")
TEXTS = "[...document.querySelectorAll('#log p.msg')].map(p => p.textContent)"
OPEN = "document.getElementById('status')?.dataset.state === 'open'"


def test_two_pages_chat_through_two_processes(browser: DevTools,
                                              two_servers: tuple[str, Any, Any]) -> None:
    url, a, b = two_servers
    page1 = browser.open_page(f"{a.base}/ChatRoom/name/browser-room/?user=ann")
    browser.wait_for(page1, OPEN, "page 1 to connect")
    page2 = browser.open_page(f"{b.base}/ChatRoom/name/browser-room/?user=bob")
    browser.wait_for(page2, OPEN, "page 2 to connect")
    assert lease_of(url, "ChatRoom", "browser-room").address == a.cluster  # B proxies
    assert browser.eval(page1, "document.title") == "duro chat"

    browser.eval(page1, SAY.format(text=json.dumps("hello from ann")))
    check: Callable[[str], str] = lambda t: f"{TEXTS}.includes({json.dumps(t)})"  # noqa: E731
    browser.wait_for(page2, check("ann: hello from ann"), "ann's message on page 2")
    browser.eval(page2, SAY.format(text=json.dumps("hi ann, bob here")))
    browser.wait_for(page1, check("bob: hi ann, bob here"), "bob's message on page 1")
    browser.wait_for(page2, check("bob: hi ann, bob here"), "bob's own message on page 2")
    assert browser.eval(page1, TEXTS) == ["ann: hello from ann", "bob: hi ann, bob here"]
    assert browser.eval(page2, TEXTS) == ["ann: hello from ann", "bob: hi ann, bob here"]
    # Both went through the owner: its storage holds the history for a page opened later.
    page3 = browser.open_page(f"{b.base}/ChatRoom/name/browser-room/?user=cy")
    browser.wait_for(page3, f"{TEXTS}.length === 2", "the history on page 3")
