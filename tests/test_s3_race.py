"""Ownership races from :mod:`duro.consistency.races` on S3 (and SQLite for comparison).

A zombie owner that never stops writing races a new owner's takeover: on S3, the new owner's
fence races the old owner's appends and garbage collection (issue 20). Every write either side
acknowledged must survive, and the old owner must be fenced.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import duro
from duro.consistency.races import skew_race, zombie_race
from duro.testing import make_backend_url


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path, **options: int) -> str:
    endpoint = request.getfixturevalue("duro_s3_endpoint") if backend == "s3" else None
    url = make_backend_url(backend, tmp_path, endpoint)
    return url + "".join(f"&{k}={v}" for k, v in options.items())


@pytest.mark.parametrize(("checkpoint_batches", "trials"), [(1, 50), (64, 10)])
def test_free_running_zombie_loses_no_acknowledged_write_on_s3(
        request: pytest.FixtureRequest, tmp_path: Path, checkpoint_batches: int,
        trials: int) -> None:
    url = _url("s3", request, tmp_path, checkpoint_batches=checkpoint_batches)
    report = zombie_race(url, trials=trials)
    assert report.trials == trials
    assert report.failures == [], f"{len(report.failures)} failures: {report.failures[:3]}"
    # a commit of A acknowledged after B's acquire returned can only be the one in flight
    assert max(report.late_acks) <= 1, report.late_acks
    print(f"{trials} trials, 0 lost; A's acks after B's acquire: {report.late_acks}")


@pytest.mark.parametrize("backend", ["s3", "sqlite"])
def test_clock_skew_beyond_the_drift_margin_loses_no_acknowledged_write(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # on S3, checkpoint every 2 batches so that garbage collection is frequent
    options = {"checkpoint_batches": 2} if backend == "s3" else {}
    report = skew_race(_url(backend, request, tmp_path, **options), trials=10)
    assert report.trials == 10
    assert report.failures == [], f"{len(report.failures)} failures: {report.failures[:3]}"


def test_namespace_names_are_bounded_for_storage_keys(tmp_path: Path) -> None:
    from duro.namespace import MAX_NAMESPACE_BYTES

    class Keys(duro.DurableObject):
        pass

    app = duro.App(f"sqlite:///{tmp_path}/d.db", listen=None)
    app.namespace(Keys, "n" * MAX_NAMESPACE_BYTES)
    with pytest.raises(duro.ConfigError, match=f"1 to {MAX_NAMESPACE_BYTES} bytes"):
        app.namespace(Keys, "é" * (MAX_NAMESPACE_BYTES // 2 + 1))
