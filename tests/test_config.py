"""Where the backend URL comes from: explicit > DURO_BACKEND > ./duro.toml > pyproject > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from duro.config import DEFAULT_BACKEND, resolve_backend_url
from duro.errors import ConfigError


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory and no DURO_BACKEND."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DURO_BACKEND", raising=False)
    return tmp_path


def _write_all(here: Path) -> None:
    (here / "duro.toml").write_text('backend = "lmdb:///from-duro-toml"\n')
    (here / "pyproject.toml").write_text(
        '[project]\nname = "app"\n\n[tool.duro]\nbackend = "sqlite:///from-pyproject.db"\n')


def test_default_is_embedded_sqlite(here: Path) -> None:
    assert DEFAULT_BACKEND == "sqlite:///.duro/duro.db"
    assert resolve_backend_url() == DEFAULT_BACKEND


def test_the_full_resolution_order(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_all(here)
    monkeypatch.setenv("DURO_BACKEND", "memory://from-env")
    assert resolve_backend_url("s3://explicit/p") == "s3://explicit/p"
    assert resolve_backend_url() == "memory://from-env"
    monkeypatch.delenv("DURO_BACKEND")
    assert resolve_backend_url() == "lmdb:///from-duro-toml"
    (here / "duro.toml").unlink()
    assert resolve_backend_url() == "sqlite:///from-pyproject.db"
    (here / "pyproject.toml").unlink()
    assert resolve_backend_url() == DEFAULT_BACKEND


def test_empty_values_fall_through(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_all(here)
    monkeypatch.setenv("DURO_BACKEND", "")
    assert resolve_backend_url(None) == "lmdb:///from-duro-toml"
    assert resolve_backend_url("") == "lmdb:///from-duro-toml"


def test_files_without_a_backend_fall_through(here: Path) -> None:
    (here / "duro.toml").write_text('# nothing here\n[other]\nbackend = "memory://nope"\n')
    (here / "pyproject.toml").write_text('[tool.other]\nbackend = "memory://nope"\n')
    assert resolve_backend_url() == DEFAULT_BACKEND
    (here / "pyproject.toml").write_text('[tool.duro]\nbackend = "memory://yes"\n')
    assert resolve_backend_url() == "memory://yes"


def test_only_the_current_directory_counts(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_all(here)
    sub = here / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert resolve_backend_url() == DEFAULT_BACKEND


def test_cwd_argument(here: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    (other / "duro.toml").write_text('backend = "memory://other"\n')
    assert resolve_backend_url(cwd=other) == "memory://other"
    assert resolve_backend_url() == DEFAULT_BACKEND


@pytest.mark.parametrize("name", ["duro.toml", "pyproject.toml"])
def test_malformed_toml_is_a_config_error(here: Path, name: str) -> None:
    (here / name).write_text("backend = [unterminated\n")
    with pytest.raises(ConfigError, match=name) as info:
        resolve_backend_url()
    assert info.value.orig is not None


def test_non_string_backend_is_a_config_error(here: Path) -> None:
    (here / "duro.toml").write_text("backend = 42\n")
    with pytest.raises(ConfigError, match="must be a URL string"):
        resolve_backend_url()
    (here / "duro.toml").unlink()
    (here / "pyproject.toml").write_text("[tool.duro]\nbackend = {url = 'x'}\n")
    with pytest.raises(ConfigError, match="must be a URL string"):
        resolve_backend_url()


def test_a_bad_file_is_not_read_when_a_higher_source_wins(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (here / "duro.toml").write_text("backend = [unterminated\n")
    monkeypatch.setenv("DURO_BACKEND", "memory://env")
    assert resolve_backend_url() == "memory://env"
    assert resolve_backend_url("memory://explicit") == "memory://explicit"
