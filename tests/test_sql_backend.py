"""SQLite-specific behaviour of the SQL backend (the generic contract is the conformance suite).

Real SQLite files under ``tmp_path``; a second, raw ``sqlite3`` connection plays the other
process where a test needs one.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from duro.backends import FORMAT_VERSION, Batch, Lease, LeaseHeld, ObjectRef, open_backend
from duro.backends._sql import SQLBackend
from duro.errors import (
    BackendError,
    BackendNotInstalled,
    BackendUnavailable,
    ConfigError,
    Fenced,
)

REF = ObjectRef("Counter", "a" * 64)
OTHER = ObjectRef("Counter", "b" * 64)


def _open(url: str) -> SQLBackend:
    backend = open_backend(url)
    assert isinstance(backend, SQLBackend)
    return backend


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "duro.db"


@pytest.fixture
def backend(db_path: Path) -> Iterator[SQLBackend]:
    b = _open(f"sqlite:///{db_path}")
    try:
        yield b
    finally:
        b.close()


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=0.1)


# -- pragmas and transactions ------------------------------------------------------------------


def test_database_is_in_wal_mode(backend: SQLBackend, db_path: Path) -> None:
    with _raw(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db_path.with_name("duro.db-wal").exists()


@pytest.mark.parametrize(("sync", "level"), [(None, 2), ("full", 2), ("normal", 1), ("off", 0)])
def test_sync_option_sets_synchronous_on_every_connection(
    db_path: Path, sync: str | None, level: int
) -> None:
    url = f"sqlite:///{db_path}" + (f"?sync={sync}" if sync else "")
    b = _open(url)
    try:
        assert b._wraw.execute("PRAGMA synchronous").fetchone()[0] == level
        got: list[int] = []

        def reader() -> None:
            b.get_many(REF, [b"k"])  # opens this thread's reader
            got.append(b._local.reader.raw.execute("PRAGMA synchronous").fetchone()[0])

        t = threading.Thread(target=reader)
        t.start()
        t.join()
        assert got == [level]
    finally:
        b.close()


def test_every_write_transaction_begins_immediate(backend: SQLBackend) -> None:
    statements: list[str] = []
    backend._wraw.set_trace_callback(statements.append)
    lease = backend.acquire(REF, owner="p1", address=None, now=0.0, until=10.0)
    backend.commit(REF, lease.epoch, Batch(puts={b"k": b"v"}, deletes={b"x"}, alarm=5.0))
    backend.renew(REF, lease.epoch, 20.0)
    backend.release(REF, lease.epoch)
    lease = backend.acquire(REF, owner="p1", address=None, now=0.0, until=10.0)
    backend.delete_object(REF, lease.epoch)
    backend._wraw.set_trace_callback(None)
    begins = [s for s in statements if s.upper().startswith("BEGIN")]
    writes = [s for s in statements if s.split()[0].upper() in ("UPDATE", "INSERT", "DELETE")]
    assert begins == ["BEGIN IMMEDIATE"] * 6
    assert writes, statements
    # every write statement runs inside a transaction opened by BEGIN IMMEDIATE
    depth = 0
    for s in statements:
        word = s.split()[0].upper()
        if word == "BEGIN":
            depth += 1
        elif word in ("COMMIT", "ROLLBACK"):
            depth -= 1
        elif word in ("UPDATE", "INSERT", "DELETE"):
            assert depth == 1, s


def test_commit_waits_for_the_write_lock_then_reports_busy(db_path: Path) -> None:
    b = _open(f"sqlite:///{db_path}?busy_timeout=0.2")
    try:
        lease = b.acquire(REF, owner="p1", address=None, now=0.0, until=10.0)
        other = _raw(db_path)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(BackendUnavailable, match="busy") as info:
                b.commit(REF, lease.epoch, Batch(puts={b"k": b"v"}))
            assert isinstance(info.value.orig, sqlite3.OperationalError)
            assert "locked" in str(info.value.orig)
            # reads still work while another connection holds the write lock (WAL)
            assert b.get_many(REF, [b"k"]) == {}
        finally:
            other.execute("ROLLBACK")
            other.close()
        b.commit(REF, lease.epoch, Batch(puts={b"k": b"v"}))  # the lock is free again
        assert b.get_many(REF, [b"k"]) == {b"k": b"v"}
    finally:
        b.close()


def test_other_driver_errors_become_backend_error_with_orig(
    backend: SQLBackend, db_path: Path
) -> None:
    lease = backend.acquire(REF, owner="p1", address=None, now=0.0, until=10.0)
    with _raw(db_path) as conn:
        conn.execute("DROP TABLE kv")
    with pytest.raises(BackendError) as info:
        backend.get_many(REF, [b"k"])
    assert not isinstance(info.value, BackendUnavailable)
    assert isinstance(info.value.orig, sqlite3.OperationalError)
    with pytest.raises(BackendError) as info:
        backend.commit(REF, lease.epoch, Batch(puts={b"k": b"v"}))
    assert isinstance(info.value.orig, sqlite3.OperationalError)
    assert backend.read_lease(REF) == lease  # the failed commit was rolled back


# -- URLs and paths ----------------------------------------------------------------------------


def test_relative_url_resolves_against_cwd_and_creates_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    b = _open("sqlite:///nested/dir/rel.db")
    b.close()
    assert (tmp_path / "nested" / "dir" / "rel.db").is_file()


def test_absolute_url_has_four_slashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "abs" / "duro.db"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{target}"
    assert url.startswith("sqlite:////")
    _open(url).close()
    assert target.is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    ("suffix", "match"),
    [
        ("?cache=shared", "unknown sqlite URL option"),
        ("?sync=fast", "sync='fast' is not one of"),
        ("?busy_timeout=-1", "busy_timeout"),
        ("?busy_timeout=soon", "busy_timeout"),
    ],
)
def test_bad_url_options_are_config_errors(db_path: Path, suffix: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_backend(f"sqlite:///{db_path}{suffix}")
    assert not db_path.exists()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://", "names no database file"),
        ("sqlite:///:memory:", "names no database file"),
        ("sqlite://host/x.db", "host part"),
        ("mysql://u@127.0.0.1/db", "unknown backend scheme 'mysql'"),
    ],
)
def test_urls_naming_no_usable_database_are_config_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_backend(url)


def test_postgres_url_needs_its_driver() -> None:
    url = "postgresql://duro@127.0.0.1:9/duro"  # port 9 (discard): nothing listens there
    if importlib.util.find_spec("psycopg") is None:
        with pytest.raises(BackendNotInstalled, match=r"duro\[postgres\]"):
            open_backend(url)
    else:
        with pytest.raises(BackendUnavailable):
            open_backend(url)


# -- bad locations and files -------------------------------------------------------------------


def test_path_that_is_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(ConfigError, match="is a directory") as info:
        open_backend(f"sqlite:///{target}")
    assert "duro.db" in str(info.value)  # the hint names a file inside it
    assert list(target.iterdir()) == []


def test_file_that_is_not_a_database_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    content = b"these are my notes, not a database\n" * 200
    target.write_bytes(content)
    with pytest.raises(ConfigError, match="not an SQLite database") as info:
        open_backend(f"sqlite:///{target}")
    assert isinstance(info.value.orig, sqlite3.DatabaseError)
    assert target.read_bytes() == content
    assert not target.with_name("notes.txt-wal").exists()


def test_parent_that_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    with pytest.raises(ConfigError, match="cannot create the directory") as info:
        open_backend(f"sqlite:///{blocker}/sub/duro.db")
    assert isinstance(info.value.orig, OSError)
    assert blocker.read_text() == "I am a file"


def test_read_only_location(tmp_path: Path) -> None:
    # sysfs refuses new files even to root, so this is a genuinely read-only place.
    target = Path("/sys/duro-test-should-not-exist.db")
    assert not target.exists()
    with pytest.raises(ConfigError, match="read-only") as info:
        open_backend(f"sqlite:///{target}")
    assert isinstance(info.value.orig, OSError)
    assert not target.exists()


def test_a_non_duro_sqlite_database_gets_the_tables(tmp_path: Path) -> None:
    target = tmp_path / "app.db"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE mine (x)")
        conn.execute("INSERT INTO mine VALUES (42)")
    conn.close()
    b = _open(f"sqlite:///{target}")
    b.close()
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT x FROM mine").fetchall() == [(42,)]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"duro_meta", "objects", "kv", "mine"} <= names


# -- format version ----------------------------------------------------------------------------


def test_records_format_version(backend: SQLBackend, db_path: Path) -> None:
    with _raw(db_path) as conn:
        row = conn.execute("SELECT value FROM duro_meta WHERE name = 'format_version'").fetchone()
    assert row == (str(FORMAT_VERSION),)


def test_refuses_a_newer_format_and_changes_nothing(db_path: Path) -> None:
    _open(f"sqlite:///{db_path}").close()
    with _raw(db_path) as conn:
        conn.execute("UPDATE duro_meta SET value = ? WHERE name = 'format_version'",
                     (str(FORMAT_VERSION + 1),))
    with pytest.raises(ConfigError, match=f"format {FORMAT_VERSION + 1}.*upgrade duro"):
        open_backend(f"sqlite:///{db_path}")
    with _raw(db_path) as conn:
        row = conn.execute("SELECT value FROM duro_meta WHERE name = 'format_version'").fetchone()
    assert row == (str(FORMAT_VERSION + 1),)


def test_refuses_a_malformed_format_version(db_path: Path) -> None:
    _open(f"sqlite:///{db_path}").close()
    with _raw(db_path) as conn:
        conn.execute("UPDATE duro_meta SET value = 'banana' WHERE name = 'format_version'")
    with pytest.raises(ConfigError, match="malformed format version"):
        open_backend(f"sqlite:///{db_path}")


# -- fencing -----------------------------------------------------------------------------------


def test_stale_owner_is_fenced_and_nothing_lands(backend: SQLBackend) -> None:
    a = backend.acquire(REF, owner="A", address="a:1", now=0.0, until=10.0, name="alice")
    backend.commit(REF, a.epoch, Batch(puts={b"k": b"a1"}, alarm=50.0))
    with pytest.raises(LeaseHeld) as held:
        backend.acquire(REF, owner="B", address="b:1", now=9.0, until=30.0)
    assert held.value.lease == a
    b = backend.acquire(REF, owner="B", address="b:1", now=10.0, until=30.0)
    assert b.epoch == a.epoch + 1
    with pytest.raises(Fenced, match=f"epoch {b.epoch}; ours was {a.epoch}"):
        backend.commit(REF, a.epoch, Batch(
            puts={b"k": b"stale", b"new": b"stale"}, deletes={b"gone"}, delete_all=True,
            alarm=1.0, lease_until=99.0, active_at=5.0,
        ))
    assert backend.scan(REF, None, None) == [(b"k", b"a1")]
    assert backend.get_alarm(REF) == 50.0
    assert backend.read_lease(REF) == b
    [info] = backend.list_objects("Counter")
    assert info.last_active is None
    with pytest.raises(Fenced):
        backend.renew(REF, a.epoch, 99.0)
    with pytest.raises(Fenced):
        backend.delete_object(REF, a.epoch)
    backend.release(REF, a.epoch)  # a stale release does nothing
    assert backend.read_lease(REF) == b
    with pytest.raises(Fenced, match="epoch 0"):
        backend.commit(OTHER, 1, Batch(puts={b"k": b"v"}))


def test_fencing_across_two_backends_on_one_file(db_path: Path) -> None:
    one = _open(f"sqlite:///{db_path}")
    two = _open(f"sqlite:///{db_path}")
    try:
        a = one.acquire(REF, owner="A", address=None, now=0.0, until=10.0)
        b = two.acquire(REF, owner="B", address=None, now=11.0, until=30.0)
        with pytest.raises(Fenced):
            one.commit(REF, a.epoch, Batch(puts={b"k": b"A"}))
        two.commit(REF, b.epoch, Batch(puts={b"k": b"B"}))
        assert one.get_many(REF, [b"k"]) == {b"k": b"B"}
    finally:
        one.close()
        two.close()


def test_delete_object_keeps_the_epoch_and_acquire_revives(backend: SQLBackend) -> None:
    a = backend.acquire(REF, owner="A", address=None, now=0.0, until=10.0, name="alice")
    backend.commit(REF, a.epoch, Batch(puts={b"k": b"v"}, alarm=3.0))
    backend.delete_object(REF, a.epoch)
    assert backend.get_many(REF, [b"k"]) == {}
    assert backend.get_alarm(REF) is None
    assert backend.due_alarms(100.0) == []
    assert backend.list_objects("Counter") == []
    assert backend.namespaces() == []
    assert backend.read_lease(REF) == a  # tombstone: the epoch survives
    again = backend.acquire(REF, owner="A", address=None, now=1.0, until=10.0)
    assert again.epoch == a.epoch + 1
    [info] = backend.list_objects("Counter")
    assert info.name is None and info.keys == 0 and info.size == 0


# -- reads -------------------------------------------------------------------------------------


def test_get_many_beyond_one_statement(backend: SQLBackend) -> None:
    lease = backend.acquire(REF, owner="A", address=None, now=0.0, until=10.0)
    puts = {f"k{i:05d}".encode(): str(i).encode() for i in range(2500)}
    backend.commit(REF, lease.epoch, Batch(puts=puts))
    keys = [*puts, b"missing", b"k00001"]
    assert backend.get_many(REF, keys) == puts


def test_keys_order_bytewise(backend: SQLBackend) -> None:
    lease = backend.acquire(REF, owner="A", address=None, now=0.0, until=10.0)
    keys = ["a", "B", "é", "z", "\u4e2d", "a\x00", "\U0001f600", "ab"]
    backend.commit(REF, lease.epoch, Batch(puts={k.encode(): b"1" for k in keys}))
    expect = sorted(k.encode() for k in keys)
    assert [k for k, _ in backend.scan(REF, None, None)] == expect
    assert [k for k, _ in backend.scan(REF, b"a", b"z", reverse=True, limit=2)] == [b"ab", b"a\x00"]


def test_threads_share_one_backend(backend: SQLBackend) -> None:
    lease = backend.acquire(REF, owner="A", address=None, now=0.0, until=10.0)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                key = f"t{t}-{i}".encode()
                backend.commit(REF, lease.epoch, Batch(puts={key: b"x"}))
                assert backend.get_many(REF, [key]) == {key: b"x"}  # read your own write
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(backend.scan(REF, None, None)) == 300
    # readers of finished threads are closed once another thread opens one
    done = threading.Thread(target=lambda: backend.get_many(REF, [b"x"]))
    done.start()
    done.join()
    assert sum(r.thread.is_alive() for r in backend._readers) == len(backend._readers) - 1


# -- close / reopen ----------------------------------------------------------------------------


def test_close_reopen_keeps_everything(db_path: Path) -> None:
    b = _open(f"sqlite:///{db_path}")
    a = b.acquire(REF, owner="A", address="h:1", now=0.0, until=10.0, name="alice")
    b.commit(REF, a.epoch, Batch(puts={b"k": b"v", b"k2": b"v2"}, alarm=7.5, active_at=2.0))
    b.close()
    b.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        b.get_many(REF, [b"k"])
    with pytest.raises(BackendError, match="closed"):
        b.commit(REF, a.epoch, Batch(puts={b"k": b"x"}))
    with pytest.raises(BackendError, match="closed"):
        b.acquire(OTHER, owner="A", address=None, now=0.0, until=1.0)
    b = _open(f"sqlite:///{db_path}")
    try:
        assert b.read_lease(REF) == a
        assert b.scan(REF, None, None) == [(b"k", b"v"), (b"k2", b"v2")]
        assert b.get_alarm(REF) == 7.5
        [info] = b.list_objects("Counter")
        assert (info.name, info.last_active, info.keys, info.size) == ("alice", 2.0, 2, 6)
        with pytest.raises(Fenced):
            b.commit(REF, a.epoch - 1, Batch(puts={b"k": b"x"}))
    finally:
        b.close()


# -- fork ----------------------------------------------------------------------------------------


def test_forked_child_uses_fresh_connections(backend: SQLBackend) -> None:
    lease = backend.acquire(REF, owner="A", address=None, now=0.0, until=1e12)
    backend.commit(REF, lease.epoch, Batch(puts={b"parent": b"1"}))
    assert backend.get_many(REF, [b"parent"]) == {b"parent": b"1"}  # parent has a reader
    parent_writer = backend._wraw
    pid = os.fork()
    if pid == 0:  # child: must not touch the inherited connections
        code = 1
        try:
            if backend._wraw is not parent_writer:
                backend.commit(REF, lease.epoch, Batch(puts={b"child": b"2"}))
                if backend.get_many(REF, [b"parent", b"child"]) == {b"parent": b"1",
                                                                     b"child": b"2"}:
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    backend.commit(REF, lease.epoch, Batch(puts={b"parent": b"3"}))
    assert backend.get_many(REF, [b"parent", b"child"]) == {b"parent": b"3", b"child": b"2"}


def test_renew_many_extends_current_leases_and_reports_stale_ones(backend: SQLBackend) -> None:
    other = ObjectRef("Counter", "b" * 64)
    lease = backend.acquire(REF, owner="p1", address=None, now=0.0, until=10.0)
    old = backend.acquire(other, owner="p1", address=None, now=0.0, until=1.0)
    newer = backend.acquire(other, owner="p2", address=None, now=2.0, until=12.0)
    statements: list[str] = []
    backend._wraw.set_trace_callback(statements.append)
    stale = backend.renew_many([(REF, lease.epoch), (other, old.epoch)], 30.0)
    backend._wraw.set_trace_callback(None)
    assert list(stale) == [other]
    assert isinstance(stale[other], Fenced)
    assert backend.read_lease(REF) == Lease(lease.epoch, "p1", None, 30.0)
    assert backend.read_lease(other) == newer  # the stale renewal changed nothing
    assert [s for s in statements if s.upper().startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
