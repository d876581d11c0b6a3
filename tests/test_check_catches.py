"""``duro check --backend URL``, with no other flags, catches every broken backend; healthy
backends pass the same run.

The broken backends (``tests/broken_backends``) are third-party plugins written from the public
``Backend`` ABC, registered through the real ``duro.backends`` entry-point group (a
``*.dist-info`` on ``PYTHONPATH``), and checked by the real ``duro`` CLI in a subprocess.
Stage 1 (the contract stage) is deterministic, so each defect is caught on every run, by the
check named here; stage 2 is skipped once stage 1 found a violation (the run says so).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from duro.testing import make_backend_url, test_backend_names

sys.path.insert(0, str(Path(__file__).parent))

from broken_backends.defects import DEFECTS
from broken_backends.plugin_env import plugin_env
from broken_backends.wrapper import SqliteWrapped

CAUGHT_BY = {
    "broken-reverse": "scan_bounds_reverse_and_limit",
    "broken-end-inclusive": "scan_bounds_reverse_and_limit",
    "broken-start-after": "scan_bounds_reverse_and_limit",
    "broken-limit": "scan_bounds_reverse_and_limit",
    "broken-prefix": "list_shapes",
    "broken-utf16": "utf8_byte_order_and_long_keys",
    "broken-nul": "utf8_byte_order_and_long_keys",
    "broken-get-many": "get_many_of_many_keys",
    "broken-truncate": "values_of_every_size",
    "broken-empty-value": "values_of_every_size",
    "broken-raw-error": "get_many_of_many_keys",
    "broken-similar-ids": "ids_sharing_long_prefixes_stay_isolated",
    "broken-delete-all": "delete_all_removes_every_key",
    "broken-alarm-puts": "alarm_set_unchanged_and_clear",
    "broken-due-index": "due_alarms_earliest_first_and_only_due",
    "broken-epoch-commit": "stale_owner_commit_is_fenced_and_lands_nothing",
    "broken-renew": "stale_owner_cannot_renew_or_release",
    "broken-takeover": "acquire_bumps_epoch_strictly",
    "broken-delete-object": "delete_object_removes_state_alarm_and_metadata",
    "broken-list-after": "list_objects_paginates_by_id",
    "broken-in-memory": "close_and_reopen_keep_everything",
    "broken-two-commits": "batch_is_atomic_for_thread_readers",
}
"""Which stage-1 check must report each defect (others may report it too)."""

_VIOLATION = re.compile(r"^\s*violation \[(\w+)\] (\w+):", re.MULTILINE)


def duro_check(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start ``duro check ARGS`` through the console entry point, in a subprocess."""
    return subprocess.Popen(
        [sys.executable, "-c", "from duro.cli import main; main()", "check", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, tuple[int, str, str, float]]:
    """The default run on every broken backend, four at a time: scheme -> exit, out, err, s."""
    env = plugin_env(tmp_path_factory.mktemp("plugins"))
    stores = tmp_path_factory.mktemp("stores")

    def run(scheme: str) -> tuple[int, str, str, float]:
        cls, _ = DEFECTS[scheme]
        url = f"{scheme}:///{stores.absolute()}/{scheme}.db" if issubclass(cls, SqliteWrapped) \
            else f"{scheme}://"
        t0 = time.monotonic()
        code, out, err = _finish(duro_check(env, "--backend", url))
        return code, out, err, time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(sorted(DEFECTS), pool.map(run, sorted(DEFECTS)), strict=True))


@pytest.fixture(scope="module")
def healthy_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, tuple[int, str, str, float]]]:
    """The default run on every test backend, all at once (they mostly wait on I/O)."""
    names = test_backend_names()
    endpoint = request.getfixturevalue("duro_s3_endpoint") if "s3" in names else None
    postgres = request.getfixturevalue("duro_postgres") if "postgresql" in names else None
    urls = {name: make_backend_url(name, tmp_path_factory.mktemp(name), endpoint)
            for name in names}
    env = plugin_env(tmp_path_factory.mktemp("plugins"))  # after the s3 credentials are set
    t0 = time.monotonic()
    procs = {name: duro_check(env, "--backend", url) for name, url in urls.items()}
    results = {}
    try:
        for name, proc in procs.items():
            code, out, err = _finish(proc)
            results[name] = (code, out, err, time.monotonic() - t0)
        yield results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if postgres is not None:
            postgres.drop_database(urls["postgresql"])


def test_every_defect_class_is_covered() -> None:
    assert len(DEFECTS) >= 15
    assert set(CAUGHT_BY) == set(DEFECTS)


@pytest.mark.parametrize("scheme", sorted(DEFECTS))
def test_default_run_catches_broken_backend(
        scheme: str, broken_runs: dict[str, tuple[int, str, str, float]]) -> None:
    code, out, err, _ = broken_runs[scheme]
    defect = DEFECTS[scheme][1]
    assert code == 1, f"{defect}: exit {code}\n{out}\n{err[-3000:]}"
    assert "stage 1 (contract): violation" in out, out
    caught = {name for _, name in _VIOLATION.findall(out)}
    assert CAUGHT_BY[scheme] in caught, f"{defect}: caught by {sorted(caught)}\n{out}"
    assert "stage 2 (linearizability): skipped" in out, out
    assert "Traceback" not in err, err


@pytest.mark.parametrize("name", test_backend_names())
def test_healthy_backend_passes_default_run(
        name: str, healthy_runs: dict[str, tuple[int, str, str, float]]) -> None:
    code, out, err, _ = healthy_runs[name]
    assert code == 0, f"exit {code}\n{out}\n{err[-3000:]}"
    assert "stage 1 (contract): ok" in out, out
    assert re.search(r"^verdict\s+ok", out, re.MULTILINE), out
    assert "stage 2 covered:" in out, out
