"""Faults that real clusters see: hosts in network namespaces, partitions, kills and pauses.

Three hosts, each a network namespace on a bridge running ``duro serve``, share PostgreSQL (or
S3 on a moto server) at the bridge's storage address; clients outside the hosts call objects
over HTTP through every host while a seeded nemesis partitions hosts from storage and from each
other (both ways and one way), kills and pauses them (:mod:`duro.consistency.cluster_mode`).
Every history goes through the linearizability checker, and a host cut from storage must not
answer anything it ran itself once its lease has run out.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

from duro.consistency.cluster_mode import (
    FAULTS,
    TAKEOVER,
    ClusterRunResult,
    describe,
    run_cluster,
)
from duro.testing.netns import HostNetwork, available
from duro.testing.pg_cluster import find_postgres_bin

REASON = available()
if REASON is None and find_postgres_bin() is None:
    REASON = "PostgreSQL's binaries are not installed"
if REASON is not None and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the cluster tests, but: {REASON}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


def _reach(net: HostNetwork, src_host: int, dst: str) -> bool:
    """Can host *src_host* open a TCP connection to *dst*:1 (refused counts as reached)?"""
    code = ("import socket,sys\n"
            "s=socket.socket();s.settimeout(1)\n"
            f"try:\n s.connect(({dst!r},1))\nexcept ConnectionRefusedError:\n sys.exit(0)\n"
            "except OSError:\n sys.exit(1)\n")
    import sys
    done = subprocess.run(net.hosts[src_host].exec(sys.executable, "-c", code), timeout=30)
    return done.returncode == 0


def test_partitions_drop_what_they_say() -> None:
    with HostNetwork(3) as net:
        a, b = net.hosts[0], net.hosts[1]
        assert _reach(net, 0, b.address) and _reach(net, 1, a.address)
        net.drop(a, b.address, outgoing=False)  # one way: a no longer hears b
        assert not _reach(net, 1, a.address)  # b's SYN never arrives
        net.heal()
        assert _reach(net, 1, a.address)
        net.isolate_from_storage(a)
        assert not _reach(net, 0, net.storage_address)
        assert _reach(net, 1, net.storage_address)
        net.heal()
        net.split([net.hosts[2]])
        assert not _reach(net, 2, a.address) and not _reach(net, 0, net.hosts[2].address)
        assert not _reach(net, 2, net.storage_address) and _reach(net, 0, b.address)


def _check(result: ClusterRunResult, figure: Callable[[str], None], label: str) -> None:
    figure(f"{label}: " + describe(result).replace("\n", "; "))
    assert result.check.verdict == "ok", result.check.anomalies[:1]
    assert set(result.injected) == set(FAULTS), result.injected
    assert result.requests > 100
    # No answer after a lost lease, measured on hosts that do answer: every cut owner said
    # it lost its lease, before another host could take its objects over.
    assert result.stale_answers == 0
    assert result.refusals > 0 and result.cuts > 0
    assert result.cuts_refused == result.cuts, describe(result)
    assert result.first_refusal is not None and result.first_refusal <= TAKEOVER


def test_cluster_on_postgres_stays_linearizable_under_partitions(
        report_figure: Callable[[str], None]) -> None:
    result = run_cluster(storage="postgres", seed=1, ops=400, duration=60)
    _check(result, report_figure, "cluster postgres")


def test_cluster_on_s3_stays_linearizable_under_partitions(
        report_figure: Callable[[str], None]) -> None:
    result = run_cluster(storage="s3", seed=2, ops=300, duration=60)
    _check(result, report_figure, "cluster s3")


def _duro(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """``duro ARGS`` (the installed console script), as *user* if given."""
    import sys
    from pathlib import Path

    cmd = [str(Path(sys.executable).with_name("duro")), *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def test_check_mode_cluster_says_what_it_needs() -> None:
    done = _duro("check", "--mode", "cluster", user="65534")  # nobody: no namespaces
    assert done.returncode == 2, done.stderr
    assert "root" in done.stderr and "network namespaces" in done.stderr
    done = _duro("check", "--mode", "cluster", "--backend", "sqlite:///x.db")
    assert done.returncode == 2 and "--backend" in done.stderr
    done = _duro("check", "--mode", "cluster", "--storage", "lmdb")
    assert done.returncode == 2 and "postgres or s3" in done.stderr


def test_check_mode_cluster_catches_an_owner_answering_after_its_lease(
        report_figure: Callable[[str], None]) -> None:
    """The measure can fail: ``duro check --mode cluster`` on the mutant that keeps answering
    from its cache once it cannot renew its lease (storage cuts only) sees it answer after
    the lease ran out, and exits 1."""
    import json

    done = _duro("check", "--mode", "cluster", "--storage", "postgres", "--seed", "3",
                 "--ops", "40", "--seconds", "6", "--faults", "storage",
                 "--mutant", "lost-lease-read", "--json")
    assert done.returncode == 1, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    report_figure(f"duro check --mode cluster --mutant lost-lease-read: {figures}")
    assert figures["faults"].get("storage", 0) > 0
    assert figures["stale_answers"] > 0, figures
    assert not figures["passed"]
