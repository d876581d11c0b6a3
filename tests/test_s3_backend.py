"""The s3:// backend against a real (serialized) moto server over HTTP on 127.0.0.1.

Fencing, replay, retries and unknown outcomes are driven as explicit interleavings: faults are
planned deterministically through the backend's botocore hook (``backend._faults``), and
"another writer acts in this window" is a ``hook`` fault, never a thread race or a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import msgpack
import pytest

from duro.backends import open_backend
from duro.backends._s3 import S3Backend
from duro.backends.base import Batch, LeaseHeld, ObjectRef
from duro.errors import BackendError, BackendUnavailable, ConfigError, Fenced

BUCKET = "duro-test"
NS = "Counter"


def ref(n: int = 1, ns: str = NS) -> ObjectRef:
    return ObjectRef(ns, f"{n:064x}")


@pytest.fixture
def prefix() -> str:
    return "t-" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_url(duro_s3_endpoint: str, prefix: str) -> Any:
    def make(**options: object) -> str:
        opts = {"endpoint_url": duro_s3_endpoint, "region": "us-east-1", **options}
        query = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"s3://{BUCKET}/{prefix}?{query}"
    return make


@pytest.fixture
def opened() -> Iterator[Any]:
    backends: list[S3Backend] = []

    def open_(url: str) -> S3Backend:
        b = open_backend(url)
        assert isinstance(b, S3Backend)
        backends.append(b)
        return b

    yield open_
    for b in backends:
        b.close()


@pytest.fixture
def raw(duro_s3_endpoint: str) -> Any:
    client = boto3.client("s3", endpoint_url=duro_s3_endpoint, region_name="us-east-1")
    yield client
    client.close()


def keys_under(raw: Any, prefix: str) -> list[str]:
    resp = raw.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [c["Key"] for c in resp.get("Contents", [])]


def log_records(raw: Any, prefix: str) -> dict[int, dict[str, Any]]:
    out = {}
    for key in keys_under(raw, prefix):
        if "/log/" in key:
            body = raw.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            out[int(key.rsplit("/", 1)[1])] = msgpack.unpackb(body)
    return out


def put(k: str, v: str) -> Batch:
    return Batch(puts={k.encode(): v.encode()})


def state(b: S3Backend, r: ObjectRef) -> dict[bytes, bytes]:
    return dict(b.scan(r, None, None))


def delta(b: S3Backend, before: Any) -> dict[str, int]:
    return b.request_counts.summary(b.request_counts.snapshot() - before)


# -- fencing and replay --------------------------------------------------------------------------


def test_zombie_owner_is_fenced_and_replay_is_correct(make_url: Any, opened: Any, raw: Any,
                                                     prefix: str) -> None:
    a, b = opened(make_url()), opened(make_url())
    r = ref()
    la = a.acquire(r, owner="A", address="a:1", now=100.0, until=110.0)
    a.commit(r, la.epoch, put("x", "1"))
    with pytest.raises(LeaseHeld):
        b.acquire(r, owner="B", address="b:1", now=105.0, until=130.0)
    lb = b.acquire(r, owner="B", address="b:1", now=111.0, until=130.0)  # A's lease ran out
    assert lb.epoch == la.epoch + 1
    assert state(b, r) == {b"x": b"1"}
    # A is paused past its lease and does not know: its next append hits B's fence.
    with pytest.raises(Fenced, match="epoch 2"):
        a.commit(r, la.epoch, put("x", "zombie"))
    with pytest.raises(Fenced):
        a.renew(r, la.epoch, 200.0)
    b.commit(r, lb.epoch, put("y", "2"))
    kinds = [(rec["kind"], rec["epoch"]) for _, rec in sorted(log_records(raw, prefix).items())]
    assert kinds == [("fence", 1), ("batch", 1), ("fence", 2), ("batch", 2)]
    # A fresh process replays the log: no zombie write, both acknowledged batches.
    c = opened(make_url())
    assert state(c, r) == {b"x": b"1", b"y": b"2"}
    # A's cached view catches up once it is no longer the owner.
    assert state(a, r) == {b"x": b"1", b"y": b"2"}


def test_lower_epoch_batch_squeezed_in_before_the_fence_is_replayed(
        make_url: Any, opened: Any, raw: Any, prefix: str) -> None:
    a, b = opened(make_url()), opened(make_url())
    r = ref()
    la = a.acquire(r, owner="A", address=None, now=100.0, until=110.0)
    a.commit(r, la.epoch, put("n", "1"))
    # B bumps the epoch and loads the log; right before B's fence PUT, A (not yet fenced)
    # lands one more acknowledged batch in exactly the slot B is about to take.
    b._faults.plan("hook", op="PutObject", key="/log/",
                   hook=lambda: a.commit(r, la.epoch, put("n", "2")))
    lb = b.acquire(r, owner="B", address=None, now=111.0, until=130.0)
    assert b._faults.pending == 0
    assert state(b, r) == {b"n": b"2"}  # A's acknowledged batch was replayed, not lost
    kinds = [(rec["kind"], rec["epoch"]) for _, rec in sorted(log_records(raw, prefix).items())]
    # B lost slot 3 to A, then fenced the next window of two slots at once (see _fence)
    assert kinds == [("fence", 1), ("batch", 1), ("batch", 1), ("fence", 2), ("fence", 2)]
    with pytest.raises(Fenced):
        a.commit(r, la.epoch, put("n", "3"))
    b.commit(r, lb.epoch, put("n", "4"))
    assert state(opened(make_url()), r) == {b"n": b"4"}


def test_racing_acquires_have_exactly_one_winner(make_url: Any, opened: Any) -> None:
    backends = [opened(make_url()) for _ in range(6)]
    r = ref()
    barrier = threading.Barrier(len(backends))
    results: list[object] = []

    def run(i: int, b: S3Backend) -> None:
        barrier.wait()
        try:
            results.append(b.acquire(r, owner=f"P{i}", address=None, now=100.0, until=200.0))
        except LeaseHeld as exc:
            results.append(exc)

    threads = [threading.Thread(target=run, args=(i, b)) for i, b in enumerate(backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [x for x in results if not isinstance(x, LeaseHeld)]
    assert len(winners) == 1, results
    lease = backends[0].read_lease(r)
    assert lease == winners[0]


# -- retries and unknown outcomes ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["409", "500", "503", "timeout_before"])
def test_transient_failures_of_the_log_put_are_retried(make_url: Any, opened: Any, raw: Any,
                                                       prefix: str, kind: str) -> None:
    b = opened(make_url())
    r = ref()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    b._faults.plan(kind, op="PutObject", key="/log/", count=2)
    b.commit(r, lease.epoch, put("k", "v"))
    assert [f[0] for f in b._faults.injected] == [kind, kind]
    assert state(opened(make_url()), r) == {b"k": b"v"}
    assert [rec["kind"] for rec in log_records(raw, prefix).values()] == ["fence", "batch"]


def test_timeout_after_the_put_landed_is_recognized_by_write_id(
        make_url: Any, opened: Any, raw: Any, prefix: str) -> None:
    b = opened(make_url())
    r = ref()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    b._faults.plan("timeout_after", op="PutObject", key="/log/")
    before = b.request_counts.snapshot()
    b.commit(r, lease.epoch, put("k", "v"))
    # the PUT landed, the client saw a timeout, read the slot back: our write id = success
    assert delta(b, before) == {"put": 1, "get": 1, "list": 0, "delete": 0, "other": 0}
    b.commit(r, lease.epoch, put("k2", "v2"))
    records = log_records(raw, prefix)
    assert [rec["kind"] for _, rec in sorted(records.items())] == ["fence", "batch", "batch"]
    assert state(opened(make_url()), r) == {b"k": b"v", b"k2": b"v2"}


def test_unknown_outcome_raises_unavailable_and_the_log_decides(
        make_url: Any, opened: Any) -> None:
    b = opened(make_url(retries=1))
    r = ref()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    # The PUT lands but every answer is lost, and reading the slot back fails too.
    b._faults.plan("timeout_after", op="PutObject", key="/log/")
    b._faults.plan("timeout_before", op="GetObject", count=10)
    b._faults.plan("timeout_before", op="PutObject", key="/log/", count=10)
    with pytest.raises(BackendUnavailable, match="unknown"):
        b.commit(r, lease.epoch, put("k", "maybe"))
    b._faults.clear()
    # The runtime resets and re-acquires: the log says the write landed, so it is there.
    lease2 = b.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    assert lease2.epoch == lease.epoch + 1
    assert state(b, r) == {b"k": b"maybe"}


def test_unknown_outcome_that_did_not_land_leaves_nothing(make_url: Any, opened: Any) -> None:
    b = opened(make_url(retries=1))
    r = ref()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    b._faults.plan("500", op="PutObject", key="/log/", count=2)
    with pytest.raises(BackendUnavailable):
        b.commit(r, lease.epoch, put("k", "lost"))
    assert state(opened(make_url()), r) == {}
    b.commit(r, lease.epoch, put("k", "later"))  # the same epoch may go on after re-reading
    assert state(opened(make_url()), r) == {b"k": b"later"}


def test_slow_requests_still_succeed(make_url: Any, opened: Any) -> None:
    b = opened(make_url())
    r = ref()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    b._faults.plan("slow", op="PutObject", delay=0.05, count=2)
    b.commit(r, lease.epoch, put("k", "v"))
    assert state(b, r) == {b"k": b"v"}


# -- checkpoints and garbage collection ----------------------------------------------------------


def test_checkpoints_collect_batches_keep_fences_and_replay(
        make_url: Any, opened: Any, raw: Any, prefix: str) -> None:
    url = make_url(checkpoint_batches=3)
    a = opened(url)
    r = ref()
    expected: dict[bytes, bytes] = {}
    la = a.acquire(r, owner="A", address=None, now=100.0, until=110.0)
    for i in range(5):
        a.commit(r, la.epoch, Batch(puts={b"k%d" % i: b"a%d" % i}, deletes={b"k%d" % (i - 2)}))
        a._drain()  # let each background checkpoint finish, for a deterministic layout
        expected[b"k%d" % i] = b"a%d" % i
        expected.pop(b"k%d" % (i - 2), None)
    b = opened(url)
    lb = b.acquire(r, owner="B", address=None, now=111.0, until=130.0)
    assert state(b, r) == expected
    b.commit(r, lb.epoch, Batch(delete_all=True, puts={b"only": b"1"}))
    for i in range(3):
        b.commit(r, lb.epoch, put(f"b{i}", "x"))
        b._drain()
    a.close()
    b.close()  # waits for background checkpoints
    records = log_records(raw, prefix)
    fences = sorted(s for s, rec in records.items() if rec["kind"] == "fence")
    assert fences == [1, 7]  # fence records are never collected
    snaps = [k for k in keys_under(raw, prefix) if "/snap/" in k]
    assert len(snaps) == 1 and snaps[0].endswith(f"{11:020d}")
    # only the newest collected slot survives below the checkpoint (it marks the log's end)
    assert sorted(records) == [1, 7, 11]
    expected = {b"only": b"1", b"b0": b"x", b"b1": b"x", b"b2": b"x"}
    c = opened(url)
    before = c.request_counts.snapshot()
    assert state(c, r) == expected
    assert delta(c, before) == {"put": 0, "get": 1, "list": 2, "delete": 0, "other": 0}
    lc = c.acquire(r, owner="C", address=None, now=131.0, until=140.0)
    c.commit(r, lc.epoch, put("c", "1"))
    assert state(opened(url), r) == {**expected, b"c": b"1"}


def test_reader_racing_a_checkpoint_reloads(make_url: Any, opened: Any) -> None:
    url = make_url(checkpoint_batches=2)
    a, reader = opened(url), opened(url)
    r = ref()
    la = a.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    a.commit(r, la.epoch, put("k0", "0"))
    assert state(reader, r) == {b"k0": b"0"}  # the reader caches the state as of slot 2
    for i in range(1, 6):
        a.commit(r, la.epoch, put(f"k{i}", str(i)))
        a._drain()  # let checkpoints and GC finish
    assert state(reader, r) == {f"k{i}".encode(): str(i).encode() for i in range(6)}


# -- alarms ----------------------------------------------------------------------------------------


def alarm_hints(raw: Any, prefix: str) -> list[str]:
    return keys_under(raw, f"{prefix}/alarms/")


def test_alarm_index_entry_lifecycle(make_url: Any, opened: Any, raw: Any, prefix: str) -> None:
    b = opened(make_url(retries=0))
    r = ref()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=10_000.0)
    # the hint goes in before the commit: if the commit fails, the hint stays (harmless)
    b._faults.plan("500", op="PutObject", key="/log/", count=1)
    b._faults.plan("500", op="GetObject", key="/log/", count=1)
    with pytest.raises(BackendUnavailable):
        b.commit(r, lease.epoch, Batch(alarm=500.0))
    assert len(alarm_hints(raw, prefix)) == 1
    assert b.due_alarms(1000.0) == []  # a hint is verified against the object's state
    b.commit(r, lease.epoch, Batch(alarm=500.0))
    hints = alarm_hints(raw, prefix)
    assert len(hints) == 2 and all("/197001010008/" in h for h in hints)
    assert b.due_alarms(499.0) == []
    assert b.due_alarms(1000.0) == [(r, 500.0)]
    b.commit(r, lease.epoch, Batch(alarm=7200.0))  # moved: the old entry goes after the commit
    hints2 = alarm_hints(raw, prefix)
    assert len(hints2) == 2 and sum("/197001010200/" in h for h in hints2) == 1
    assert b.due_alarms(1000.0) == []
    assert b.due_alarms(7200.0) == [(r, 7200.0)]
    b.commit(r, lease.epoch, Batch(alarm=None))
    assert len(alarm_hints(raw, prefix)) == 1  # only the failed commit's orphan is left
    assert b.due_alarms(10_000.0) == []


def test_orphan_hint_of_a_fenced_owner_is_dropped(make_url: Any, opened: Any, raw: Any,
                                                  prefix: str) -> None:
    a, b = opened(make_url()), opened(make_url())
    r = ref()
    la = a.acquire(r, owner="A", address=None, now=100.0, until=110.0)
    lb = b.acquire(r, owner="B", address=None, now=111.0, until=300.0)
    with pytest.raises(Fenced):
        a.commit(r, la.epoch, Batch(alarm=150.0))  # its hint went in, its commit cannot land
    b.commit(r, lb.epoch, Batch(alarm=160.0))
    assert len(alarm_hints(raw, prefix)) == 2
    assert b.due_alarms(200.0) == [(r, 160.0)]
    assert len(alarm_hints(raw, prefix)) == 1  # the fenced epoch's hint can never matter


# -- registry and cost figures -------------------------------------------------------------------


def test_request_counts_per_batch_and_per_activation(make_url: Any, opened: Any) -> None:
    b = opened(make_url(checkpoint_batches=1000))
    r = ref()
    before = b.request_counts.snapshot()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=200.0, name="alice")
    # GET lease (absent), PUT marker, PUT lease, LIST snap/, LIST log/, PUT fence
    assert delta(b, before) == {"put": 3, "get": 1, "list": 2, "delete": 0, "other": 0}
    before = b.request_counts.snapshot()
    for i in range(10):
        b.commit(r, lease.epoch, Batch(puts={b"k%d" % i: b"v" * 100}, deletes={b"x"}))
    assert delta(b, before) == {"put": 10, "get": 0, "list": 0, "delete": 0, "other": 0}
    before = b.request_counts.snapshot()
    assert b.get_many(r, [b"k1", b"nope"]) == {b"k1": b"v" * 100}
    assert len(b.scan(r, None, None)) == 10
    assert delta(b, before)["get"] == 0  # the owner reads from memory
    b.release(r, lease.epoch)
    other = opened(make_url())
    before = other.request_counts.snapshot()
    other.acquire(r, owner="B", address=None, now=100.0, until=200.0)
    # GET lease, PUT lease, LIST snap/, LIST log/, GET 11 records (in parallel), PUT fence
    assert delta(other, before) == {"put": 2, "get": 12, "list": 2, "delete": 0, "other": 0}
    [info] = other.list_objects(NS)
    assert (info.name, info.epoch, info.owner, info.keys) == ("alice", 2, "B", 10)


def test_delete_object_keeps_the_epoch_and_unregisters(make_url: Any, opened: Any, raw: Any,
                                                       prefix: str) -> None:
    b = opened(make_url())
    r, r2 = ref(1), ref(2, ns="Room")
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=200.0, name="x")
    b.acquire(r2, owner="A", address=None, now=100.0, until=200.0)
    b.commit(r, lease.epoch, Batch(puts={b"k": b"v"}, alarm=150.0))
    assert b.namespaces() == [NS, "Room"]
    b.delete_object(r, lease.epoch)
    assert b.list_objects(NS) == [] and b.namespaces() == ["Room"]
    assert alarm_hints(raw, prefix) == []
    assert state(opened(make_url()), r) == {}
    lease2 = b.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    assert lease2.epoch == lease.epoch + 1
    assert [i.ref for i in b.list_objects(NS)] == [r]
    with pytest.raises(Fenced):
        b.delete_object(r, lease.epoch)


# -- bad input -------------------------------------------------------------------------------------


def test_missing_bucket_is_a_config_error(duro_s3_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        open_backend(f"s3://no-such-bucket/p?endpoint_url={duro_s3_endpoint}")


def test_unreachable_endpoint_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    with pytest.raises(BackendUnavailable, match=f"cannot reach S3 endpoint http://127.0.0.1:{port}"):
        open_backend(f"s3://{BUCKET}/p?endpoint_url=http://127.0.0.1:{port}&retries=1")


def test_bad_urls_are_config_errors(duro_s3_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="credentials never go"):
        open_backend(f"s3://key:secret@{BUCKET}/p?endpoint_url={duro_s3_endpoint}")
    with pytest.raises(ConfigError, match="unknown s3 URL option"):
        open_backend(f"s3://{BUCKET}/p?endpoint_url={duro_s3_endpoint}&aws_secret=1")
    with pytest.raises(ConfigError, match="needs a bucket"):
        open_backend("s3:///p")


def test_missing_credentials_are_a_config_error(duro_s3_endpoint: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no usable AWS credentials"):
        open_backend(f"s3://{BUCKET}/p?endpoint_url={duro_s3_endpoint}")


def test_wrong_credentials_are_a_config_error(tmp_path: Path) -> None:
    # A separate moto server process with request authentication switched on: it knows no
    # access key at all, so whatever we send is rejected the way S3 rejects a bad key.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "duro.testing.moto_server", "--port", "0"],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:")
        with pytest.raises(ConfigError, match="rejected the credentials"):
            open_backend(f"s3://{BUCKET}/p?endpoint_url={endpoint}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_foreign_and_corrupt_objects_are_clear_errors(make_url: Any, opened: Any, raw: Any,
                                                     prefix: str) -> None:
    b = opened(make_url())
    r = ref()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=200.0)
    b.commit(r, lease.epoch, put("k", "v"))
    [lease_key] = [k for k in keys_under(raw, prefix) if k.endswith("lease.json")]
    base = lease_key[: -len("lease.json")]
    raw.put_object(Bucket=BUCKET, Key=base + f"log/{3:020d}", Body=b"not msgpack \xff")
    with pytest.raises(BackendError, match="not a duro log record"):
        state(opened(make_url()), r)
    raw.delete_object(Bucket=BUCKET, Key=base + f"log/{3:020d}")
    raw.put_object(Bucket=BUCKET, Key=base + "log/notes.txt", Body=b"hello")
    with pytest.raises(BackendError, match=r"unexpected object .*notes\.txt"):
        state(opened(make_url()), r)
    raw.put_object(Bucket=BUCKET, Key=lease_key, Body=b'{"some": "json"}')
    with pytest.raises(BackendError, match="not a duro lease record"):
        b.read_lease(r)
    raw.put_object(Bucket=BUCKET, Key=f"{prefix}/duro-format.json", Body=b"<html>")
    with pytest.raises(BackendError, match="foreign data"):
        open_backend(make_url())
    raw.put_object(Bucket=BUCKET, Key=f"{prefix}/duro-format.json",
                   Body=b'{"duro": "s3", "format": 99}')
    with pytest.raises(ConfigError, match="format 99"):
        open_backend(make_url())


# -- a process killed mid-commit -----------------------------------------------------------------


def test_killed_writer_loses_no_acknowledged_write(make_url: Any, opened: Any) -> None:
    url = make_url()
    script = textwrap.dedent(f"""
        import sys
        from duro.backends import open_backend
        from duro.backends.base import Batch, ObjectRef
        b = open_backend({url!r})
        r = ObjectRef({NS!r}, {f"{1:064x}"!r})
        lease = b.acquire(r, owner="killed", address=None, now=100.0, until=110.0)
        i = 0
        while True:
            b.commit(r, lease.epoch, Batch(puts={{b"k%06d" % i: b"v"}}))
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acked = -1
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked = int(line)
            if acked >= 15:
                break
    finally:
        proc.kill()  # SIGKILL, most likely in the middle of the next commit
        proc.wait(timeout=30)
    assert acked >= 15
    b = opened(url)
    b.acquire(ref(), owner="next", address=None, now=111.0, until=200.0)
    got = state(b, ref())
    assert all(b"k%06d" % i in got for i in range(acked + 1))
    assert sorted(got) == [b"k%06d" % i for i in range(len(got))]  # a prefix: no holes


def test_commit_renews_the_lease_in_parallel_and_reports_a_lost_lease(
        make_url: Any, opened: Any, raw: Any, prefix: str) -> None:
    b = opened(make_url())
    r = ref()
    lease = b.acquire(r, owner="A", address=None, now=100.0, until=110.0)
    before = b.request_counts.snapshot()
    b.commit(r, lease.epoch, Batch(puts={b"k": b"1"}, lease_until=120.0))
    assert delta(b, before)["put"] == 2  # the batch record and the lease, side by side
    assert b.read_lease(r) == lease.__class__(lease.epoch, "A", None, 120.0)
    before = b.request_counts.snapshot()
    b.commit(r, lease.epoch, Batch(puts={b"k": b"2"}, lease_until=115.0))
    assert delta(b, before)["put"] == 1  # the stored lease already reaches that far
    # A challenger bumped the epoch in lease.json but has not written its fence yet: our
    # batch still lands (the challenger will replay it), but the lease is no longer ours.
    [lease_key] = [k for k in keys_under(raw, prefix) if k.endswith("lease.json")]
    doc = json.loads(raw.get_object(Bucket=BUCKET, Key=lease_key)["Body"].read())
    raw.put_object(Bucket=BUCKET, Key=lease_key,
                   Body=json.dumps({**doc, "epoch": doc["epoch"] + 1, "owner": "B"}).encode())
    with pytest.raises(BackendUnavailable, match="batch landed but renewing the lease failed"):
        b.commit(r, lease.epoch, Batch(puts={b"k": b"3"}, lease_until=130.0))
    assert state(opened(make_url()), r) == {b"k": b"3"}


# -- a new owner's fence racing the old owner's garbage collection (issue 20) ---------------------


def test_fence_cannot_land_in_a_slot_the_old_owners_gc_deleted(
        make_url: Any, opened: Any) -> None:
    url = make_url(checkpoint_batches=1)  # A checkpoints (and collects) after every batch
    a, b = opened(url), opened(url)
    r = ref()
    la = a.acquire(r, owner="A", address=None, now=100.0, until=110.0)
    a.commit(r, la.epoch, put("a0", "0"))
    a._drain()
    acked = {b"a0": b"0"}

    def a_commits(key: str) -> None:
        a.commit(r, la.epoch, put(key, key))
        a._drain()  # its checkpoint, and the deletion of older batch records, finished
        acked[key.encode()] = key.encode()

    # B's fence PUT at slot j finds A's batch there (412); while B reads slot j back, A
    # commits again, checkpoints above j and (on the old code) deletes slot j.
    b._faults.plan("hook", op="PutObject", key="/log/", hook=lambda: a_commits("a1"))
    b._faults.plan("hook", op="GetObject", key="/log/", hook=lambda: a_commits("a2"))
    lb = b.acquire(r, owner="B", address=None, now=111.0, until=130.0)
    assert b._faults.pending == 0
    # A, a zombie that never stops writing, must now be fenced: nothing it commits lands.
    with pytest.raises(Fenced):
        for i in range(3, 10):
            a_commits(f"a{i}")
    for i in range(5):
        b.commit(r, lb.epoch, put(f"b{i}", str(i)))
        acked[f"b{i}".encode()] = str(i).encode()
    b._drain()
    assert state(opened(url), r) == acked  # every acknowledged write of A and of B
