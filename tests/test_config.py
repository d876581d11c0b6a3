"""Where the backend URL comes from: explicit > DURO_BACKEND > the nearest duro.toml or
[tool.duro] (cwd, then parents) > default; relative paths anchor at the file's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from duro.config import DEFAULT_BACKEND, describe_backend, resolve_backend, resolve_backend_url
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
    assert resolve_backend_url() == f"sqlite:///{here}/.duro/duro.db"
    assert resolve_backend().source == "default"


def test_the_full_resolution_order(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_all(here)
    monkeypatch.setenv("DURO_BACKEND", "memory://from-env")
    assert resolve_backend_url("s3://explicit/p") == "s3://explicit/p"
    assert resolve_backend_url() == "memory://from-env"
    monkeypatch.delenv("DURO_BACKEND")
    assert resolve_backend_url() == f"lmdb:///{here}/from-duro-toml"
    (here / "duro.toml").unlink()
    assert resolve_backend_url() == f"sqlite:///{here}/from-pyproject.db"
    (here / "pyproject.toml").unlink()
    assert resolve_backend_url() == f"sqlite:///{here}/.duro/duro.db"


def test_empty_values_fall_through(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_all(here)
    monkeypatch.setenv("DURO_BACKEND", "")
    assert resolve_backend_url(None) == f"lmdb:///{here}/from-duro-toml"
    assert resolve_backend_url("") == f"lmdb:///{here}/from-duro-toml"


def test_files_without_a_backend_fall_through(here: Path) -> None:
    (here / "pyproject.toml").write_text('[tool.other]\nbackend = "memory://nope"\n')
    assert resolve_backend_url() == f"sqlite:///{here}/.duro/duro.db"
    (here / "pyproject.toml").write_text('[tool.duro]\nbackend = "memory://yes"\n')
    assert resolve_backend_url() == "memory://yes"


def test_a_subfolder_finds_the_project_config(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user ran their app from a subfolder and got a second, empty store."""
    (here / "duro.toml").write_text('backend = "sqlite:///data/app.db"\n')
    sub = here / "src" / "app"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    found = resolve_backend()
    assert found.url == f"sqlite:///{here}/data/app.db"
    assert found.source == str(here / "duro.toml")
    assert describe_backend() == f"sqlite:///{here}/data/app.db (from {here / 'duro.toml'})"


def test_pyproject_without_tool_duro_is_passed_over(here: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (here / "pyproject.toml").write_text('[tool.duro]\nbackend = "lmdb:///store"\n')
    sub = here / "pkg"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[project]\nname = "pkg"\n')
    monkeypatch.chdir(sub)
    found = resolve_backend()
    assert found.url == f"lmdb:///{here}/store"
    assert found.source == f"{here / 'pyproject.toml'} [tool.duro]"


def test_nearest_file_wins_and_the_default_anchors_at_it(
        here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (here / "duro.toml").write_text('backend = "memory://outer"\n')
    inner = here / "inner"
    (inner / "deep").mkdir(parents=True)
    (inner / "duro.toml").write_text("# the project root; default backend\n")
    monkeypatch.chdir(inner / "deep")
    assert resolve_backend_url() == f"sqlite:///{inner}/.duro/duro.db"


@pytest.mark.parametrize(("name", "text", "where"), [
    ("duro.toml", 'backend = "memory://"\nbakend = "sqlite:///x.db"\n', "duro.toml"),
    ("pyproject.toml", '[tool.duro]\nbackend = "memory://"\nlease_tll = 5\n',
     "[tool.duro] in"),
])
def test_unknown_keys_are_errors_naming_key_and_file(here: Path, name: str, text: str,
                                                     where: str) -> None:
    (here / name).write_text(text)
    with pytest.raises(ConfigError, match=r"unknown key '(bakend|lease_tll)'") as info:
        resolve_backend_url()
    assert where in str(info.value) and str(here / name) in str(info.value)


def test_the_app_says_where_its_backend_came_from(here: Path) -> None:
    import duro

    (here / "duro.toml").write_text('backend = "sqlite:///data/app.db"\n')
    app = duro.App(listen=None)
    assert app.backend_description == (f"sqlite:///{here}/data/app.db "
                                       f"(from {here / 'duro.toml'})")
    app.url = "sqlite:///other.db"  # duro serve --backend
    assert app.backend_description == f"sqlite:///{here}/other.db (from argument)"


def test_cwd_argument(here: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    (other / "duro.toml").write_text('backend = "memory://other"\n')
    assert resolve_backend_url(cwd=other) == "memory://other"
    assert resolve_backend_url() == f"sqlite:///{here}/.duro/duro.db"


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


def test_cli_from_a_subfolder_uses_and_names_the_project_store(here: Path) -> None:
    import subprocess
    import sys

    (here / "duro.toml").write_text('backend = "memory://"\nbakend = "typo"\n')
    sub = here / "sub"
    sub.mkdir()
    cmd = [sys.executable, "-c", "from duro.cli import main; main()", "inspect"]
    done = subprocess.run(cmd, cwd=sub, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2
    assert f"unknown key 'bakend' in {here / 'duro.toml'}" in " ".join(done.stderr.split())
    (here / "duro.toml").write_text('backend = "sqlite:///app.db"\n')
    (here / "app.db").touch()
    done = subprocess.run(cmd, cwd=sub, capture_output=True, text=True, timeout=120,
                          check=False)
    assert f"backend: sqlite:///{here}/app.db (from {here / 'duro.toml'})" in " ".join(
        done.stderr.split()), done.stderr
    assert not (sub / ".duro").exists()
