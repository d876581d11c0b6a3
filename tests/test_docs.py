"""The docs site: ``mkdocs build --strict`` (warnings are errors) and its front page in a real
headless Chromium (a screenshot and the rendered DOM)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs/mkdocstrings are not installed (pip install -e '.[docs]'; the test extra "
           "includes them, so CI builds the docs)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(out)})
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_guide_and_api_reference_are_built(site: Path) -> None:
    for page in ("objects", "storage", "alarms", "transactions", "http", "testing", "backends",
                 "consistency", "benchmarks", "operations", "security"):
        assert (site / "guide" / page / "index.html").is_file(), page
    api = (site / "reference" / "duro" / "index.html").read_text(encoding="utf-8")
    for name in ("AlarmInfo", "StubOf", "block_concurrency_while", "wait_until", "abort",
                 "get_websockets", "now"):
        assert name in api, name
    storage = (site / "reference" / "storage" / "index.html").read_text(encoding="utf-8")
    assert "transaction" in storage and "rollback" in storage
    assert "Request" in (site / "reference" / "http" / "index.html").read_text(encoding="utf-8")
    testing = (site / "guide" / "testing" / "index.html").read_text(encoding="utf-8")
    assert "DURO_TEST_BACKENDS" in testing
    assert "CallCycle" in (site / "guide" / "objects" / "index.html").read_text(encoding="utf-8")


def test_front_page_in_chromium(site: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    page = (site / "index.html").as_uri()
    shot = tmp_path / "front.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,900", page],
                   capture_output=True, timeout=120, check=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a rendered page, not blank
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "Durable Objects for Python" in dom
    assert "md-header" in dom and "md-nav" in dom  # the material theme rendered
