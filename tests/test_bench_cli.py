"""``duro bench``: tiny real runs (sqlite + lmdb files under tmp_path), the report schema,
``duro bench compare`` with a plot, and the pieces underneath (histogram, op streams, raw
baselines). No timing is asserted: only shapes, arithmetic and behaviour."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import duro
from duro.bench.baselines import RawLMDB, RawSQLite
from duro.bench.cli import register
from duro.bench.compare import compare_reports
from duro.bench.hdr import Histogram
from duro.bench.report import REQUIRED_RESULT_FIELDS, load_report, validate_report
from duro.bench.workloads import WORKLOADS, OpStream, key_name, rotate

TINY = ["--clients", "1,4", "--objects", "1", "--value-size", "64", "--duration", "0.05",
        "--ops", "300"]


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root."""

    register(app)
    return app


def _run(args: list[str]) -> Any:
    result = CliRunner().invoke(_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def two_reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("bench")
    paths = []
    for name in ("a", "b"):
        path = out / f"{name}.json"
        _run(["bench", "--workload", "ycsb-a", "--workload", "write-heavy", *TINY,
              "--data-dir", str(out / "data"), "--out", str(path)])
        paths.append(path)
    return paths[0], paths[1]


def test_report_has_the_documented_shape(two_reports: tuple[Path, Path]) -> None:
    data = json.loads(two_reports[0].read_text())
    validate_report(data)
    for name in ("machine", "versions", "config", "results", "targets"):
        assert name in data
    assert data["versions"]["duro"]
    assert data["config"]["data_filesystem"] != "tmpfs"
    rows = data["results"]
    # 2 workloads x 2 embedded backends x 2 client counts, each against its raw baseline
    assert len(rows) == 8
    assert {(r["workload"], r["backend"], r["clients"]) for r in rows} == {
        (w, b, c) for w in ("ycsb-a", "write-heavy") for b in ("sqlite", "lmdb") for c in (1, 4)
    }
    for r in rows:
        assert "error" not in r, r
        for field in REQUIRED_RESULT_FIELDS:
            assert field in r
        assert r["ops"] > 0 and r["seconds"] > 0
        assert math.isclose(r["ops_per_s"], r["ops"] / r["seconds"], rel_tol=1e-3)
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["baseline"] in ("sqlite3 full", "lmdb full")
        assert math.isclose(r["ratio"], r["ops_per_s"] / r["baseline_ops_per_s"], rel_tol=1e-3)
    assert data["targets"] == []  # not asked for


def test_data_dir_is_removed_afterwards(two_reports: tuple[Path, Path]) -> None:
    data_dir = two_reports[0].parent / "data"
    assert not data_dir.exists() or not any(data_dir.iterdir())


def test_compare_prints_ratios_and_draws_a_png(two_reports: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    a, b = two_reports
    plot = tmp_path / "cmp.png"
    result = CliRunner().invoke(_cli(), ["bench", "compare", str(a), str(b), "--plot", str(plot)],
                                catch_exceptions=False, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "ycsb-a" in result.output and "write-heavy" in result.output
    assert "speedup" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = compare_reports(load_report(a), load_report(b))
    assert len(rows) == 8
    for row in rows:
        assert row.speedup is not None
        assert row.b_ops_per_s is not None and row.a_ops_per_s is not None
        assert math.isclose(row.speedup, row.b_ops_per_s / row.a_ops_per_s)


def test_compare_refuses_a_file_that_is_not_a_report(two_reports: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": []}))
    result = CliRunner().invoke(_cli(), ["bench", "compare", str(two_reports[0]), str(bad)])
    assert result.exit_code == 2
    assert "machine" in result.output


def test_unknown_workload_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["bench", "--workload", "ycsb-z", "--out",
                                         str(tmp_path / "x.json")])
    assert result.exit_code == 2
    assert "ycsb-z" in result.output
    assert not (tmp_path / "x.json").exists()


def test_target_rows_say_met_or_missed(tmp_path: Path) -> None:
    """The real ``duro`` console entry point, target runs only, very short."""
    out = tmp_path / "targets.json"
    proc = subprocess.run(
        [sys.executable, "-c", "from duro.cli import main; main()", "bench", "--quick",
         "--workload", "targets", "--duration", "0.08", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    data = json.loads(out.read_text())
    validate_report(data)
    targets = {t["id"]: t for t in data["targets"]}
    assert set(targets) == {"cached-get", "stub-call", "group-commit-sqlite-5x",
                            "group-commit-lmdb-10x", "lone-put-sqlite",
                            "lone-put-lmdb", "diskcache", "stub-floor-1", "stub-floor-64",
                            "many-objects-cold-sqlite", "many-objects-warm-sqlite",
                            "many-objects-cold-lmdb", "many-objects-warm-lmdb",
                            "resident-memory"}
    for t in targets.values():
        assert t["value"] is not None, t
        assert t["verdict"] == ("met" if t["met"] else "MISSED")
        expected = t["value"] >= t["threshold"] if t["comparison"] == ">=" \
            else t["value"] <= t["threshold"]
        assert t["met"] is expected
    rows = {(r["workload"], r["backend"], r["clients"]): r for r in data["results"]}
    lone = rows[("lone-put", "sqlite", 1)]
    assert math.isclose(targets["lone-put-sqlite"]["value"], 1 / lone["ratio"], rel_tol=1e-3)
    assert rows[("group-commit", "lmdb", 64)]["baseline"] == "lmdb full txn/write"
    assert "met" in proc.stdout or "MISSED" in proc.stdout
    assert "issue asks" not in proc.stdout and "…" not in proc.stdout
    for t in targets.values():  # each target is printed once
        assert proc.stdout.count(t["description"]) == 1, proc.stdout
    assert not (tmp_path / ".duro-bench").exists()


def _duro(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "DURO_BACKEND")}
    return subprocess.run([sys.executable, "-c", "from duro.cli import main; main()", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
                          check=False)


def test_compare_piped_is_whole_and_json(two_reports: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_reports
    piped = _duro(["bench", "compare", str(a), str(b)], tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "…" not in piped.stdout
    assert "write-heavy" in piped.stdout and "speedup" in piped.stdout
    as_json = _duro(["bench", "compare", str(a), str(b), "--json"], tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)["rows"]
    assert len(rows) == 8
    for row in rows:
        assert math.isclose(row["speedup"], row["b_ops_per_s"] / row["a_ops_per_s"])


def test_bench_on_a_given_store_prints_json_and_removes_what_it_wrote(tmp_path: Path) -> None:
    """``--backend`` names the user's own store: the run's namespaces are gone afterwards,
    and what was there before is untouched."""
    from duro.backends import open_backend

    url = f"sqlite:///{tmp_path}/app.db"

    class Keep(duro.DurableObject):
        async def put(self) -> None:
            self.storage.put("k", "v")

    async def before() -> None:
        async with duro.App(url, listen=None) as app:
            await app.namespace(Keep).get_by_name("mine").put()

    asyncio.run(before())
    done = _duro(["bench", "--backend", url, "--workload", "ycsb-a", *TINY, "--json",
                  "--out", str(tmp_path / "r.json")], tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    validate_report(report)
    assert {r["backend"] for r in report["results"]} == {"sqlite"}
    backend = open_backend(url)
    try:
        assert [n for n in backend.namespaces() if n.startswith("bench_")] == []
        assert [i.name for i in backend.list_objects("Keep")] == ["mine"]
    finally:
        backend.close()
    assert not (tmp_path / ".duro-bench").exists()


def test_histogram_percentiles_are_within_one_percent() -> None:
    rng = random.Random(7)
    samples = [int(rng.lognormvariate(11, 1.5)) + 1 for _ in range(20_000)]
    hist = Histogram()
    half = Histogram()
    for i, s in enumerate(samples):
        (hist if i % 2 else half).record(s)
    hist.merge(half)
    assert hist.count == len(samples)
    ordered = sorted(samples)
    for p in (1, 50, 90, 99, 99.9):
        exact = ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]
        assert abs(hist.percentile(p) - exact) <= 0.0101 * exact, p
    assert hist.percentile(100) == max(samples)
    assert Histogram().percentile(50) == 0.0


def test_op_streams_are_seeded_and_follow_the_mix() -> None:
    wl = WORKLOADS["ycsb-b"]
    a = OpStream(wl, objects=4, records=100, seed=3).take(5000)
    b = OpStream(wl, objects=4, records=100, seed=3).take(5000)
    assert a == b
    reads = sum(1 for kind, _, _ in a if kind == "get") / len(a)
    assert 0.93 < reads < 0.97
    assert {obj for _, obj, _ in a} == {0, 1, 2, 3}
    # zipfian: the hottest key is far more popular than under a uniform choice
    hottest = max(sum(1 for _, _, k in a if k == key) for key in {k for _, _, k in a})
    assert hottest > 5 * len(a) / 100


@pytest.mark.parametrize("kind", ["sqlite", "lmdb"])
def test_raw_baselines_do_the_same_work(kind: str, tmp_path: Path) -> None:
    store = (RawSQLite(tmp_path / "raw.db", "full") if kind == "sqlite"
             else RawLMDB(tmp_path / "raw.lmdb", "full"))
    try:
        store.pad(50, 1000)
        store.load("o1", 30, b"abc")
        store.load("o2", 5, b"zzz")
        assert store.get("o1", key_name(3)) == b"abc"
        assert store.get("o1", "nope") is None
        store.rmw("o1", key_name(3), b"default")
        assert store.get("o1", key_name(3)) == rotate(b"abc", b"default") == b"bca"
        store.rmw("o1", "fresh", b"default")
        assert store.get("o1", "fresh") == b"default"
        assert store.scan("o1", key_name(25), 10) == 5  # k25..k29, not o2's keys
        assert store.scan("o2", key_name(0), 3) == 3
        assert store.get("~pad", "000001") is None  # padding leaves nothing behind
    finally:
        store.close()
