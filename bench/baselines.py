"""Baselines: the raw stores doing the same work without duro, and the diskcache peer.

Each baseline runs the same :class:`~duro.bench.workloads.OpStream` from one thread, one
operation per transaction (commit per write), at the same sync level as the duro backend:

- :class:`RawSQLite`: stdlib ``sqlite3``, WAL, ``synchronous`` = FULL / NORMAL / OFF,
  a ``kv(obj, k, v) WITHOUT ROWID`` table, one autocommitted UPSERT per put,
  ``BEGIN IMMEDIATE`` … ``COMMIT`` per read-modify-write.
- :class:`RawLMDB`: ``lmdb``, one write transaction per write; full = ``sync=True``,
  normal = ``sync=True, metasync=False``, off = ``sync=False``.
- :class:`RawS3`: ``boto3`` against the same endpoint, one PUT per write.
- :class:`DiskCachePeer`: ``diskcache.Cache`` with its defaults (WAL, synchronous NORMAL).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from duro.bench.hdr import Histogram
from duro.bench.report import Measurement
from duro.bench.workloads import OpStream, key_name, rotate

OP_POOL = 4096

__all__ = [
    "DiskCachePeer",
    "RawLMDB",
    "RawS3",
    "RawSQLite",
    "RawStore",
    "remove_tree",
    "run_sync_ops",
    "time_sync_loop",
]


class RawStore(Protocol):
    """A store driven directly, without duro."""

    name: str

    def load(self, obj: str, count: int, value: bytes) -> None:
        """Write keys ``key_name(0..count-1)`` of *obj*, all with *value*."""

    def get(self, obj: str, key: str) -> bytes | None:
        """Read one key."""

    def put(self, obj: str, key: str, value: bytes) -> None:
        """Write one key durably (one transaction)."""

    def rmw(self, obj: str, key: str, default: bytes) -> None:
        """Read, rotate and write back one key in one transaction."""

    def scan(self, obj: str, start: str, limit: int) -> int:
        """Read up to *limit* keys from *start* (inclusive) with their values; return the count."""

    def pad(self, count: int, size: int) -> None:
        """Write *count* filler values in one transaction and delete them in another."""

    def close(self) -> None:
        """Release everything (files stay)."""


class RawSQLite:
    """Plain ``sqlite3`` at a given sync level."""

    name = "sqlite3"

    def __init__(self, path: Path, sync: str = "full") -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        level = {"full": "FULL", "normal": "NORMAL"}.get(sync, "OFF")
        self.conn.execute(f"PRAGMA synchronous={level}")
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS kv (obj TEXT NOT NULL, k TEXT NOT NULL, v BLOB NOT NULL,"
            " PRIMARY KEY (obj, k)) WITHOUT ROWID"
        )

    def load(self, obj: str, count: int, value: bytes) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT INTO kv (obj, k, v) VALUES (?, ?, ?) "
                "ON CONFLICT (obj, k) DO UPDATE SET v = excluded.v",
                ((obj, key_name(i), value) for i in range(count)),
            )

    def pad(self, count: int, size: int) -> None:
        filler = bytes(size)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT OR REPLACE INTO kv (obj, k, v) VALUES ('~pad', ?, ?)",
                                  ((f"{i:06d}", filler) for i in range(count)))
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM kv WHERE obj = '~pad'")

    def get(self, obj: str, key: str) -> bytes | None:
        row = self.conn.execute("SELECT v FROM kv WHERE obj = ? AND k = ?", (obj, key)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, obj: str, key: str, value: bytes) -> None:
        self.conn.execute(
            "INSERT INTO kv (obj, k, v) VALUES (?, ?, ?) "
            "ON CONFLICT (obj, k) DO UPDATE SET v = excluded.v",
            (obj, key, value),
        )

    def rmw(self, obj: str, key: str, default: bytes) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute("SELECT v FROM kv WHERE obj = ? AND k = ?", (obj, key)).fetchone()
            new = rotate(None if row is None else bytes(row[0]), default)
            c.execute(
                "INSERT INTO kv (obj, k, v) VALUES (?, ?, ?) "
                "ON CONFLICT (obj, k) DO UPDATE SET v = excluded.v",
                (obj, key, new),
            )
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def scan(self, obj: str, start: str, limit: int) -> int:
        rows = self.conn.execute(
            "SELECT k, v FROM kv WHERE obj = ? AND k >= ? ORDER BY k LIMIT ?", (obj, start, limit)
        ).fetchall()
        return len(rows)

    def close(self) -> None:
        self.conn.close()


class RawLMDB:
    """Plain ``lmdb``: one environment, key = object + NUL + key, one txn per write."""

    name = "lmdb"

    def __init__(self, path: Path, sync: str = "full") -> None:
        import lmdb

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env: Any = lmdb.open(
            str(path), map_size=1 << 30, sync=sync in ("full", "normal"),
            metasync=sync == "full", max_dbs=0,
        )

    @staticmethod
    def _k(obj: str, key: str) -> bytes:
        return obj.encode() + b"\x00" + key.encode()

    def load(self, obj: str, count: int, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            for i in range(count):
                txn.put(self._k(obj, key_name(i)), value)

    def pad(self, count: int, size: int) -> None:
        filler = bytes(size)
        keys = [self._k("~pad", f"{i:06d}") for i in range(count)]
        with self.env.begin(write=True) as txn:
            for k in keys:
                txn.put(k, filler)
        with self.env.begin(write=True) as txn:
            for k in keys:
                txn.delete(k)

    def get(self, obj: str, key: str) -> bytes | None:
        with self.env.begin(buffers=False) as txn:
            v = txn.get(self._k(obj, key))
        return None if v is None else bytes(v)

    def put(self, obj: str, key: str, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(self._k(obj, key), value)

    def rmw(self, obj: str, key: str, default: bytes) -> None:
        k = self._k(obj, key)
        with self.env.begin(write=True) as txn:
            v = txn.get(k)
            txn.put(k, rotate(None if v is None else bytes(v), default))

    def scan(self, obj: str, start: str, limit: int) -> int:
        prefix = obj.encode() + b"\x00"
        n = 0
        with self.env.begin() as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix + start.encode()):
                return 0
            for k, v in cur:
                if n >= limit or not bytes(k).startswith(prefix):
                    break
                bytes(v)
                n += 1
        return n

    def close(self) -> None:
        self.env.close()


class RawS3:
    """Plain ``boto3``: one object per key under a fresh prefix, one PUT per write."""

    name = "boto3"

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None,
                 region: str = "us-east-1") -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/raw-{uuid.uuid4().hex[:8]}".lstrip("/")
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(max_pool_connections=32, retries={"max_attempts": 3}),
        )

    def _k(self, obj: str, key: str) -> str:
        return f"{self.prefix}/{obj}/{key}"

    def load(self, obj: str, count: int, value: bytes) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: self.put(obj, key_name(i), value), range(count)))

    def pad(self, count: int, size: int) -> None:
        return None

    def get(self, obj: str, key: str) -> bytes | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._k(obj, key))
        except self.client.exceptions.NoSuchKey:
            return None
        return bytes(resp["Body"].read())

    def put(self, obj: str, key: str, value: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._k(obj, key), Body=value)

    def rmw(self, obj: str, key: str, default: bytes) -> None:
        self.put(obj, key, rotate(self.get(obj, key), default))

    def scan(self, obj: str, start: str, limit: int) -> int:
        base = f"{self.prefix}/{obj}/"
        resp = self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=base, StartAfter=base + start[:-1] if start else base,
            MaxKeys=limit,
        )
        n = 0
        for item in resp.get("Contents", []):
            key = item["Key"][len(base):]
            if key < start:
                continue
            self.get(obj, key)
            n += 1
        return n

    def close(self) -> None:
        self.client.close()


class DiskCachePeer:
    """The peer: ``diskcache.Cache`` with its defaults (``set`` commits each call)."""

    name = "diskcache"

    def __init__(self, path: Path) -> None:
        import diskcache

        self.path = path
        self.cache: Any = diskcache.Cache(str(path))

    def load(self, obj: str, count: int, value: bytes) -> None:
        with self.cache.transact():
            for i in range(count):
                self.cache.set((obj, key_name(i)), value)

    def pad(self, count: int, size: int) -> None:
        filler = bytes(size)
        with self.cache.transact():
            for i in range(count):
                self.cache.set(("~pad", i), filler)
        with self.cache.transact():
            for i in range(count):
                self.cache.delete(("~pad", i))

    def get(self, obj: str, key: str) -> bytes | None:
        v = self.cache.get((obj, key))
        return None if v is None else bytes(v)

    def put(self, obj: str, key: str, value: bytes) -> None:
        self.cache.set((obj, key), value)

    def rmw(self, obj: str, key: str, default: bytes) -> None:
        with self.cache.transact():
            self.put(obj, key, rotate(self.get(obj, key), default))

    def scan(self, obj: str, start: str, limit: int) -> int:
        raise NotImplementedError("diskcache has no ordered range read")

    def close(self) -> None:
        self.cache.close()


def time_sync_loop(
    step: Callable[[], object], *, duration: float, max_ops: int
) -> Measurement:
    """Call *step* repeatedly for *duration* seconds or *max_ops* calls, timing each call."""
    hist = Histogram()
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + duration
    start = time.perf_counter()
    ops = 0
    while ops < max_ops:
        t0 = clock()
        step()
        hist.record(clock() - t0)
        ops += 1
        if time.perf_counter() >= deadline:
            break
    return Measurement(ops, time.perf_counter() - start, hist)


def run_sync_ops(
    store: RawStore, stream: OpStream, *, values: list[bytes], scan_length: int,
    obj_names: list[str], duration: float, max_ops: int,
) -> Measurement:
    """Drive *store* with *stream* from this thread; the stream's objects map to *obj_names*.

    The ops are drawn before the clock starts (a pool of :data:`OP_POOL`, cycled), so only the
    store's work is timed. Puts cycle through *values*.
    """
    ring = len(values)
    default = values[0]
    pool = stream.take(OP_POOL)
    size = len(pool)
    hist = Histogram()
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + duration
    start = time.perf_counter()
    ops = 0
    while ops < max_ops:
        kind, obj, key = pool[ops % size]
        name = obj_names[obj]
        t0 = clock()
        if kind == "get":
            store.get(name, key)
        elif kind == "put":
            store.put(name, key, values[ops % ring])
        elif kind == "rmw":
            store.rmw(name, key, default)
        else:
            store.scan(name, key, scan_length)
        hist.record(clock() - t0)
        ops += 1
        if time.perf_counter() >= deadline:
            break
    return Measurement(ops, time.perf_counter() - start, hist)


def remove_tree(path: Path) -> None:
    """Remove a baseline's files, ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)
