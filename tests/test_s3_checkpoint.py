"""Large checkpoints on S3 (issue 20): a checkpoint bigger than one request can carry within the
client timeout must still land, so that GC runs and write amplification stays bounded.

The slow uplink is the backend's own link model (``backend._faults.set_link``): every request
body takes ``size / rate`` seconds and one that cannot be sent within its client's timeout fails
with a read timeout, without landing. Whether a PUT fits is decided from the sizes, the rate and
the timeout, never from how fast this machine is. Everything else is real: moto over HTTP on
127.0.0.1, real PUTs, real GC.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from duro.backends import Batch, ObjectRef, open_backend
from duro.backends._s3 import S3Backend
from duro.errors import Fenced
from duro.testing import S3_TEST_BUCKET as BUCKET

MiB = 2**20
REF = ObjectRef("Big", "b" * 64)


@pytest.fixture
def raw(duro_s3_endpoint: str) -> Iterator[Any]:
    client = boto3.client("s3", endpoint_url=duro_s3_endpoint, region_name="us-east-1")
    yield client
    client.close()


def _keys(raw: Any, prefix: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for page in raw.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [(c["Key"], int(c["Size"])) for c in page.get("Contents", [])]
    return out


def _open(endpoint: str, prefix: str, **options: object) -> S3Backend:
    opts = {"endpoint_url": endpoint, "region": "us-east-1", **options}
    b = open_backend(f"s3://{BUCKET}/{prefix}?" + "&".join(f"{k}={v}" for k, v in opts.items()))
    assert isinstance(b, S3Backend)
    return b


@dataclass
class Run:
    written: int  # bytes of values committed
    uploaded: int  # bytes of request bodies sent to S3 (PUTs, including failed attempts)
    stored: int  # bytes under the object's folder afterwards
    log_records: int
    checkpoints: int
    failed_checkpoints: int


def _big_object_run(endpoint: str, raw: Any, caplog: pytest.LogCaptureFixture, *,
                    object_mib: int, commits: int, value: int, rate: float,
                    **options: object) -> Run:
    """Grow an object to *object_mib* MiB of 1 MiB values, then overwrite *value*-byte slices
    of it until *commits* commits in all; every acknowledged value must read back."""
    prefix = "big-" + uuid.uuid4().hex[:10]
    b = _open(endpoint, prefix, timeout=0.05, retries=1, **options)
    caplog.clear()
    acked: dict[bytes, bytes] = {}
    try:
        b._faults.set_link(rate)
        lease = b.acquire(REF, owner="A", address=None, now=0.0, until=1e9)
        written = 0
        for i in range(commits):
            if i < object_mib:
                key, val = b"k%02d" % i, bytes([i]) * MiB
            else:
                key, val = b"k%02d" % (i % object_mib), bytes([i % 251]) * value
            b.commit(REF, lease.epoch, Batch(puts={key: val}))
            acked[key] = val
            written += len(val)
            if i % 4 == 3:
                b._drain()  # checkpoints run in the background; keep the count deterministic
        b._drain()
        b._faults.set_link(None)
        uploaded = b.request_counts.bytes_sent()["PutObject"]
    finally:
        b.close()
    fresh = _open(endpoint, prefix)
    try:
        stored_values = dict(fresh.scan(REF, None, None))
    finally:
        fresh.close()
    assert stored_values == acked, "an acknowledged value did not read back"
    keys = _keys(raw, f"{prefix}/o/")
    failed = [r for r in caplog.records
              if r.name == "duro.backends.s3" and "checkpoint" in r.getMessage()
              and "failed" in r.getMessage()]
    return Run(written, uploaded, sum(size for k, size in keys if "/lease.json" not in k),
               sum("/log/" in k for k, _ in keys), sum("/snap/" in k for k, _ in keys),
               len(failed))


def test_checkpoint_larger_than_the_timeout_allows_lands_and_gc_runs(
        duro_s3_endpoint: str, raw: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Default options, a 50 ms timeout and a 32 MiB/s uplink: one 3 MiB PUT needs ~94 ms.
    Before the fix every checkpoint timed out, so GC never ran and the log kept every record."""
    caplog.set_level(logging.INFO, logger="duro")
    run = _big_object_run(duro_s3_endpoint, raw, caplog, object_mib=3, commits=24,
                          value=256 * 1024, rate=32 * MiB)
    assert run.failed_checkpoints == 0, [r.getMessage() for r in caplog.records][-3:]
    assert run.checkpoints >= 1
    # GC ran: the log holds only records after the newest checkpoint, not all 24 commits
    assert run.log_records < 12, run
    assert run.stored < 3 * 3 * MiB, run


def test_a_failing_checkpoint_is_logged_and_loses_nothing(
        duro_s3_endpoint: str, raw: Any, caplog: pytest.LogCaptureFixture) -> None:
    """With the timeout scaling switched off (min_rate huge) and no parts, the 3 MiB checkpoint
    cannot fit: it is logged on ``duro.backends.s3`` every time, and every acknowledged value
    still reads back (from the log, which is then never collected)."""
    caplog.set_level(logging.INFO, logger="duro")
    run = _big_object_run(duro_s3_endpoint, raw, caplog, object_mib=3, commits=12,
                          value=256 * 1024, rate=32 * MiB, min_rate=2**60, part_bytes=2**40)
    assert run.failed_checkpoints >= 1
    assert run.checkpoints <= 1  # only the first one, of 1 MiB, fits
    assert run.log_records >= 10  # nothing after it was collected


def test_write_amplification_of_a_16_mib_object(
        duro_s3_endpoint: str, raw: Any, caplog: pytest.LogCaptureFixture,
        report_figure: Callable[[str], None]) -> None:
    """Figure: a 16 MiB object over 48 commits (16 of 1 MiB to build it, then 32 overwrites of
    1 MiB), 50 ms timeout, 128 MiB/s uplink (one 16 MiB PUT needs 125 ms).

    "before" is the old behaviour, reachable through options: one PUT per checkpoint with the
    plain timeout (``part_bytes``/``min_rate`` huge), a checkpoint after every MiB of log
    whatever the object's size (``checkpoint_ratio=0``). "after" is the defaults."""
    caplog.set_level(logging.INFO, logger="duro")
    shape = {"object_mib": 16, "commits": 48, "value": MiB, "rate": 128 * MiB}
    before = _big_object_run(duro_s3_endpoint, raw, caplog, **shape, min_rate=2**60,
                             part_bytes=2**40, checkpoint_ratio=0)
    after = _big_object_run(duro_s3_endpoint, raw, caplog, **shape)
    object_bytes = 16 * MiB
    for name, run in (("before", before), ("after", after)):
        report_figure(
            f"s3 16 MiB object, 48 commits of 1 MiB, {name}: upload amplification "
            f"{run.uploaded / run.written:.2f}x, stored {run.stored / object_bytes:.2f}x the "
            f"object, {run.log_records} log records, {run.checkpoints} checkpoint(s), "
            f"{run.failed_checkpoints} failed checkpoint attempts")
    assert before.failed_checkpoints > 0 and before.log_records > 32  # the bug, reproduced
    assert after.failed_checkpoints == 0 and after.checkpoints >= 1
    assert after.uploaded / after.written < 2.5
    assert after.stored < 2.5 * object_bytes
    assert after.log_records < before.log_records


def test_checkpoint_in_parts_is_loaded_by_a_new_owner_and_collected_later(
        duro_s3_endpoint: str, raw: Any) -> None:
    """Parts are written before their head, a new owner loads the state through them, the old
    owner is fenced, and the parts go with their checkpoint once a newer one is collected."""
    prefix = "parts-" + uuid.uuid4().hex[:10]
    opts = {"part_bytes": 64 * 1024, "checkpoint_batches": 2, "checkpoint_ratio": 0}
    a, b = _open(duro_s3_endpoint, prefix, **opts), _open(duro_s3_endpoint, prefix, **opts)
    try:
        la = a.acquire(REF, owner="A", address=None, now=0.0, until=10.0)
        acked = {}
        for i in range(4):
            key, val = b"v%d" % i, bytes([65 + i]) * (100 * 1024)
            a.commit(REF, la.epoch, Batch(puts={key: val}))
            acked[key] = val
        a._drain()
        parts_a = {k for k, _ in _keys(raw, f"{prefix}/o/") if "/part/" in k}
        assert len({k.rsplit("/", 2)[0] for k in parts_a}) >= 1 and len(parts_a) >= 4, parts_a

        lb = b.acquire(REF, owner="B", address=None, now=11.0, until=100.0)
        assert dict(b.scan(REF, None, None)) == acked  # loaded through the parts
        with pytest.raises(Fenced):
            a.commit(REF, la.epoch, Batch(puts={b"late": b"x"}))
        for i in range(4):
            key, val = b"w%d" % i, bytes([97 + i]) * (100 * 1024)
            b.commit(REF, lb.epoch, Batch(puts={key: val}))
            acked[key] = val
        b._drain()
        parts_b = {k for k, _ in _keys(raw, f"{prefix}/o/") if "/part/" in k}
        assert parts_b and not parts_a & parts_b, "the old checkpoint's parts were not collected"
        snaps = [k for k, _ in _keys(raw, f"{prefix}/o/") if "/snap/" in k]
        assert len(snaps) == 1, snaps
    finally:
        a.close()
        b.close()
    fresh = _open(duro_s3_endpoint, prefix)
    try:
        assert dict(fresh.scan(REF, None, None)) == acked
    finally:
        fresh.close()
