"""The ``duro`` commands as a new user pipes them or runs them in an 80-column terminal:
nothing cut with an ellipsis, IDs whole, ``--version``, ``--json``, defaults and
``[tool.duro]`` visible in help."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import duro

MAIN = "from duro.cli import main; main()"


def duro_cli(*args: str, cwd: Path, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "DURO_BACKEND")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-c", MAIN, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env, check=False)


class Cart(duro.DurableObject):
    async def add(self, item: str) -> None:
        self.storage.put(f"item:{item}", {"name": item, "note": "workflow " * 30})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli')}/app.db"

    async def fill() -> None:
        async with duro.App(url, listen=None) as app:
            carts = app.namespace(Cart)
            for name in ("alice", "bob"):
                await carts.get_by_name(name).add("widget")

    asyncio.run(fill())
    return url


def ids(url: str) -> list[str]:
    from duro.ids import id_from_name

    return [id_from_name("Cart", n).hex for n in ("alice", "bob")]


@pytest.mark.parametrize("columns", [None, 80, 200])
def test_inspect_namespace_prints_whole_ids_and_no_ellipsis(store: str, tmp_path: Path,
                                                            columns: int | None) -> None:
    done = duro_cli("inspect", "--backend", store, "Cart", cwd=tmp_path, columns=columns)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for hex_id in ids(store):
        assert any(hex_id in line for line in lines), done.stdout  # on one line: copyable
    assert "…" not in done.stdout
    assert "alice" in done.stdout and "bob" in done.stdout


@pytest.mark.parametrize("columns", [None, 80])
def test_inspect_object_folds_long_values(store: str, tmp_path: Path, columns: int | None) -> None:
    done = duro_cli("inspect", "--backend", store, "Cart", "alice", cwd=tmp_path,
                    columns=columns)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert ids(store)[0] in done.stdout
    assert done.stdout.count("workflow") == 30


def test_inspect_json(store: str, tmp_path: Path) -> None:
    done = duro_cli("inspect", "--backend", store, "Cart", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert sorted(o["id"] for o in data["objects"]) == sorted(ids(store))


def test_version(tmp_path: Path) -> None:
    done = duro_cli("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"duro {duro.__version__}"


def test_help_shows_defaults_and_tool_duro_and_exit_codes(tmp_path: Path) -> None:
    inspect_help = duro_cli("inspect", "--help", cwd=tmp_path, columns=200).stdout
    assert "[tool.duro] in pyproject.toml" in inspect_help
    assert "[default: 1000]" in inspect_help
    bench_help = duro_cli("bench", "--help", cwd=tmp_path, columns=200).stdout
    for default in ("[default: 1,4,16,64; --quick: 1,64]", "[default: ./.duro-bench]",
                    "[default: 0.05]"):
        assert default in bench_help, bench_help
    root_help = duro_cli("--help", cwd=tmp_path, columns=200).stdout
    assert "Exit codes of every command: 0 done; 1" in root_help


def test_errors_keep_brackets(tmp_path: Path) -> None:
    done = duro_cli("inspect", "--backend", "nosuch://[x]", cwd=tmp_path)
    assert done.returncode == 2
    assert "nosuch://[x]" in done.stderr


def test_export_and_import_show_progress_on_a_terminal(store: str, tmp_path: Path) -> None:
    """Rich draws progress only on a terminal; TTY_COMPATIBLE=1 makes stderr count as one."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "DURO_BACKEND")}
    env["TTY_COMPATIBLE"] = "1"
    dump = tmp_path / "dump.jsonl"
    for args, shown in ((["export", "--backend", store, "--output", str(dump)], "exporting"),
                        (["import", "--backend", f"sqlite:///{tmp_path}/new.db", "--input",
                          str(dump)], "importing")):
        done = subprocess.run([sys.executable, "-c", MAIN, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert f"{shown} \x1b[32m2/" in done.stderr or f"{shown} 2/" in done.stderr, done.stderr
