"""A serialized moto S3 server on 127.0.0.1 for tests, CI and benchmarks.

moto's conditional ``PutObject`` (``If-None-Match: *``, ``If-Match``) checks and then stores
without a lock, so racing requests can both win. This server wraps moto's WSGI app in one
:class:`threading.Lock` (held while the app runs *and* while its response body is read), which
makes every request atomic, as S3's conditional writes are. An optional per-request latency,
slept *outside* the lock, imitates S3's round-trip time for benchmarks.

Usage::

    server = start_moto_server(latency=0.05)
    server.create_bucket("duro-test")
    ...  # s3://duro-test/prefix?endpoint_url={server.endpoint}
    server.stop()

or, in the foreground (for ``.ci/run`` and benchmarks)::

    python -m duro.testing.moto_server --host 127.0.0.1 --port 5000 --latency-ms 50
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

__all__ = ["MotoServer", "start_moto_server"]

_WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _SerializedApp:
    """A WSGI app that runs *app* under one lock and materializes its body under it too."""

    def __init__(self, app: _WSGIApp, latency: float) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.latency = latency
        self.requests = 0

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> list[bytes]:
        # Read the request body before taking the lock: a slow client must not stall others.
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > 0:
            body = environ["wsgi.input"].read(int(length))
            environ["wsgi.input"] = io.BytesIO(body)
        if self.latency > 0:
            time.sleep(self.latency)
        captured: list[tuple[Any, ...]] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured.append((status, headers, exc_info))
            return lambda data: None  # the legacy write() callable; moto does not use it

        with self._lock:
            self.requests += 1
            result = self._app(environ, capture)
            try:
                chunks = [bytes(c) for c in result]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        status, headers, exc_info = captured[-1]
        start_response(status, headers, exc_info)
        return chunks


class MotoServer:
    """A running serialized moto server. Use :func:`start_moto_server` to make one."""

    def __init__(self, host: str, port: int, latency: float) -> None:
        # moto is a test dependency: import it only when a server is actually wanted.
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args: object, **kwargs: object) -> None:
                pass  # one line per request would drown test output

        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        self._app = _SerializedApp(DomainDispatcherApplication(create_backend_app), latency)
        self._server = make_server(
            host, port, self._app, threaded=True, request_handler=QuietHandler
        )
        self.host: str = host
        self.port: int = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"moto-s3-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The endpoint URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def latency(self) -> float:
        """Seconds of latency added to every request (outside the lock)."""
        return self._app.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._app.latency = max(0.0, float(seconds))

    @property
    def requests(self) -> int:
        """Requests served so far."""
        return self._app.requests

    def create_bucket(self, name: str) -> None:
        """Create bucket *name* (idempotent) through the server itself."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            config=Config(s3={"addressing_style": "path"}),
        )
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        finally:
            client.close()

    def stop(self) -> None:
        """Stop serving and wait for the server thread. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_moto_server(host: str = "127.0.0.1", port: int = 0, latency: float = 0.0) -> MotoServer:
    """Start a serialized moto S3 server on *host*:*port* (0 = a free port) in a daemon thread.

    *latency* seconds are added to every request, outside the serializing lock.
    """
    return MotoServer(host, port, latency)


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground until SIGINT/SIGTERM; print the endpoint first."""
    parser = argparse.ArgumentParser(
        prog="python -m duro.testing.moto_server",
        description="Serve a serialized moto S3 server (one lock around moto) for duro tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="latency added to every request, outside the lock")
    parser.add_argument("--bucket", action="append", default=[],
                        help="create this bucket at start (repeatable)")
    args = parser.parse_args(argv)
    server = start_moto_server(args.host, args.port, args.latency_ms / 1000.0)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for bucket in args.bucket:
        server.create_bucket(bucket)
    print(server.endpoint, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
