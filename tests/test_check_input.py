"""Bad input to ``duro check`` gets a clear message and exit 2: never a traceback, never exit 1.

Each case runs the real ``duro`` entry point in a subprocess (plugins load through entry
points). Also: without ``--backend`` the check uses a scratch store and leaves the configured
one untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from broken_backends.plugin_env import BAD_PLUGINS, plugin_env

HISTORIES = Path(__file__).parent.parent / "consistency_tests" / "histories"


def duro_check(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
               ) -> subprocess.CompletedProcess[str]:
    """``duro check ARGS`` through the console entry point."""
    return subprocess.run(
        [sys.executable, "-c", "from duro.cli import main; main()", "check", *args],
        capture_output=True, text=True, env=env or {**os.environ, "COLUMNS": "250"},
        cwd=cwd, timeout=300)


def assert_usage_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, a one-line ``error:`` message holding *needles*, no traceback."""
    text = res.stdout + res.stderr
    assert res.returncode == 2, text
    assert "Traceback" not in text, text
    assert "error" in text.lower(), text
    for needle in needles:
        assert needle in " ".join(text.split()), text


def _deep(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("content", ["", "\n", "\n  \n\t\n"], ids=["empty", "newline", "blank"])
def test_history_without_events(tmp_path: Path, content: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(content)
    assert_usage_error(duro_check("--history", str(path)), "holds no events")


def test_history_with_deeply_nested_value(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    line = {"process": 0, "type": "invoke", "f": "put", "object": "o1", "key": "x", "time": 0}
    text = json.dumps(line)[:-1] + f', "value": {_deep(100_000)}}}\n'
    path.write_text(text)
    assert_usage_error(duro_check("--history", str(path)), "line 1", "nested too deeply")


@pytest.mark.parametrize("scheme", sorted(BAD_PLUGINS))
def test_unusable_plugin_is_named(scheme: str, tmp_path: Path) -> None:
    env = plugin_env(tmp_path)
    res = duro_check("--backend", f"{scheme}://", env=env)
    assert_usage_error(res, f"backend plugin '{scheme}'", BAD_PLUGINS[scheme])


def test_abstract_plugin_lists_missing_methods(tmp_path: Path) -> None:
    res = duro_check("--backend", "bad-abstract://", env=plugin_env(tmp_path))
    assert_usage_error(res, "does not implement", "commit", "scan")


def test_empty_backend_url() -> None:
    assert_usage_error(duro_check("--backend", ""), "--backend '' is empty")


@pytest.mark.parametrize("option", ["--report", "--history-out"])
def test_unwritable_output_is_refused_before_the_run(tmp_path: Path, option: str) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "out.json"
    res = duro_check("--backend", "memory://", option, str(missing_dir))
    assert_usage_error(res, option, "does not exist")
    assert "stage 1" not in res.stdout  # refused before anything ran
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = duro_check("--backend", "memory://", option, str(blocker / "out.json"))
    assert_usage_error(res, option)


def test_unwritable_report_for_a_history(tmp_path: Path) -> None:
    res = duro_check("--history", str(HISTORIES / "bad-double-cas.jsonl"), "--report",
                     str(tmp_path / "missing" / "r.html"))
    assert_usage_error(res, "--report", "does not exist")


def test_without_backend_a_scratch_store_is_checked(tmp_path: Path) -> None:
    """The configured store is never opened or written; the scratch store is removed."""
    (tmp_path / "duro.toml").write_text('backend = "sqlite:///app/duro.db"\n')
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "COLUMNS": "250", "TMPDIR": str(tmp)}
    env.pop("DURO_BACKEND", None)
    res = duro_check("--stage", "contract", "--quick", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "scratch sqlite store" in res.stdout
    # A relative path in duro.toml is relative to that file's folder, and shown absolute.
    assert f"{tmp_path}/app/duro.db is not touched" in " ".join(res.stdout.split())
    assert not (tmp_path / "app").exists()
    assert list(tmp.iterdir()) == []


def test_quick_and_thorough_exclude_each_other() -> None:
    assert_usage_error(duro_check("--backend", "memory://", "--quick", "--thorough"),
                       "exclude each other")


def test_json_output(tmp_path: Path) -> None:
    res = duro_check("--backend", "memory://", "--stage", "contract", "--quick", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 0 and doc["stage1"]["verdict"] == "ok"
    assert doc["stage2"] == {"skipped": "--stage contract"}
    names = {c["name"] for c in doc["stage1"]["checks"]}
    assert "list_shapes" in names and doc["stage1"]["backend_calls"]["scan"] > 0


def test_report_of_a_contract_violation_is_written(tmp_path: Path) -> None:
    """Stage 2 is skipped after a violation; the report still holds what stage 1 found."""
    report = tmp_path / "r.json"
    res = duro_check("--backend", "broken-reverse://", "--report", str(report),
                     env=plugin_env(tmp_path / "plugins"))
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(report.read_text())
    bad = [c["name"] for c in doc["stage1"]["checks"] if c["status"] == "violation"]
    assert "scan_bounds_reverse_and_limit" in bad
