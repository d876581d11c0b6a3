"""``duro.testing``: a pytest plugin (loaded automatically) with fixtures for duro apps.

Backends. Tests that use ``duro_backend_url`` (or ``duro_backend`` / ``duro_app_factory``) run
on **one** backend, ``sqlite`` in a temporary folder, unless asked for more:

- ``--duro-backends=memory,sqlite,lmdb,s3,postgresql`` (or ``all``) on the command line;
- else the ``DURO_TEST_BACKENDS`` environment variable (same syntax);
- else ``duro_backends = ...`` in the ``[tool.pytest.ini_options]`` of your project;
- ``@pytest.mark.duro_backends("sqlite", "lmdb")`` (no names: ``all``) on a test or module
  overrides all of these for that test.

``all`` is ``memory,sqlite,lmdb,s3``, plus ``postgresql`` when PostgreSQL's server binaries
and the ``psycopg`` driver are installed, and always under CI (env ``CI=true``). A backend
named explicitly whose driver (or server) is missing fails the test: nothing is skipped
silently.

Async tests. ``async def`` tests run through anyio's pytest plugin without any marker (unless
pytest-asyncio or an ``anyio``/``asyncio`` marker claims them), on asyncio.

Fixtures:

- ``duro_backend_url``: a fresh, empty backend URL per test (parametrized as above).
- ``duro_backend``: an open :class:`~duro.backends.Backend` on that URL, closed afterwards.
- ``duro_s3_endpoint``: a serialized moto S3 server on 127.0.0.1 (session-scoped) with a
  bucket ``duro-test`` and dummy credentials.
- ``duro_postgres``: a throwaway PostgreSQL cluster on 127.0.0.1 (session-scoped,
  :mod:`duro.testing.pg_cluster`), or the server of env ``DURO_TEST_POSTGRES_URL`` if set; each
  ``postgresql`` test URL is a fresh database on it, dropped after the test.
- ``duro_clock``: a :class:`~duro.clock.ManualClock` that tests advance by hand; objects read
  it through ``self.ctx.now()``, so ``duro_clock.advance(s)`` fires alarms they set from it.
- ``duro_app_factory``: ``make(**options) -> App``, an isolated, not yet started App on the
  test backend using ``duro_clock``; use it as ``async with make() as app``. Pass
  ``backend=`` to wrap or replace the backend, ``clock=None`` for the real clock.
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from duro.app import App
from duro.backends import Backend, open_backend
from duro.clock import ManualClock

__all__ = [
    "ALL_TEST_BACKENDS",
    "DEFAULT_TEST_BACKEND",
    "make_backend_url",
    "postgres_server",
    "test_backend_names",
]

ALL_TEST_BACKENDS: Final = "memory,sqlite,lmdb,s3"
DEFAULT_TEST_BACKEND: Final = "sqlite"
S3_TEST_BUCKET: Final = "duro-test"


def test_backend_names(raw: str | None = None) -> list[str]:
    """The backends named by *raw* (comma-separated, or ``all``); by default from
    ``DURO_TEST_BACKENDS``, else :data:`DEFAULT_TEST_BACKEND`."""
    raw = raw or os.environ.get("DURO_TEST_BACKENDS") or DEFAULT_TEST_BACKEND
    names: list[str] = []
    for n in (n.strip() for n in raw.split(",")):
        for name in _all_test_backends() if n == "all" else [n] if n else []:
            if name not in names:
                names.append(name)
    return names


test_backend_names.__test__ = False  # type: ignore[attr-defined]


def _all_test_backends() -> list[str]:
    import importlib.util

    from duro.testing.pg_cluster import find_postgres_bin

    names = ALL_TEST_BACKENDS.split(",")
    # Under CI (env CI=true) PostgreSQL is always tested: if it is missing, its cases fail
    # with the install hint instead of vanishing from the matrix.
    ci = os.environ.get("CI", "").lower() == "true"
    has_server = os.environ.get("DURO_TEST_POSTGRES_URL") or find_postgres_bin() is not None
    if ci or (has_server and importlib.util.find_spec("psycopg") is not None):
        names.append("postgresql")
    return names


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("duro")
    group.addoption(
        "--duro-backends", default=None, metavar="NAMES",
        help="backends for tests using duro_backend_url: comma-separated names of memory, "
             "sqlite, lmdb, s3, postgresql, or 'all' (default: env DURO_TEST_BACKENDS, else "
             "the duro_backends ini value, else sqlite)")
    parser.addini("duro_backends", default="",
                  help="default backends for duro_backend_url (as --duro-backends)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "duro_backends(*names): run this test over these backends ('all' or no "
                   "names: every installed backend)")


def _selected_backends(config: pytest.Config) -> str:
    opt = config.getoption("--duro-backends")
    ini = config.getini("duro_backends")
    return str(opt or os.environ.get("DURO_TEST_BACKENDS") or ini or DEFAULT_TEST_BACKEND)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Hand unmarked ``async def`` tests to anyio's plugin (pytest cannot run them itself)."""
    if not (isinstance(collector, pytest.Module | pytest.Class)
            and collector.istestfunction(obj, name)):
        return
    func = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)
    if not inspect.iscoroutinefunction(func):
        return
    config = collector.config
    if config.pluginmanager.has_plugin("asyncio") and config.getini("asyncio_mode") == "auto":
        return
    marks = {m.name for m in getattr(obj, "pytestmark", ())}
    if collector.get_closest_marker("asyncio") or collector.get_closest_marker("anyio") or (
            marks & {"anyio", "asyncio", "trio"}):
        return
    pytest.mark.anyio(obj)
    pytest.mark.usefixtures("anyio_backend")(obj)


_postgres: Any = None  # the session's PostgresCluster / ExternalPostgres, started on first use


def postgres_server() -> Any:
    """The test PostgreSQL server (started on first use, stopped at exit)."""
    global _postgres
    if _postgres is None:
        import atexit

        from duro.testing.pg_cluster import ExternalPostgres, start_postgres_cluster

        external = os.environ.get("DURO_TEST_POSTGRES_URL")
        _postgres = ExternalPostgres(external) if external else start_postgres_cluster()
        atexit.register(_postgres.stop)
    return _postgres


def make_backend_url(name: str, directory: Path, s3_endpoint: str | None = None) -> str:
    """A fresh, empty backend URL of kind *name* whose files live under *directory*."""
    if name == "memory":
        return "memory://"
    if name == "sqlite":
        return f"sqlite:///{directory.absolute()}/duro.db"
    if name == "lmdb":
        return f"lmdb:///{directory.absolute()}/duro.lmdb"
    if name == "s3":
        if s3_endpoint is None:
            raise ValueError("the s3 test backend needs a running moto server endpoint")
        return (f"s3://{S3_TEST_BUCKET}/{uuid.uuid4().hex[:12]}"
                f"?endpoint_url={s3_endpoint}&region=us-east-1")
    if name == "postgresql":  # a fresh database on the session's server
        return str(postgres_server().new_database())
    raise ValueError(f"unknown test backend {name!r} (known: {ALL_TEST_BACKENDS},postgresql)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "duro_backend_url" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("duro_backends")
        if marker is not None:
            raw = ",".join(marker.args) or "all"
        else:
            raw = _selected_backends(metafunc.config)
        names = test_backend_names(raw)
        metafunc.parametrize("duro_backend_name", names, ids=names, scope="function")


@pytest.fixture(scope="session")
def duro_s3_endpoint() -> Iterator[str]:
    """A serialized moto S3 server on 127.0.0.1 with the test bucket; yields its endpoint."""
    from duro.testing.moto_server import start_moto_server

    server = start_moto_server(host="127.0.0.1", port=0)
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        server.create_bucket(S3_TEST_BUCKET)
        yield server.endpoint
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def duro_postgres() -> Iterator[Any]:
    """The test PostgreSQL server: ``new_database() -> url``, ``drop_database(url)``."""
    server = postgres_server()
    try:
        yield server
    finally:
        global _postgres
        server.stop()
        _postgres = None


@pytest.fixture
def duro_backend_url(
    request: pytest.FixtureRequest, duro_backend_name: str, tmp_path: Path
) -> Iterator[str]:
    """A fresh, empty backend URL (one per selected backend; see the module docs)."""
    if duro_backend_name == "postgresql":
        server = request.getfixturevalue("duro_postgres")
        url = server.new_database()
        yield url
        server.drop_database(url)
        return
    endpoint = request.getfixturevalue("duro_s3_endpoint") if duro_backend_name == "s3" else None
    yield make_backend_url(duro_backend_name, tmp_path, endpoint)


@pytest.fixture
def duro_backend(duro_backend_url: str) -> Iterator[Backend]:
    """An open backend on ``duro_backend_url``."""
    backend = open_backend(duro_backend_url)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def duro_clock() -> ManualClock:
    """A manual clock; call ``advance(seconds)`` to move time."""
    return ManualClock()


@pytest.fixture
def duro_app_factory(duro_backend_url: str, duro_clock: ManualClock) -> Callable[..., App]:
    """``make(**options)``: an App on the test backend with the manual clock, not started."""

    def make(**options: Any) -> App:
        options.setdefault("backend", duro_backend_url)
        options.setdefault("clock", duro_clock)
        options.setdefault("listen", None)
        return App(**options)

    return make
