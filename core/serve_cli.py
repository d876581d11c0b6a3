"""``duro serve module:app``: serve a :class:`duro.App`'s objects over HTTP and WebSockets."""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from duro.errors import ConfigError

__all__ = ["load_app", "register", "serve"]


def load_app(target: str) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr`` (``attr`` defaults to ``app``).

    *attr* is a :class:`duro.App`, or a callable with no arguments returning one.
    """
    from duro.app import App

    module_name, _, attr = target.partition(":")
    attr = attr or "app"
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"no such file: {module_name}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {module_name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{module_name} has no attribute {attr!r}") from None
    if not isinstance(obj, App) and callable(obj):
        obj = obj()
    if not isinstance(obj, App):
        raise ConfigError(f"{target} is a {type(obj).__name__}, not a duro.App")
    return obj


async def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8787,
                backend: str | None = None, advertise: str | None = None,
                cluster_listen: str | None = None, ssl_certfile: str | None = None,
                ssl_keyfile: str | None = None, ready: Any = None, **limits: Any) -> None:
    """Run *app* (a not yet started :class:`duro.App`) as an HTTP server until SIGINT/SIGTERM.

    Two listeners: the public one on *host*:*port* (object routes only, TLS with
    *ssl_certfile*/*ssl_keyfile*), and the App's cluster listener on *cluster_listen*
    (default: *host* on a free port), where peers sharing the backend forward calls,
    authenticated; *advertise* is the address peers should use for it.
    """
    from duro.config import resolve_backend_url
    from duro.listener import start_public_listener, stop_public_listener
    from duro.server import configure

    if backend is not None:
        app.url = resolve_backend_url(backend)
        app._backend_obj = None
    if app._http is None:
        configure(app, **limits)
    app.listen = cluster_listen or (f"[{host}]:0" if ":" in host else f"{host}:0")
    app._advertise = advertise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        public, url = await start_public_listener(app._http, host, port,
                                                  ssl_certfile=ssl_certfile,
                                                  ssl_keyfile=ssl_keyfile)
    except BaseException:
        await app.close()
        raise
    try:
        names = ", ".join(sorted(app._namespaces)) or "(none)"
        line = (f"duro serve: {url} backend={app.backend_description} "
                f"cluster={app.address or '-'} namespaces={names}")
        print(line, flush=True)
        if ready is not None:
            ready(app)
        await stop.wait()
    finally:
        await app.close()  # WebSockets close with 1012 and turns drain first
        await stop_public_listener(public)


def _settled(app: Any) -> None:
    """Startup is over: keep what it built (modules, the App, its listeners) out of the cyclic
    garbage collector's sight. Each full collection then walks only what serving creates; it
    would otherwise re-walk some 80,000 long-lived objects many times a second under load."""
    gc.freeze()


def register(cli: typer.Typer) -> None:
    """Add ``duro serve`` to the ``duro`` command line."""

    @cli.command("serve")
    def serve_cmd(
        target: Annotated[str, typer.Argument(
            help="The duro.App to serve: module:attr or path/to/file.py:attr.")],
        host: Annotated[str, typer.Option(help="Interface of the public listener.")
                        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port of the public listener (0 picks a free "
                                          "one).")] = 8787,
        backend: Annotated[str | None, typer.Option(
            "--backend", "-b", help="Backend URL (overrides the App's).")] = None,
        cluster_listen: Annotated[str | None, typer.Option(
            help="host:port of the cluster listener, where processes sharing the backend "
                 "forward calls, authenticated (default: --host on a free port).")] = None,
        advertise: Annotated[str | None, typer.Option(
            help="HOST[:PORT] peers use to reach the cluster listener (needed when it listens "
                 "on 0.0.0.0 and no routable address is found).")] = None,
        ssl_certfile: Annotated[str | None, typer.Option(
            help="Serve the public listener over TLS with this certificate (PEM).")] = None,
        ssl_keyfile: Annotated[str | None, typer.Option(
            help="The certificate's private key (PEM).")] = None,
        max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 8 << 20,
        max_message_bytes: Annotated[int, typer.Option(
            help="Largest WebSocket message.")] = 1 << 20,
    ) -> None:
        """Serve objects over HTTP and WebSockets: /<namespace>/name/<name>/<path> and
        /<namespace>/id/<64-hex id>/<path> reach the object's fetch(request)."""
        app = load_app(target)
        runner_kw: dict[str, Any] = {}
        try:
            import uvloop

            runner_kw["loop_factory"] = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
            pass
        with asyncio.Runner(**runner_kw) as runner:
            runner.run(serve(app, host=host, port=port, backend=backend, advertise=advertise,
                             cluster_listen=cluster_listen, ssl_certfile=ssl_certfile,
                             ssl_keyfile=ssl_keyfile, max_body_bytes=max_body_bytes,
                             max_message_bytes=max_message_bytes, ready=_settled))


def main() -> None:
    """``python -m duro.serve_cli module:app [options]`` (the same as ``duro serve``)."""
    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(cli)
    try:
        cli()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
