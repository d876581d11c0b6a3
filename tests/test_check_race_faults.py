"""``duro check --faults``: the ``skew`` and ``gc-race`` fault kinds (issue 20).

* A broken backend that only clock skew exposes (``broken-skew-trust``: a fenced commit lands
  when the newer lease ends far past the committer's clock) passes stage 1 and the
  ``kill,pause,errors`` faults, and the default run (which includes ``skew``) reports it.
* A fault kind that does not apply to a backend says so in the report.
* On S3, both race kinds run through ``duro check``'s runner against the moto server, and
  ``gc-race`` alone catches ``broken-s3-gc`` (the S3 backend before issue 20's GC fix).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from duro.consistency.runner import DEFAULT_FAULTS, run_check
from duro.testing import make_backend_url

sys.path.insert(0, str(Path(__file__).parent))

from broken_backends.plugin_env import plugin_env


def _duro_check(env: dict[str, str] | None, *args: str) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from duro.cli import main; main()", "check", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_race_kinds_are_in_the_default_faults() -> None:
    assert {"skew", "gc-race"} <= DEFAULT_FAULTS


def test_only_the_skew_fault_catches_a_backend_that_trusts_its_own_clock(
        tmp_path: Path) -> None:
    env = plugin_env(tmp_path / "plugins")
    url = f"broken-skew-trust:///{tmp_path.absolute()}/skew.db"

    code, out, err = _duro_check(env, "--backend", url)
    assert code == 1, f"exit {code}\n{out}\n{err[-3000:]}"
    assert "stage 1 (contract): ok" in out, out
    assert "skew FAILED" in out, out
    assert "skew probe failed" in out, out
    assert "Traceback" not in err, err

    url2 = f"broken-skew-trust:///{tmp_path.absolute()}/skew2.db"
    env["DURO_CLUSTER_SECRET"] = "skew-test-" + "x" * 32  # a plugin keeps no cluster key
    code, out, err = _duro_check(env, "--backend", url2, "--quick",
                                 "--faults", "kill,pause,errors")
    assert code == 0, f"the old faults already catch it?\nexit {code}\n{out}\n{err[-3000:]}"
    assert "skew" not in out.split("probes", 1)[1].split("\n", 1)[0], out


def test_a_race_fault_that_does_not_apply_says_so(tmp_path: Path) -> None:
    code, out, err = _duro_check(None, "--backend", "memory://", "--stage", "linearizability",
                                 "--faults", "skew,gc-race", "--histories", "1", "--ops", "20")
    assert code == 0, f"exit {code}\n{out}\n{err[-3000:]}"
    flat = " ".join(out.split())
    assert "skew skipped: memory:// is not shared" in flat, out
    assert "gc-race skipped: memory:// is not shared" in flat, out


def test_gc_race_on_sqlite_is_reported_as_a_plain_zombie_takeover(tmp_path: Path) -> None:
    summary = run_check(f"sqlite:///{tmp_path.absolute()}/z.db", faults="gc-race",
                        histories=1, ops=20, depth="quick", progress=False)
    assert summary.verdict == "ok", summary.explanation
    assert summary.probes["gc-race"].startswith("ok (zombie takeover only"), summary.probes
    assert summary.faults["gc-race"] >= 1


def test_skew_and_gc_race_faults_run_on_s3(duro_s3_endpoint: str, tmp_path: Path) -> None:
    url = make_backend_url("s3", tmp_path, duro_s3_endpoint) + "&checkpoint_batches=2"
    summary = run_check(url, faults="skew,gc-race", histories=1, ops=20, depth="quick",
                        progress=False)
    assert summary.verdict == "ok", summary.explanation
    assert summary.probes["gc-race"] == "ok", summary.probes  # with GC: the real race
    assert summary.probes["skew"] == "ok", summary.probes
    assert summary.faults["gc-race"] >= 1 and summary.faults["skew"] >= 1


@pytest.mark.slow
def test_only_the_gc_race_fault_catches_s3_with_unfenced_gc(
        duro_s3_endpoint: str, tmp_path: Path) -> None:
    """``broken-s3-gc``: the S3 backend before issue 20's fix (unfenced GC, 412-then-404 taken
    as a free slot). ``gc-race`` reports lost acknowledged writes; the other faults do not."""
    env = plugin_env(tmp_path / "plugins")  # after the fixture set the S3 credentials
    base = f"broken-s3-gc://duro-test/{{}}?endpoint_url={duro_s3_endpoint}&region=us-east-1"

    code, out, err = _duro_check(env, "--backend", base.format("gc1"), "--stage",
                                 "linearizability", "--thorough", "--faults", "gc-race",
                                 "--histories", "1", "--ops", "20")
    assert code == 1, f"exit {code}\n{out}\n{err[-3000:]}"
    flat = " ".join(out.split())
    assert "gc-race FAILED" in flat and "gc-race probe failed" in flat, out
    assert "Traceback" not in err, err

    env["DURO_CLUSTER_SECRET"] = "gc-test-" + "x" * 32  # a plugin keeps no cluster key
    code, out, err = _duro_check(env, "--backend", base.format("gc2"), "--quick",
                                 "--faults", "kill,pause,errors,skew", "--histories", "4")
    assert code == 0, f"the other faults already catch it?\nexit {code}\n{out}\n{err[-3000:]}"
    assert "skew ok" in " ".join(out.split()), out
