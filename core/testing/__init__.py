"""``duro.testing``: a pytest plugin (loaded automatically) with fixtures for duro apps.

Fixtures:

- ``duro_backend_url``: a fresh, empty backend URL per test, parametrized over the backends
  named in ``DURO_TEST_BACKENDS`` (comma-separated; default ``memory,sqlite,lmdb,s3``, plus
  ``postgresql`` when PostgreSQL's server binaries are installed, and always under CI, env
  ``CI=true``). A named backend whose driver (or server) is missing fails the test: nothing is
  skipped silently.
- ``duro_backend``: an open :class:`~duro.backends.Backend` on that URL, closed afterwards.
- ``duro_s3_endpoint``: a serialized moto S3 server on 127.0.0.1 (session-scoped) with a
  bucket ``duro-test`` and dummy credentials.
- ``duro_postgres``: a throwaway PostgreSQL cluster on 127.0.0.1 (session-scoped,
  :mod:`duro.testing.pg_cluster`), or the server of env ``DURO_TEST_POSTGRES_URL`` if set; each
  ``postgresql`` test URL is a fresh database on it, dropped after the test.
- ``duro_clock``: a :class:`~duro.clock.ManualClock` that tests advance by hand.
- ``duro_app_factory``: ``make(**options) -> App``, an isolated, not yet started App on the
  test backend using ``duro_clock``; use it as ``async with make() as app``. Pass
  ``backend=`` to wrap or replace the backend, ``clock=None`` for the real clock.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from duro.app import App
from duro.backends import Backend, open_backend
from duro.clock import ManualClock

__all__ = ["DEFAULT_TEST_BACKENDS", "make_backend_url", "postgres_server", "test_backend_names"]

DEFAULT_TEST_BACKENDS: Final = "memory,sqlite,lmdb,s3"
S3_TEST_BUCKET: Final = "duro-test"


def test_backend_names() -> list[str]:
    """The backends to test, from ``DURO_TEST_BACKENDS``."""
    raw = os.environ.get("DURO_TEST_BACKENDS") or _default_test_backends()
    return [n.strip() for n in raw.split(",") if n.strip()]


test_backend_names.__test__ = False  # type: ignore[attr-defined]


def _default_test_backends() -> str:
    from duro.testing.pg_cluster import find_postgres_bin

    # Under CI (env CI=true) PostgreSQL is always tested: if it is missing, its cases fail
    # with the install hint instead of vanishing from the matrix.
    if (os.environ.get("CI", "").lower() == "true" or os.environ.get("DURO_TEST_POSTGRES_URL")
            or find_postgres_bin() is not None):
        return DEFAULT_TEST_BACKENDS + ",postgresql"
    return DEFAULT_TEST_BACKENDS


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
    raise ValueError(f"unknown test backend {name!r} in DURO_TEST_BACKENDS")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "duro_backend_url" in metafunc.fixturenames:
        names = test_backend_names()
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
    """A fresh, empty backend URL (parametrized over ``DURO_TEST_BACKENDS``)."""
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
