"""The built distribution: the folders install only as ``duro``, nothing as bare ``core``.

The editable install hides packaging mistakes (a subpackage missing from ``packages``, data not
in the sdist), so this builds the real sdist and wheel from a copy of the source tree, checks
the wheel's file list against the tree, installs it into a folder and imports every module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"core": "duro", "backends": "duro/backends", "consistency_tests": "duro/consistency",
           "bench": "duro/bench"}
IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".tox",
                                ".venv", ".hypothesis", ".mypy_cache", ".ruff_cache", ".duro",
                                ".benchmarks", "reports", "*.pyc")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(copy of the source tree, the wheel built from its sdist)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    dist = tmp / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [wheel] = dist.glob("duro-*.whl")
    assert list(dist.glob("duro-*.tar.gz")), "no sdist built"
    return src, wheel


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_every_module_is_in_the_wheel_under_duro(built: tuple[Path, Path]) -> None:
    src, wheel = built
    names = _wheel_names(wheel)
    expected = set()
    for folder, target in FOLDERS.items():
        for py in (src / folder).rglob("*.py"):
            expected.add(f"{target}/{py.relative_to(src / folder).as_posix()}")
    assert "duro/__init__.py" in expected and "duro/backends/base.py" in expected
    missing = sorted(expected - names)
    assert missing == [], f"modules missing from the wheel (add their package?): {missing}"


def test_nothing_outside_duro(built: tuple[Path, Path]) -> None:
    _, wheel = built
    tops = {n.split("/", 1)[0] for n in _wheel_names(wheel)}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"duro"}, tops
    assert len(dist_info) == 1


def test_project_tests_are_not_shipped(built: tuple[Path, Path]) -> None:
    _, wheel = built
    shipped = sorted(n for n in _wheel_names(wheel) if n.rsplit("/", 1)[-1].startswith("test_"))
    assert shipped == [], f"the project's own tests must not ship in the wheel: {shipped}"
    assert "duro/testing/__init__.py" in _wheel_names(wheel)


def test_typed_marker_metadata_and_entry_points(built: tuple[Path, Path]) -> None:
    _, wheel = built
    names = _wheel_names(wheel)
    assert "duro/py.typed" in names
    with zipfile.ZipFile(wheel) as zf:
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert "Requires-Python: >=3.11" in metadata
    for extra in ("lmdb", "s3", "server", "bench", "test", "all", "otel"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "duro = duro.cli:main" in entry_points
    assert "duro = duro.testing" in entry_points


def test_package_data_is_shipped(built: tuple[Path, Path]) -> None:
    src, wheel = built
    names = _wheel_names(wheel)
    histories = sorted((src / "consistency_tests" / "histories").glob("*.jsonl"))
    for h in histories:
        assert f"duro/consistency/histories/{h.name}" in names


def test_installed_wheel_imports_every_module(built: tuple[Path, Path], tmp_path: Path) -> None:
    """Install the wheel alone into a folder and import each module from there, not the repo."""
    _, wheel = built
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    modules = sorted(
        p.relative_to(site).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        for p in (site / "duro").rglob("*.py")
        if not p.name.startswith("test_")
    )
    code = (
        "import importlib, importlib.util, sys\n"
        f"site = {str(site)!r}\n"
        "for name in sys.argv[1:]:\n"
        "    mod = importlib.import_module(name)\n"
        "    assert mod.__file__.startswith(site), (name, mod.__file__)\n"
        "for bare in ('core', 'backends', 'consistency_tests', 'bench'):\n"
        "    assert importlib.util.find_spec(bare) is None, bare\n"
        "print('ok', len(sys.argv) - 1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["ok", str(len(modules))]
