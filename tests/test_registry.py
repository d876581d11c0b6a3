"""The backend URL registry and URL parsing: lazy built-ins, third parties, clear errors."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from duro.backends import (
    Backend,
    BackendURL,
    backend_class,
    open_backend,
    register_backend,
    registry,
)
from duro.backends._memory import MemoryBackend
from duro.backends.base import FORMAT_VERSION, check_format_version
from duro.errors import BackendNotInstalled, ConfigError

# the package re-exports the read-only view under the module's name, so fetch the module itself
registry_module = importlib.import_module("duro.backends.registry")


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Put the registry back as it was after a test that registers schemes."""
    saved = dict(registry_module._registry)
    try:
        yield
    finally:
        registry_module._registry.clear()
        registry_module._registry.update(saved)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


# -- built-ins ----------------------------------------------------------------------------------


def test_builtin_schemes_are_registered_by_dotted_path() -> None:
    for scheme in ("memory", "sqlite", "postgresql", "lmdb", "s3"):
        assert scheme in registry
    assert registry["lmdb"] == "duro.backends._lmdb:LMDBBackend"
    assert registry["s3"] == "duro.backends._s3:S3Backend"
    assert registry["sqlite"] == "duro.backends._sql:SQLBackend"


def test_registry_view_is_read_only() -> None:
    with pytest.raises(TypeError):
        registry["x"] = "y"  # type: ignore[index]


def test_drivers_are_imported_only_when_their_scheme_is_used() -> None:
    result = _run("""
        import sys
        from duro.backends import open_backend
        b = open_backend("memory://")
        b.close()
        heavy = ["lmdb", "boto3", "botocore", "duro.backends._lmdb", "duro.backends._s3",
                 "duro.backends._sql"]
        print(sorted(m for m in heavy if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_scheme_with_driver_suffix_and_upper_case() -> None:
    assert backend_class("sqlite+pysqlite").__name__ == "SQLBackend"
    b = open_backend("MEMORY://")
    try:
        assert isinstance(b, MemoryBackend)
    finally:
        b.close()


# -- bad URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["nosuch://x", "file:///tmp/x", "://x", "sqllite:///typo.db"])
def test_unknown_scheme_is_a_config_error_listing_known_ones(url: str) -> None:
    with pytest.raises(ConfigError, match="unknown backend scheme") as info:
        open_backend(url)
    assert "sqlite://" in str(info.value) and "memory://" in str(info.value)
    assert not isinstance(info.value, BackendNotInstalled)


@pytest.mark.parametrize("url", ["", "duro.db", "sqlite:/x.db", "memory:", "/abs/path.db"])
def test_strings_that_are_not_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="not a backend URL"):
        open_backend(url)


@pytest.mark.parametrize("url", [None, 42, b"memory://"])
def test_non_string_urls_are_config_errors(url: object) -> None:
    with pytest.raises(ConfigError):
        open_backend(url)  # type: ignore[arg-type]


def test_malformed_url_is_a_config_error_keeping_the_cause() -> None:
    with pytest.raises(ConfigError, match="malformed backend URL") as info:
        open_backend("s3://[::1/bucket")
    assert isinstance(info.value.orig, ValueError)


@pytest.mark.parametrize("url", ["memory://?bogus=1", "memory://?sync=full&Sync=full",
                                 "memory://?sync=maybe"])
def test_unknown_or_bad_options_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        open_backend(url)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        open_backend("nosuch://")


# -- missing drivers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("scheme", "drivers", "extra"),
                         [("lmdb", ["lmdb"], "lmdb"), ("s3", ["boto3", "botocore"], "s3")])
def test_missing_driver_names_the_pip_extra(scheme: str, drivers: list[str], extra: str,
                                            tmp_path: Path) -> None:
    """A fresh interpreter where the driver cannot be imported (as if it were not installed)."""
    result = _run(f"""
        import sys
        for name in {drivers!r}:
            sys.modules[name] = None  # makes "import {drivers[0]}" fail like a missing package
        from duro.backends import open_backend
        from duro.errors import BackendNotInstalled, ConfigError
        try:
            open_backend("{scheme}:///{tmp_path}/x")
        except BackendNotInstalled as exc:
            assert isinstance(exc, ImportError) and isinstance(exc, ConfigError)
            assert exc.orig is not None
            print(exc)
        else:
            print("opened")
    """)
    assert result.returncode == 0, result.stderr
    assert f"pip install 'duro[{extra}]'" in result.stdout, result.stdout
    assert f"{scheme}://" in result.stdout


def test_registered_module_that_does_not_exist(clean_registry: None) -> None:
    register_backend("ghost", "duro_test_no_such_module_anywhere:GhostBackend")
    with pytest.raises(BackendNotInstalled, match="duro_test_no_such_module_anywhere") as info:
        open_backend("ghost://x")
    assert isinstance(info.value.orig, ImportError)


def test_registered_target_that_is_not_a_backend(clean_registry: None) -> None:
    register_backend("notabackend", "json:dumps")
    with pytest.raises(ConfigError, match="not a duro Backend subclass"):
        backend_class("notabackend")


# -- third parties ------------------------------------------------------------------------------


class _Mine(MemoryBackend):
    scheme = "mine"


def test_register_backend_clobber_rules(clean_registry: None) -> None:
    register_backend("mine", _Mine)
    assert backend_class("mine") is _Mine
    with pytest.raises(ConfigError, match="already registered"):
        register_backend("mine", MemoryBackend)
    assert backend_class("mine") is _Mine
    with pytest.raises(ConfigError, match="already registered"):
        register_backend("memory", _Mine)  # a built-in is protected the same way
    register_backend("memory", _Mine, clobber=True)
    assert backend_class("memory") is _Mine
    register_backend("mine2", "duro.backends._memory:MemoryBackend")
    assert backend_class("mine2") is MemoryBackend
    b = open_backend("mine://")
    try:
        assert isinstance(b, _Mine)
    finally:
        b.close()


def test_entry_point_backends(tmp_path: Path) -> None:
    """A third-party package declares ``[duro.backends]`` and is found by scheme."""
    (tmp_path / "thirdparty_duro_backend.py").write_text(textwrap.dedent("""
        from duro.backends._memory import MemoryBackend

        class ThirdParty(MemoryBackend):
            scheme = "thirdparty"
    """))
    dist = tmp_path / "thirdparty_duro_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-duro-backend\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[duro.backends]\nthirdparty = thirdparty_duro_backend:ThirdParty\n"
        "memory = thirdparty_duro_backend:ThirdParty\n")
    result = _run("""
        from duro.backends import open_backend, backend_class
        b = open_backend("thirdparty://")
        print(type(b).__name__)
        print(backend_class("memory").__name__)  # an entry point cannot shadow a built-in
    """, PYTHONPATH=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ThirdParty", "MemoryBackend"]


# -- URL parsing --------------------------------------------------------------------------------


def test_url_paths_follow_sqlalchemys_slash_rule() -> None:
    rel = BackendURL.parse("sqlite:///data/duro.db")
    absolute = BackendURL.parse("sqlite:////data/duro.db")
    assert (rel.scheme, rel.netloc, rel.path) == ("sqlite", "", "data/duro.db")
    assert absolute.path == "/data/duro.db"
    s3 = BackendURL.parse("s3://bucket/some/prefix?region=eu-west-1&endpoint_url=http://h:1")
    assert (s3.netloc, s3.path) == ("bucket", "some/prefix")
    assert s3.options == {"region": "eu-west-1", "endpoint_url": "http://h:1"}


def test_url_options() -> None:
    url = BackendURL.parse("lmdb:///x?map_size=1GiB&sync=normal&n=2.5&bad=xyz&neg=-1")
    assert url.sync_level() == "normal"
    assert BackendURL.parse("lmdb:///x").sync_level() == "full"
    assert url.number("map_size", 0) == 2**30
    assert url.number("n", 0) == 2.5
    assert url.number("absent", 7) == 7
    for name in ("bad", "neg"):
        with pytest.raises(ConfigError, match=name):
            url.number(name, 0)
    with pytest.raises(ConfigError, match="one of"):
        url.option("sync", "full", ["full"])
    with pytest.raises(ConfigError, match="bad, n, neg"):
        url.check_options(["map_size", "sync"])
    url.check_options(["map_size", "sync", "n", "bad", "neg"])


def test_newer_format_versions_are_refused() -> None:
    check_format_version(FORMAT_VERSION, "here")
    check_format_version(FORMAT_VERSION - 1, "here")
    with pytest.raises(ConfigError, match="upgrade duro"):
        check_format_version(FORMAT_VERSION + 1, "the store at x")


def test_backend_is_an_abc() -> None:
    with pytest.raises(TypeError):
        Backend()  # type: ignore[abstract]
