"""Tests of the ``lmdb://`` backend beyond the generic conformance suite.

Long keys (byte order across LMDB's 511-byte key limit), map growth, sync options, several OS
processes, stale readers of killed processes, fork protection and bad inputs. Everything runs
against real LMDB environments under ``tmp_path`` and real OS processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from duro.backends import Batch, ObjectRef, open_backend
from duro.backends import _lmdb_keys as lk
from duro.backends._lmdb import LMDBBackend
from duro.backends._memory import MemoryBackend
from duro.backends.base import FORMAT_VERSION, Backend, BackendURL
from duro.errors import BackendError, ConfigError, DuroError, Fenced, InvalidObjectId
from duro.keys import key_range

NS = "Thing"


def ref(n: int = 0, ns: str = NS) -> ObjectRef:
    return ObjectRef(ns, hashlib.sha256(f"{ns}/{n}".encode()).hexdigest())


def url_for(path: Path, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"lmdb:///{path.absolute()}" + (f"?{query}" if query else "")


def own(backend: Backend, r: ObjectRef, owner: str = "me") -> int:
    now = time.time()
    return backend.acquire(r, owner=owner, address=None, now=now, until=now + 60).epoch


@pytest.fixture
def lmdb_url(tmp_path: Path) -> str:
    return url_for(tmp_path / "env")


@pytest.fixture
def backend(lmdb_url: str) -> Iterator[Backend]:
    b = open_backend(lmdb_url)
    try:
        yield b
    finally:
        b.close()


def _scan_keys(b: Backend, r: ObjectRef, lo: bytes | None, hi: bytes | None,
               reverse: bool = False, limit: int | None = None) -> list[bytes]:
    return [k for k, _ in b.scan(r, lo, hi, reverse=reverse, limit=limit)]


# -- long keys --------------------------------------------------------------------------------


def test_keys_at_and_past_the_lmdb_limit(backend: Backend) -> None:
    r = ref()
    epoch = own(backend, r)
    keys = [b"k" * n for n in (1, 462, 463, 464, 511, 512, 1000, 2048)]
    keys += [b"k" * 511 + b"a", b"k" * 511 + b"\x00", b"k" * 2047 + b"\xff", b"l", b""]
    backend.commit(r, epoch, Batch(puts={k: b"v%d" % len(k) for k in keys}))
    assert backend.get_many(r, keys) == {k: b"v%d" % len(k) for k in keys}
    assert _scan_keys(backend, r, None, None) == sorted(keys)
    assert _scan_keys(backend, r, None, None, reverse=True) == sorted(keys, reverse=True)
    lo, hi = b"k" * 511, b"k" * 2048
    inside = [k for k in sorted(keys) if lo <= k < hi]
    assert _scan_keys(backend, r, lo, hi) == inside
    assert _scan_keys(backend, r, lo, hi, reverse=True) == inside[::-1]
    assert _scan_keys(backend, r, lo, hi, limit=2) == inside[:2]
    assert _scan_keys(backend, r, lo, hi, reverse=True, limit=2) == inside[::-1][:2]
    deleted = [b"k" * 512, b"k" * 2048, b"k" * 463]
    backend.commit(r, epoch, Batch(deletes=set(deleted)))
    assert backend.get_many(r, deleted) == {}
    assert _scan_keys(backend, r, None, None) == sorted(set(keys) - set(deleted))
    info = backend.list_objects(NS)[0]
    assert info.keys == len(keys) - 3
    assert info.size == sum(len(k) * 2 + len(b"v%d" % len(k)) - len(k)
                            for k in keys if k not in deleted)


def test_prefix_list_with_long_shared_prefix(backend: Backend) -> None:
    r = ref()
    epoch = own(backend, r)
    base = "é" * 300  # 600 UTF-8 bytes shared by every key below
    names = [base, base + "a", base + "ab", base + "b", base + "b" * 1000, base[:-1] + "f",
             base + "\U0010ffff", "a", "z" * 2000]
    puts = {n.encode(): n.encode()[-3:] for n in names}
    backend.commit(r, epoch, Batch(puts=puts))
    for prefix in (base, base + "a", base + "b", base[:200], "é"):
        lo, hi = key_range(prefix=prefix)
        want = sorted(k for k in puts if k.startswith(prefix.encode()))
        assert _scan_keys(backend, r, lo, hi) == want
        assert _scan_keys(backend, r, lo, hi, reverse=True) == want[::-1]
    lo, hi = key_range(start_after=base + "a", end=base + "b" * 999)
    assert _scan_keys(backend, r, lo, hi) == [(base + "ab").encode(), (base + "b").encode()]


def _random_key(rng: random.Random, stems: list[bytes]) -> bytes:
    stem = rng.choice(stems)
    tail_len = rng.choice([0, 0, 1, 2, 5, 40, 500, 1500])
    tail = bytes(rng.choice(b"\x00ab\xff") for _ in range(tail_len))
    return (stem + tail)[: rng.choice([2048, 2048, 463, 464, 511, 512])]


def _differential(backend: Backend, seed: int, ops: int) -> None:
    """Random batches and scans on LMDB and on the memory reference must agree exactly."""
    rng = random.Random(seed)
    ref_backend = MemoryBackend.from_url(BackendURL.parse("memory://"))
    r = ref(seed)
    e1, e2 = own(backend, r), own(ref_backend, r)
    stems = [b"", b"a" * 462, b"a" * 463, b"a" * 464, b"a" * 600, b"a" * 463 + b"b",
             b"a" * 462 + b"\xff", b"b" * 511, b"\xff" * 470]
    known: list[bytes] = []
    for _ in range(ops):
        puts = {}
        for _ in range(rng.randint(0, 6)):
            k = _random_key(rng, stems)
            puts[k] = rng.randbytes(rng.randint(0, 20))
        deletes = {rng.choice(known) for _ in range(rng.randint(0, 3)) if known} - set(puts)
        batch = Batch(puts=puts, deletes=deletes, delete_all=rng.random() < 0.03)
        backend.commit(r, e1, batch)
        ref_backend.commit(r, e2, batch)
        known.extend(puts)
        bounds = [None, *(_random_key(rng, stems) for _ in range(3))]
        lo, hi = rng.choice(bounds), rng.choice(bounds)
        reverse = rng.random() < 0.5
        limit = rng.choice([None, 1, 2, 5, 50])
        got = backend.scan(r, lo, hi, reverse=reverse, limit=limit)
        assert got == ref_backend.scan(r, lo, hi, reverse=reverse, limit=limit), (lo, hi)
        probe = rng.sample(known, min(len(known), 8)) if known else []
        assert backend.get_many(r, probe) == ref_backend.get_many(r, probe)
    assert backend.scan(r, None, None) == ref_backend.scan(r, None, None)
    mine, theirs = backend.list_objects(NS)[0], ref_backend.list_objects(NS)[0]
    assert (mine.size, mine.keys) == (theirs.size, theirs.keys)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_long_keys_match_the_memory_reference(backend: Backend, seed: int) -> None:
    _differential(backend, seed, 150)


def test_hash_collisions_of_long_keys_lose_nothing(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force every long key with the same head into one slot, as a hash collision would.
    monkeypatch.setattr(lk, "_long_key",
                        lambda prefix, key: prefix + key[:lk.HEAD_LEN] + b"\x00" * lk.HASH_LEN)
    _differential(backend, 7, 120)


# -- map growth -------------------------------------------------------------------------------


def test_map_grows_from_a_tiny_map_size(tmp_path: Path) -> None:
    url = url_for(tmp_path / "env", map_size="64KiB", sync="off")  # growth ignores sync
    b = open_backend(url)
    try:
        assert isinstance(b, LMDBBackend)
        assert b._env.env.info()["map_size"] == 64 * 1024
        r = ref()
        epoch = own(b, r)
        stop = threading.Event()
        read_errors: list[BaseException] = []

        def reader() -> None:  # reads keep working while the map is replaced under them
            try:
                while not stop.is_set():
                    rows = b.scan(r, None, None, limit=50)
                    assert all(len(v) == 1000 for k, v in rows if k.startswith(b"key"))
                    b.get_many(r, [b"key00001"])
                    time.sleep(0.0005)  # a busy-looping reader would hog the GIL
            except BaseException as exc:
                read_errors.append(exc)

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in readers:
            t.start()
        for i in range(300):
            b.commit(r, epoch, Batch(puts={b"key%05d" % i: bytes([i % 256]) * 1000}))
        big = {b"big%05d" % i: os.urandom(3000) for i in range(1000)}  # 3 MB in one batch
        b.commit(r, epoch, Batch(puts=big))
        assert b._env.env.info()["map_size"] >= 4 * 1024 * 1024
        threads = [threading.Thread(target=lambda n=n: [
            b.commit(ref(n + 1), own(b, ref(n + 1)), Batch(puts={b"t%d" % i: b"x" * 2000}))
            for i in range(50)]) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        for t in readers:
            t.join()
        assert read_errors == []
        assert isinstance(b, LMDBBackend) and b._env.grown >= 6
    finally:
        b.close()
    b = open_backend(url)
    try:
        assert len(b.scan(r, None, None)) == 1300
        assert b.get_many(r, [b"big00999"]) == {b"big00999": big[b"big00999"]}
        assert all(len(b.scan(ref(n + 1), None, None)) == 50 for n in range(4))
    finally:
        b.close()


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "sync", "metasync"),
                         [("full", True, True), ("normal", True, False), ("off", False, False)])
def test_sync_levels(tmp_path: Path, level: str, sync: bool, metasync: bool) -> None:
    url = url_for(tmp_path / "env", sync=level)
    b = open_backend(url)
    assert isinstance(b, LMDBBackend)
    flags = b._env.env.flags()
    assert flags["sync"] is sync
    if sync:
        assert flags["metasync"] is metasync
    r = ref()
    b.commit(r, own(b, r), Batch(puts={b"k": level.encode()}))
    b.close()
    b = open_backend(url)
    assert b.get_many(r, [b"k"]) == {b"k": level.encode()}
    b.close()


def test_default_sync_is_full(backend: Backend) -> None:
    assert isinstance(backend, LMDBBackend)
    flags = backend._env.env.flags()
    assert flags["sync"] and flags["metasync"]


def test_max_readers_option(tmp_path: Path) -> None:
    b = open_backend(url_for(tmp_path / "env", max_readers="7"))
    assert isinstance(b, LMDBBackend)
    assert b._env.env.max_readers() == 7
    b.close()


@pytest.mark.parametrize("query", ["sync=fast", "map_size=lots", "map_size=1KiB",
                                   "max_readers=0", "max_readers=2.5", "mapsize=1GiB",
                                   "readonly=1"])
def test_bad_options_are_config_errors(tmp_path: Path, query: str) -> None:
    with pytest.raises(ConfigError):
        open_backend(url_for(tmp_path / "env") + "?" + query)


def test_same_directory_twice_in_one_process_shares_the_environment(lmdb_url: str) -> None:
    a, b = open_backend(lmdb_url), open_backend(lmdb_url)
    r = ref()
    a.commit(r, own(a, r), Batch(puts={b"k": b"v"}))
    assert b.get_many(r, [b"k"]) == {b"k": b"v"}
    a.close()
    a.close()
    with pytest.raises(BackendError, match="closed"):
        a.get_many(r, [b"k"])
    assert b.get_many(r, [b"k"]) == {b"k": b"v"}
    with pytest.raises(ConfigError, match="same options"):
        open_backend(lmdb_url + "?sync=off")
    b.close()


def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    b = open_backend("lmdb:///data/duro.lmdb")
    b.close()
    assert (tmp_path / "data" / "duro.lmdb" / "data.mdb").is_file()


# -- concurrency in one process ---------------------------------------------------------------


def test_concurrent_commits_share_transactions_and_fencing_stays_per_commit(
    backend: Backend,
) -> None:
    refs = [ref(i) for i in range(6)]
    epochs = {r: own(backend, r) for r in refs}
    stale = ref(99)
    stale_epoch = own(backend, stale)
    later = time.time() + 120  # after the first lease ran out: a newer epoch fences the first
    backend.acquire(stale, owner="thief", address=None, now=later, until=later + 60)
    fenced = 0
    errors: list[BaseException] = []

    def worker(r: ObjectRef) -> None:
        try:
            for i in range(40):
                n = int(backend.get_many(r, [b"n"]).get(b"n", b"0"))
                backend.commit(r, epochs[r], Batch(puts={b"n": b"%d" % (n + 1),
                                                         b"k%d" % i: b"x" * 100}))
        except BaseException as exc:
            errors.append(exc)

    def zombie() -> None:
        nonlocal fenced
        for _ in range(40):
            try:
                backend.commit(stale, stale_epoch, Batch(puts={b"n": b"lost"}))
            except Fenced:
                fenced += 1

    threads = [threading.Thread(target=worker, args=(r,)) for r in refs]
    threads.append(threading.Thread(target=zombie))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fenced == 40
    assert backend.get_many(stale, [b"n"]) == {}
    for r in refs:
        assert backend.get_many(r, [b"n"]) == {b"n": b"40"}


# -- several OS processes ---------------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import json, sys, time
    from duro.backends import Batch, LeaseHeld, ObjectRef, open_backend
    from duro.errors import Fenced
    url, ns, oid, owner, rounds = sys.argv[1:6]
    b = open_backend(url)
    r = ObjectRef(ns, oid)
    done = fenced = held = 0
    while done + fenced < int(rounds):
        now = time.time()
        try:
            lease = b.acquire(r, owner=owner, address=None, now=now, until=now + 30)
        except LeaseHeld:
            held += 1
            time.sleep(0.0005)
            continue
        n = int(b.get_many(r, [b"n"]).get(b"n", b"0"))
        pad = {b"pad-%s-%d" % (owner.encode(), done): b"p" * 3000}
        try:
            b.commit(r, lease.epoch, Batch(puts={b"n": b"%d" % (n + 1), **pad}))
            done += 1
        except Fenced:
            fenced += 1
        b.release(r, lease.epoch)
    grown, adopted = b._env.grown, b._env.adopted
    b.close()
    print(json.dumps({"done": done, "fenced": fenced, "held": held, "grown": grown,
                      "adopted": adopted}))
""")


def test_processes_read_modify_write_lose_no_update(tmp_path: Path) -> None:
    url = url_for(tmp_path / "env", map_size="64KiB", sync="normal")
    r = ref()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, url, r.namespace, r.id, f"p{i}",
                               "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    b = open_backend(url)
    try:
        total = sum(res["done"] for res in results)
        assert total == 240 - sum(res["fenced"] for res in results)
        assert b.get_many(r, [b"n"]) == {b"n": b"%d" % total}
        assert len(b.scan(r, b"pad-", b"pad.")) == total  # the map grew across processes
        assert b.read_lease(r) is not None
        assert sum(res["grown"] for res in results) >= 1
    finally:
        b.close()


_FOLLOWER = textwrap.dedent('''
    import json, sys, time
    from duro.backends import Batch, ObjectRef, open_backend
    url, ns, oid = sys.argv[1:4]
    b = open_backend(url)
    r = ObjectRef(ns, oid)
    print("ready", flush=True)
    sys.stdin.readline()          # the other process grows the map meanwhile
    rows = len(b.scan(r, None, None))
    lease = b.acquire(r, owner="follower", address=None, now=time.time() + 1000,
                      until=time.time() + 2000)
    b.commit(r, lease.epoch, Batch(puts={b"follower": b"x" * 100_000}))
    print(json.dumps({"rows": rows, "adopted": b._env.adopted}), flush=True)
    b.close()
''')


def test_map_grown_by_another_process_is_adopted(tmp_path: Path) -> None:
    url = url_for(tmp_path / "env", map_size="64KiB")
    r = ref()
    follower = subprocess.Popen([sys.executable, "-c", _FOLLOWER, url, r.namespace, r.id],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    assert follower.stdout is not None and follower.stdin is not None
    assert follower.stdout.readline().strip() == "ready", follower.communicate()[1]
    b = open_backend(url)
    try:
        epoch = own(b, r)
        for i in range(20):
            b.commit(r, epoch, Batch(puts={b"row%03d" % i: b"y" * 50_000}))  # 1 MB: 16x the map
        out, err = follower.communicate("go\n", timeout=60)
        assert follower.returncode == 0, err
        res = json.loads(out)
        assert res == {"rows": 20, "adopted": res["adopted"]} and res["adopted"] >= 1
        assert len(b.get_many(r, [b"follower"])[b"follower"]) == 100_000
    finally:
        b.close()


_READER = textwrap.dedent("""
    import sys, time
    from duro.backends import open_backend
    b = open_backend(sys.argv[1])
    txn = b._env.env.begin()   # hold a read transaction (a reader slot) until killed
    txn.get(b"x")
    print("ready", flush=True)
    time.sleep(600)
""")


def _readers(url: str, n: int) -> list[subprocess.Popen[str]]:
    """Start *n* processes that each hold a read transaction (a reader slot)."""
    procs = []
    for _ in range(n):  # one after the other: each frees dead slots when it opens
        p = subprocess.Popen([sys.executable, "-c", _READER, url], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", p.communicate()[1]
        procs.append(p)
    return procs


def _kill(procs: list[subprocess.Popen[str]]) -> list[int]:
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    return [p.pid for p in procs]


def _kill_readers(url: str, n: int) -> list[int]:
    """Start *n* processes that each hold a read transaction, then kill -9 them all."""
    return _kill(_readers(url, n))


def _reader_pids(b: Backend) -> set[int]:
    assert isinstance(b, LMDBBackend)
    rows = b._env.env.readers().splitlines()[1:]
    return {int(line.split()[0]) for line in rows if line.split()}


def test_stale_reader_of_a_killed_process_is_freed(lmdb_url: str) -> None:
    b = open_backend(lmdb_url)
    try:
        [pid] = _kill_readers(lmdb_url, 1)
        assert pid in _reader_pids(b)
        assert isinstance(b, LMDBBackend)
        assert b.check_readers() >= 1
        assert pid not in _reader_pids(b)
    finally:
        b.close()


def test_reader_table_full_of_dead_processes_recovers_on_open(tmp_path: Path) -> None:
    url = url_for(tmp_path / "env", max_readers="4")
    keeper, *doomed = _readers(url, 4)  # a live process keeps LMDB from resetting its table
    try:
        pids = _kill(doomed)  # the table is now full: one live reader, three dead ones
        # py-lmdb needs a slot to open at all; the live duro process frees dead slots while
        # idle, so the open waits briefly and then succeeds.
        b = open_backend(url)
        try:
            listed = _reader_pids(b)
            assert keeper.pid in listed and not set(pids) & listed
            r = ref()
            b.commit(r, own(b, r), Batch(puts={b"k": b"v"}))
            assert b.get_many(r, [b"k"]) == {b"k": b"v"}
        finally:
            b.close()
    finally:
        _kill([keeper])


def test_reads_recover_when_dead_processes_fill_the_reader_table(tmp_path: Path) -> None:
    url = url_for(tmp_path / "env", max_readers="3")
    b = open_backend(url)
    assert isinstance(b, LMDBBackend)
    try:
        r = ref()
        b.commit(r, own(b, r), Batch(puts={b"k": b"v"}))
        held = b._env.env.begin()  # this process keeps one slot busy
        try:
            pids = _kill_readers(url, 2)  # two more slots, owned by dead processes: full
            assert set(pids) <= _reader_pids(b)
            assert b.get_many(r, [b"k"]) == {b"k": b"v"}  # table full -> reader check -> retry
            assert not set(pids) & _reader_pids(b)
        finally:
            held.abort()
    finally:
        b.close()


# -- fork -------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_environment_is_not_used_across_fork(lmdb_url: str, tmp_path: Path) -> None:
    b = open_backend(lmdb_url)
    r = ref()
    epoch = own(b, r)
    b.commit(r, epoch, Batch(puts={b"k": b"parent"}))
    report = tmp_path / "child.json"
    pid = os.fork()
    if pid == 0:  # the child: report what happened, never return into pytest
        code = 1
        try:
            out: dict[str, str] = {}
            try:
                b.get_many(r, [b"k"])
            except DuroError as exc:
                out["use"] = f"{type(exc).__name__}: {exc}"
            try:
                open_backend(lmdb_url)
            except DuroError as exc:
                out["reopen"] = f"{type(exc).__name__}: {exc}"
            b.close()
            other = open_backend(url_for(tmp_path / "other"))
            other.commit(r, own(other, r), Batch(puts={b"k": b"child"}))
            out["other"] = other.get_many(r, [b"k"])[b"k"].decode()
            other.close()
            report.write_text(json.dumps(out))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    out = json.loads(report.read_text())
    assert out["use"].startswith("BackendError") and "fork" in out["use"]
    assert out["reopen"].startswith("ConfigError") and "fork" in out["reopen"]
    assert out["other"] == "child"
    # The parent is untouched: its environment, reader slots and writer thread still work.
    assert b.get_many(r, [b"k"]) == {b"k": b"parent"}
    b.commit(r, epoch, Batch(puts={b"k": b"again"}))
    assert b.get_many(r, [b"k"]) == {b"k": b"again"}
    b.close()


# -- bad input --------------------------------------------------------------------------------


def test_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(ConfigError, match="is a file"):
        open_backend(url_for(f))
    with pytest.raises(ConfigError, match="cannot create") as info:
        open_backend(url_for(f / "below"))
    assert isinstance(info.value.orig, OSError)


def test_corrupt_data_file(tmp_path: Path) -> None:
    env = tmp_path / "env"
    b = open_backend(url_for(env))
    r = ref()
    b.commit(r, own(b, r), Batch(puts={b"k": b"v"}))
    b.close()
    data = env / "data.mdb"
    data.write_bytes(random.Random(0).randbytes(data.stat().st_size))
    with pytest.raises(BackendError, match="not a valid LMDB data file") as info:
        open_backend(url_for(env))
    assert isinstance(info.value.orig, lmdb.Error)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs")
def test_read_only_directory() -> None:
    # sysfs refuses new files even to root, unlike a chmod'ed directory.
    with pytest.raises(ConfigError) as info:
        open_backend("lmdb:////sys/kernel")
    assert info.value.orig is None or isinstance(info.value.orig, (OSError, lmdb.Error))
    with pytest.raises(ConfigError, match="cannot create"):
        open_backend("lmdb:////sys/kernel/duro-test")


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "data.mdb").read_bytes()).hexdigest()


def test_environment_of_another_program_is_refused_untouched(tmp_path: Path) -> None:
    env_dir = tmp_path / "foreign"
    env = lmdb.open(str(env_dir), max_dbs=4)
    users = env.open_db(b"users")
    with env.begin(write=True) as txn:
        txn.put(b"alice", b"1", db=users)
    env.close()
    before = _digest(env_dir)
    with pytest.raises(ConfigError, match="did not create"):
        open_backend(url_for(env_dir))
    assert _digest(env_dir) == before

    plain_dir = tmp_path / "plain"  # keys in the main database, no sub-databases
    env = lmdb.open(str(plain_dir))
    with env.begin(write=True) as txn:
        txn.put(b"some", b"thing")
    env.close()
    before = _digest(plain_dir)
    with pytest.raises(ConfigError, match="did not create"):
        open_backend(url_for(plain_dir))
    assert _digest(plain_dir) == before


def test_newer_storage_format_is_refused(tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    open_backend(url_for(env_dir)).close()
    env = lmdb.open(str(env_dir), max_dbs=8)
    meta = env.open_db(b"duro.meta")
    future = env.open_db(b"duro.future")  # a newer duro may add tables
    with env.begin(write=True) as txn:
        txn.put(b"format", str(FORMAT_VERSION + 1).encode(), db=meta)
        txn.put(b"k", b"v", db=future)
    env.close()
    with pytest.raises(ConfigError, match="upgrade duro"):
        open_backend(url_for(env_dir))


@pytest.mark.parametrize("url", ["lmdb://host/dir", "lmdb://", "lmdb:///"])
def test_malformed_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_backend(url)


def test_malformed_object_id_is_a_duro_error(backend: Backend) -> None:
    with pytest.raises(InvalidObjectId):
        backend.get_many(ObjectRef(NS, "not-hex"), [b"k"])
    with pytest.raises(InvalidObjectId):
        backend.acquire(ObjectRef(NS, "AB" * 32), owner="me", address=None, now=0, until=1)


def test_alarm_index_orders_ties_like_the_reference(backend: Backend) -> None:
    refs = [ref(i, ns) for ns in ("B", "A") for i in range(3)]
    for i, r in enumerate(refs):
        backend.commit(r, own(backend, r), Batch(alarm=100.0 if i % 2 else -5.5))
    due = backend.due_alarms(200.0, limit=4)
    want = sorted(((100.0 if i % 2 else -5.5), r.namespace, r.id) for i, r in enumerate(refs))
    assert [(r.namespace, r.id, at) for r, at in due] == [(ns, i, at) for at, ns, i in want[:4]]
    assert backend.due_alarms(0.0) == [(r, at) for r, at in due[:3] if at < 0]
