"""The SQL backend on a real PostgreSQL server (the ``duro_postgres`` throwaway cluster).

What differs from SQLite: row locks instead of ``BEGIN IMMEDIATE`` (a racing epoch bump makes a
stale commit match no row), bytewise key order in ``bytea`` and code-point order of namespaces
and IDs whatever the database locale, ``synchronous_commit`` per the ``sync`` option,
concurrent schema creation by many processes, reconnection after the server drops a session,
and the storage-format check.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from duro.backends import Batch, LeaseHeld, ObjectRef, open_backend
from duro.backends._sql import SQLBackend
from duro.errors import BackendUnavailable, ConfigError, Fenced
from duro.testing.pg_cluster import PostgresMissing, find_postgres_bin

REF = ObjectRef("Counter", "a" * 64)


def _conninfo(url: str) -> str:
    u = sa.make_url(url)
    return f"host={u.host} port={u.port} user={u.username} dbname={u.database}"


@pytest.fixture
def pg_url(duro_postgres: Any) -> Any:
    url = duro_postgres.new_database()
    yield url
    duro_postgres.drop_database(url)


def _open(url: str) -> Any:
    b = open_backend(url)
    assert isinstance(b, SQLBackend)
    return b


def test_fresh_database_per_url_and_locale_independent_order(duro_postgres: Any) -> None:
    one, two = duro_postgres.new_database(), duro_postgres.new_database()
    assert one != two
    with _open(one) as a, _open(two) as b:
        lease = a.acquire(REF, owner="A", address=None, now=0.0, until=10.0)
        keys = [b"", b"\x00", b"\x00\x01", b"A", b"a", b"\x7f", b"\x80", b"\xc3\xa9", b"\xff",
                b"\xff\xff"]
        a.commit(REF, lease.epoch, Batch(puts={k: k or b"e" for k in keys}))
        assert [k for k, _ in a.scan(REF, None, None)] == sorted(keys)
        assert [k for k, _ in a.scan(REF, b"\x00", b"\xff", reverse=True)] == sorted(
            k for k in keys if b"\x00" <= k < b"\xff")[::-1]
        assert b.namespaces() == [] and b.read_lease(REF) is None
        for ns in ("b", "B", "a", "Z", "é", "_"):
            a.acquire(ObjectRef(ns, "0" * 64), owner="A", address=None, now=0.0, until=1.0)
        assert a.namespaces() == sorted({"b", "B", "a", "Z", "é", "_", "Counter"})


def test_racing_acquires_and_commits_fence_exactly(pg_url: str) -> None:
    """Many threads on separate connections: one acquire per epoch, stale commits never land."""
    backends = [_open(pg_url) for _ in range(4)]
    try:
        first = backends[0].acquire(REF, owner="init", address=None, now=0.0, until=0.0)
        backends[0].commit(REF, first.epoch, Batch(puts={b"n": b"0"}))
        landed: list[int] = []
        fenced = 0
        lock = threading.Lock()

        def worker(i: int) -> None:
            nonlocal fenced
            b = backends[i % len(backends)]
            for j in range(15):
                lease = b.acquire(REF, owner=f"w{i}-{j}", address=None, now=1e9, until=1e9)
                try:
                    b.commit(REF, lease.epoch, Batch(puts={b"n": str(lease.epoch).encode()}))
                except Fenced:
                    with lock:
                        fenced += 1
                    continue
                with lock:
                    landed.append(lease.epoch)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
        epochs = [first.epoch, *landed]
        assert len(set(epochs)) == len(epochs), "two owners got the same epoch"
        final = backends[1].read_lease(REF)
        assert final is not None and final.epoch == first.epoch + 8 * 15
        value = int(backends[2].get_many(REF, [b"n"])[b"n"])
        # The stored value was written by the owner whose commit landed last; every landed
        # commit had the then-current epoch, so the value is the largest epoch that landed.
        assert value == max(epochs)
        assert len(landed) + fenced == 8 * 15
    finally:
        for b in backends:
            b.close()


def test_live_lease_is_not_taken_by_a_second_server_connection(pg_url: str) -> None:
    with _open(pg_url) as one, _open(pg_url) as two:
        a = one.acquire(REF, owner="A", address="a:1", now=0.0, until=10.0)
        with pytest.raises(LeaseHeld) as held:
            two.acquire(REF, owner="B", address="b:1", now=5.0, until=20.0)
        assert held.value.lease.owner == "A"
        b = two.acquire(REF, owner="B", address="b:1", now=10.0, until=20.0)
        with pytest.raises(Fenced):
            one.commit(REF, a.epoch, Batch(puts={b"k": b"stale"}, delete_all=True))
        assert two.scan(REF, None, None) == []
        two.commit(REF, b.epoch, Batch(puts={b"k": b"B"}))


@pytest.mark.parametrize(("sync", "expected"), [("full", "on"), ("normal", "off"),
                                                 ("off", "off")])
def test_sync_option_sets_synchronous_commit(pg_url: str, sync: str, expected: str) -> None:
    with _open(f"{pg_url}?sync={sync}") as b:
        raw = b._wraw
        with raw.cursor() as cur:
            cur.execute("SHOW synchronous_commit")
            assert cur.fetchone()[0] == expected
        reader = b._reader()
        reader.cur.execute("SHOW synchronous_commit")
        assert reader.cur.fetchone()[0] == expected


_CHILD = "import sys; from duro.backends import open_backend; open_backend(sys.argv[1]).close()"


def test_many_processes_create_the_schema_at_once(pg_url: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, pg_url], stderr=subprocess.PIPE)
             for _ in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with psycopg.connect(_conninfo(pg_url)) as conn:
        rows = conn.execute("SELECT name, value FROM duro_meta").fetchall()
    assert rows == [("format_version", "1")]


def test_reconnects_after_the_server_drops_its_sessions(pg_url: str) -> None:
    with _open(pg_url) as b:
        lease = b.acquire(REF, owner="A", address=None, now=0.0, until=1e9)
        b.commit(REF, lease.epoch, Batch(puts={b"k": b"1"}))
        assert b.get_many(REF, [b"k"]) == {b"k": b"1"}
        with psycopg.connect(_conninfo(pg_url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(BackendUnavailable):
            b.commit(REF, lease.epoch, Batch(puts={b"k": b"2"}))
        with pytest.raises(BackendUnavailable):
            b.get_many(REF, [b"k"])
        b.commit(REF, lease.epoch, Batch(puts={b"k": b"3"}))  # healed: fresh connections
        assert b.get_many(REF, [b"k"]) == {b"k": b"3"}


def test_refuses_a_newer_storage_format(pg_url: str) -> None:
    with _open(pg_url):
        pass
    with psycopg.connect(_conninfo(pg_url), autocommit=True) as conn:
        conn.execute("UPDATE duro_meta SET value = '2' WHERE name = 'format_version'")
    with pytest.raises(ConfigError, match=r"storage format 2.*upgrade duro"):
        open_backend(pg_url)


def test_cluster_binaries_are_found() -> None:
    """The test cluster needs initdb/pg_ctl; their absence is an error, never a skip."""
    bindir = find_postgres_bin()
    assert bindir is not None, "apt-get install postgresql"
    assert (bindir / "initdb").exists() and (bindir / "pg_ctl").exists()
    assert issubclass(PostgresMissing, RuntimeError)
