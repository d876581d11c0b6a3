"""The backend conformance suite: tests that every :class:`~duro.backends.Backend` passes.

The tests pin down the storage contract of :mod:`duro.backends.base` black-box, through the public
methods only, so they run unchanged on ``memory``, ``sqlite``, ``lmdb``, ``s3`` and third-party
backends. To run them on a backend, subclass :class:`BackendConformance` in a test module and
provide a ``backend_url`` fixture that returns a fresh, empty URL for each test::

    from duro.consistency.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend_url(self, tmp_path):
            return f"mybackend:///{tmp_path}/store"

What is covered: reads (missing keys omitted, scan bounds and byte order with non-ASCII,
prefix-sharing and 2,048-byte keys), atomic batches (delete-all, alarms, lease renewal),
leases and fencing (a stale owner never lands a write), object deletion, the object registry,
the alarm index, close/reopen durability (``persistent`` backends), a Hypothesis state
machine against a dict model, thread safety, and a 4-process read-modify-write test
(``multi_process`` backends).

Times passed to leases are explicit arguments, so the tests need no clock except in the
multi-process test, which uses the wall clock as the runtime does.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from duro.backends import (
    UNCHANGED,
    Backend,
    BackendURL,
    Batch,
    Lease,
    LeaseHeld,
    ObjectRef,
    backend_class,
    open_backend,
)
from duro.codec import DEFAULT_MAX_VALUE_BYTES
from duro.errors import ConfigError, Fenced
from duro.ids import id_from_name
from duro.keys import MAX_KEY_BYTES, successor

__all__ = [
    "T0",
    "TRICKY_KEYS",
    "BackendConformance",
    "BackendStateMachine",
    "examples_for",
    "make_ref",
    "with_option",
]

T0: Final = 1_700_000_000.0
"""The wall time (epoch seconds) the lease tests start at."""

TRICKY_KEYS: Final[tuple[bytes, ...]] = tuple(
    k.encode()
    for k in (
        "",
        "a",
        "a\x00",
        "a\x00b",
        "a\x01",
        "ab",
        "b",
        "\x7f",
        "\u0080",
        "é",
        "éa",
        "\u07ff",
        "\u0800",
        "\uffff",
        "😀",
        "\U0010ffff",
        "x" * 511,
        "x" * 512,
        "x" * 600 + "a",
        "x" * 600 + "b",
        "x" * 1000,
        "x" * 2046 + "é",
        "x" * 2047 + "a",
        "x" * 2047 + "b",
        "x" * MAX_KEY_BYTES,
    )
)
"""Keys whose UTF-8 byte order trips naive stores: NUL bytes, prefixes of each other, code points
whose UTF-16 order differs from UTF-8 order, and long keys (beyond LMDB's 511 bytes, up to the
2,048-byte limit) that share long prefixes."""


def make_ref(namespace: str = "Conformance", name: str = "obj") -> ObjectRef:
    """A reference with a real 64-hex object ID, as the runtime passes them."""
    return ObjectRef(namespace, id_from_name(namespace, name).hex)


def with_option(url: str, option: str) -> str:
    """*url* with ``name=value`` *option* appended to its query string."""
    return url + ("&" if "?" in url else "?") + option


def examples_for(url: str, base: int = 50) -> int:
    """How many Hypothesis examples to run on *url*: s3 goes through a slow server, so fewer."""
    return max(1, base // 5) if BackendURL.parse(url).scheme == "s3" else base


def _acquire(backend: Backend, ref: ObjectRef, owner: str = "A", *, now: float = T0,
             until: float = T0 + 60, name: str | None = None,
             address: str | None = None) -> Lease:
    return backend.acquire(ref, owner=owner, address=address, now=now, until=until, name=name)


def _scan_all(backend: Backend, ref: ObjectRef) -> list[tuple[bytes, bytes]]:
    return backend.scan(ref, None, None)


def _model_scan(model: dict[bytes, bytes], lo: bytes | None, hi: bytes | None, reverse: bool,
                limit: int | None) -> list[tuple[bytes, bytes]]:
    rows = sorted((k, v) for k, v in model.items()
                  if (lo is None or k >= lo) and (hi is None or k < hi))
    if reverse:
        rows.reverse()
    return rows if limit is None else rows[:limit]


def _close_to(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-6


def _assert_lease(lease: Lease | None, epoch: int, owner: str | None, until: float,
                  address: str | None = None) -> None:
    assert lease is not None
    assert lease.epoch == epoch, lease
    assert lease.owner == owner, lease
    if owner is not None:
        assert lease.address == address, lease
        assert _close_to(lease.until, until), lease


# -- the state machine ------------------------------------------------------------------------

_short_texts = st.text(alphabet="ab\x00é😀", max_size=4)
_keys = st.one_of(
    st.sampled_from(TRICKY_KEYS),
    _short_texts.map(str.encode),
    _short_texts.map(lambda t: b"x" * 1500 + t.encode()),  # long keys sharing a long prefix
)
_values = st.binary(min_size=1, max_size=40)
_alarms = st.one_of(
    st.just(UNCHANGED), st.none(),
    st.integers(min_value=0, max_value=4_000_000_000_000).map(lambda ms: ms / 1000),
)


@dataclass
class _ObjModel:
    ref: ObjectRef
    epoch: int = 0
    old_epochs: list[int] = field(default_factory=list)
    data: dict[bytes, bytes] = field(default_factory=dict)
    alarm: float | None = None


class BackendStateMachine(RuleBasedStateMachine):
    """Random batches, reads and reopens on two objects, checked against a dict model.

    Each run uses a fresh namespace, so runs can share one backend URL. Set :attr:`url` and
    :attr:`persistent` on a subclass (see :meth:`BackendConformance.test_state_machine`).
    """

    url: ClassVar[str] = "memory://"
    persistent: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.backend = open_backend(self.url)
        namespace = f"SM{uuid.uuid4().hex[:10]}"
        self.objs = [_ObjModel(make_ref(namespace, "one")), _ObjModel(make_ref(namespace, "two"))]
        self.now = T0

    def teardown(self) -> None:
        self.backend.close()

    @initialize()
    def acquire_both(self) -> None:
        for obj in self.objs:
            obj.epoch = _acquire(self.backend, obj.ref, owner="sm", now=self.now,
                                 until=self.now + 3600).epoch

    @rule(i=st.integers(0, 1), puts=st.dictionaries(_keys, _values, max_size=6),
          deletes=st.sets(_keys, max_size=4), delete_all=st.booleans(), alarm=_alarms)
    def commit(self, i: int, puts: dict[bytes, bytes], deletes: set[bytes], delete_all: bool,
               alarm: float | object | None) -> None:
        obj = self.objs[i]
        deletes = deletes - puts.keys()
        delete_all = delete_all and len(puts) % 3 == 0  # keep delete_all rarer than plain writes
        batch = Batch(puts=dict(puts), deletes=set(deletes), delete_all=delete_all,
                      alarm=alarm)  # type: ignore[arg-type]
        note(f"commit obj{i} {batch}")
        self.backend.commit(obj.ref, obj.epoch, batch)
        if delete_all:
            obj.data.clear()
            obj.alarm = None
        for k in deletes:
            obj.data.pop(k, None)
        obj.data.update(puts)
        if alarm is not UNCHANGED:
            obj.alarm = alarm  # type: ignore[assignment]

    @rule(i=st.integers(0, 1), keys=st.lists(_keys, max_size=6))
    def get_many(self, i: int, keys: list[bytes]) -> None:
        obj = self.objs[i]
        got = self.backend.get_many(obj.ref, keys)
        assert got == {k: obj.data[k] for k in keys if k in obj.data}

    @rule(i=st.integers(0, 1), lo=st.none() | _keys, hi=st.none() | _keys,
          reverse=st.booleans(), limit=st.none() | st.integers(1, 5))
    def scan(self, i: int, lo: bytes | None, hi: bytes | None, reverse: bool,
             limit: int | None) -> None:
        obj = self.objs[i]
        got = self.backend.scan(obj.ref, lo, hi, reverse=reverse, limit=limit)
        assert got == _model_scan(obj.data, lo, hi, reverse, limit)

    @rule(i=st.integers(0, 1))
    def reacquire(self, i: int) -> None:
        """The owner resets: a new, higher epoch; the old one is stale from now on."""
        obj = self.objs[i]
        self.now += 1
        new = _acquire(self.backend, obj.ref, owner="sm", now=self.now, until=self.now + 3600)
        assert new.epoch > obj.epoch
        obj.old_epochs.append(obj.epoch)
        obj.epoch = new.epoch

    @precondition(lambda self: any(o.old_epochs for o in self.objs))
    @rule(data=st.data(), puts=st.dictionaries(_keys, _values, min_size=1, max_size=3),
          delete_all=st.booleans())
    def stale_commit(self, data: st.DataObject, puts: dict[bytes, bytes],
                     delete_all: bool) -> None:
        """A commit under a stale epoch raises Fenced and lands nothing (the invariant checks)."""
        obj = data.draw(st.sampled_from([o for o in self.objs if o.old_epochs]))
        epoch = data.draw(st.sampled_from(obj.old_epochs))
        with pytest.raises(Fenced):
            self.backend.commit(obj.ref, epoch, Batch(puts=puts, delete_all=delete_all,
                                                      alarm=T0))

    @precondition(lambda self: self.persistent)
    @rule()
    def reopen(self) -> None:
        self.backend.close()
        self.backend = open_backend(self.url)

    @invariant()
    def store_matches_model(self) -> None:
        for obj in self.objs:
            assert _scan_all(self.backend, obj.ref) == sorted(obj.data.items())
            assert _close_to(self.backend.get_alarm(obj.ref), obj.alarm)


# -- the suite --------------------------------------------------------------------------------


class BackendConformance:
    """Abstract conformance tests; subclass with a ``backend_url`` fixture to run them."""

    mp_processes: ClassVar[int] = 4
    """How many OS processes the multi-process test starts."""

    @pytest.fixture
    def backend_url(self) -> str:
        """A fresh, empty backend URL per test: override this fixture in the subclass."""
        raise NotImplementedError("subclasses of BackendConformance provide a backend_url fixture")

    @pytest.fixture
    def backend(self, backend_url: str) -> Iterator[Backend]:
        """The backend under test, open on ``backend_url`` and closed after the test."""
        b = open_backend(backend_url)
        try:
            yield b
        finally:
            b.close()

    @staticmethod
    def cls_of(url: str) -> type[Backend]:
        """The backend class that serves *url* (for its capability flags)."""
        return backend_class(BackendURL.parse(url).scheme)

    # -- reads and batches --------------------------------------------------------------------

    def test_fresh_object_is_empty(self, backend: Backend) -> None:
        ref = make_ref()
        assert backend.get_many(ref, [b"a", b""]) == {}
        assert backend.scan(ref, None, None) == []
        assert backend.scan(ref, None, None, reverse=True, limit=3) == []
        assert backend.get_alarm(ref) is None
        assert backend.read_lease(ref) is None
        assert backend.list_objects(ref.namespace) == []
        assert backend.namespaces() == []
        assert backend.due_alarms(T0 + 10**9) == []

    def test_get_many_omits_missing_keys(self, backend: Backend) -> None:
        ref = make_ref()
        lease = _acquire(backend, ref)
        backend.commit(ref, lease.epoch, Batch(puts={b"a": b"1", b"c": b"3"}))
        assert backend.get_many(ref, [b"a", b"b", b"c", b"d"]) == {b"a": b"1", b"c": b"3"}
        assert backend.get_many(ref, []) == {}
        assert backend.get_many(ref, [b"b"]) == {}

    def test_put_overwrite_and_delete(self, backend: Backend) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        backend.commit(ref, epoch, Batch(puts={b"k": b"v1", b"j": b"x"}))
        backend.commit(ref, epoch, Batch(puts={b"k": b"v2"}, deletes={b"j", b"never"}))
        assert _scan_all(backend, ref) == [(b"k", b"v2")]
        backend.commit(ref, epoch, Batch(deletes={b"k"}))
        assert _scan_all(backend, ref) == []
        assert backend.get_many(ref, [b"k"]) == {}

    def test_empty_key_and_large_value(self, backend: Backend) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        big = bytes(range(256)) * (DEFAULT_MAX_VALUE_BYTES // 256)
        backend.commit(ref, epoch, Batch(puts={b"": b"empty-key", b"big": big}))
        assert backend.get_many(ref, [b"", b"big"]) == {b"": b"empty-key", b"big": big}
        assert _scan_all(backend, ref) == [(b"", b"empty-key"), (b"big", big)]
        backend.commit(ref, epoch, Batch(deletes={b""}))
        assert _scan_all(backend, ref) == [(b"big", big)]

    def test_scan_bounds_reverse_and_limit(self, backend: Backend) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        model = {k.encode(): k.upper().encode() for k in ("a", "b", "c", "d", "e")}
        backend.commit(ref, epoch, Batch(puts=dict(model)))
        bounds: list[tuple[bytes | None, bytes | None]] = [
            (None, None), (b"b", None), (None, b"d"), (b"b", b"d"), (b"b", b"b"), (b"d", b"b"),
            (b"bb", b"dd"), (b"", b"\xff"), (b"a", b"a\x00"), (b"e", None), (b"f", None),
        ]
        for lo, hi in bounds:
            for reverse in (False, True):
                for limit in (None, 0, 1, 2, 10):
                    got = backend.scan(ref, lo, hi, reverse=reverse, limit=limit)
                    assert got == _model_scan(model, lo, hi, reverse, limit), (
                        lo, hi, reverse, limit)
        # the bounds keep their meaning in reverse: lo inclusive, hi exclusive
        assert backend.scan(ref, b"b", b"d", reverse=True) == [(b"c", b"C"), (b"b", b"B")]
        assert backend.scan(ref, b"b", b"d", reverse=True, limit=1) == [(b"c", b"C")]

    def test_utf8_byte_order_and_long_keys(self, backend: Backend) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        model = {k: b"v%d" % i for i, k in enumerate(TRICKY_KEYS)}
        backend.commit(ref, epoch, Batch(puts=dict(model)))
        assert _scan_all(backend, ref) == sorted(model.items())
        assert backend.scan(ref, None, None, reverse=True) == sorted(model.items(), reverse=True)
        assert backend.get_many(ref, list(model)) == model
        for lo in (None, *TRICKY_KEYS):
            for hi in (None, *TRICKY_KEYS[::4]):
                for reverse in (False, True):
                    got = backend.scan(ref, lo, hi, reverse=reverse, limit=3)
                    assert got == _model_scan(model, lo, hi, reverse, 3), (lo, hi, reverse)
        # prefix ranges (what list(prefix=...) sends) over long shared prefixes
        for prefix in (b"x" * 511, b"x" * 600, b"x" * 2047, b"a", "é".encode()):
            hi = successor(prefix)
            expected = sorted((k, v) for k, v in model.items() if k.startswith(prefix))
            assert backend.scan(ref, prefix, hi) == expected, prefix[:8]
        backend.commit(ref, epoch, Batch(deletes={b"x" * 2047 + b"a", b"x" * 511}))
        del model[b"x" * 2047 + b"a"], model[b"x" * 511]
        assert _scan_all(backend, ref) == sorted(model.items())

    def test_many_keys_and_long_key_groups(self, backend: Backend, backend_url: str) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        n = examples_for(backend_url, 300)
        short = {b"k%05d" % i: b"s%d" % i for i in range(n)}
        long = {b"L" * 1500 + b"%05d" % i: b"l%d" % i for i in range(n)}
        long |= {b"L" * 1500: b"base", b"L" * 2048: b"max"}
        model = short | long
        backend.commit(ref, epoch, Batch(puts=dict(short)))
        backend.commit(ref, epoch, Batch(puts=dict(long)))
        rows = sorted(model.items())
        assert _scan_all(backend, ref) == rows
        assert backend.scan(ref, None, None, reverse=True, limit=n // 2) == rows[::-1][: n // 2]
        lo, hi = b"L" * 1500 + b"%05d" % (n // 3), b"L" * 1500 + b"%05d" % (2 * n // 3)
        assert backend.scan(ref, lo, hi) == [r for r in rows if lo <= r[0] < hi]
        assert backend.scan(ref, lo, hi, reverse=True, limit=5) == \
            [r for r in rows if lo <= r[0] < hi][::-1][:5]
        gone = {k for i, k in enumerate(sorted(long)) if i % 3 == 0}
        backend.commit(ref, epoch, Batch(deletes=gone))
        assert _scan_all(backend, ref) == [r for r in rows if r[0] not in gone]
        assert backend.get_many(ref, sorted(long)) == {k: v for k, v in long.items()
                                                        if k not in gone}
        assert backend.get_many(ref, [b"k00001", b"k00001"]) == {b"k00001": b"s1"}

    def test_objects_are_isolated(self, backend: Backend) -> None:
        a, b = make_ref("NsA", "same"), make_ref("NsA", "other")
        c = ObjectRef("NsB", a.id)  # the same ID in another namespace is another object
        epochs = {r: _acquire(backend, r).epoch for r in (a, b, c)}
        for r in (a, b, c):
            backend.commit(r, epochs[r], Batch(puts={b"k": r.namespace.encode() + r.id[:4].encode(),
                                                     b"only-" + r.id[:4].encode(): b"1"},
                                               alarm=T0 + len(r.namespace)))
        backend.commit(a, epochs[a], Batch(delete_all=True))
        assert _scan_all(backend, a) == []
        assert backend.get_alarm(a) is None
        for r in (b, c):
            assert backend.get_many(r, [b"k"]) == {b"k": r.namespace.encode() + r.id[:4].encode()}
            assert len(_scan_all(backend, r)) == 2
            assert backend.get_alarm(r) is not None
        with pytest.raises(Fenced):  # epochs are per object too
            backend.commit(a, epochs[a] + 1, Batch(puts={b"x": b"1"}))

    def test_batch_applies_delete_all_then_deletes_puts_then_alarm(self, backend: Backend) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        backend.commit(ref, epoch, Batch(puts={b"old1": b"1", b"old2": b"2"}, alarm=T0 + 5))
        backend.commit(ref, epoch, Batch(puts={b"new": b"n", b"old1": b"again"},
                                         deletes={b"gone"}, delete_all=True, alarm=T0 + 9))
        assert _scan_all(backend, ref) == [(b"new", b"n"), (b"old1", b"again")]
        assert _close_to(backend.get_alarm(ref), T0 + 9)

    def test_delete_all_clears_the_alarm(self, backend: Backend) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        backend.commit(ref, epoch, Batch(puts={b"a": b"1"}, alarm=T0 + 5))
        assert [r for r, _ in backend.due_alarms(T0 + 5)] == [ref]
        backend.commit(ref, epoch, Batch(delete_all=True))
        assert _scan_all(backend, ref) == []
        assert backend.get_alarm(ref) is None
        assert backend.due_alarms(T0 + 10**6) == []

    def test_alarm_set_unchanged_and_clear(self, backend: Backend) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        backend.commit(ref, epoch, Batch(alarm=T0 + 1.25))
        assert _close_to(backend.get_alarm(ref), T0 + 1.25)
        backend.commit(ref, epoch, Batch(puts={b"k": b"v"}))  # alarm UNCHANGED by default
        assert _close_to(backend.get_alarm(ref), T0 + 1.25)
        backend.commit(ref, epoch, Batch(alarm=T0 + 0.5))  # replace with an earlier one
        assert _close_to(backend.get_alarm(ref), T0 + 0.5)
        [(due_ref, due_at)] = backend.due_alarms(T0 + 1)
        assert due_ref == ref and _close_to(due_at, T0 + 0.5)
        backend.commit(ref, epoch, Batch(alarm=None))
        assert backend.get_alarm(ref) is None
        assert backend.due_alarms(T0 + 10**6) == []
        assert _scan_all(backend, ref) == [(b"k", b"v")]

    def test_batch_lease_until_renews(self, backend: Backend) -> None:
        ref = make_ref()
        lease = _acquire(backend, ref, until=T0 + 10)
        backend.commit(ref, lease.epoch, Batch(puts={b"k": b"v"}, lease_until=T0 + 100))
        _assert_lease(backend.read_lease(ref), lease.epoch, "A", T0 + 100)
        with pytest.raises(LeaseHeld):  # the renewed lease is live past the old end
            _acquire(backend, ref, "B", now=T0 + 50)
        # a batch with no writes still renews (the runtime sends such batches as heartbeats)
        backend.commit(ref, lease.epoch, Batch(lease_until=T0 + 200))
        _assert_lease(backend.read_lease(ref), lease.epoch, "A", T0 + 200)
        assert _scan_all(backend, ref) == [(b"k", b"v")]

    def test_batch_is_atomic_for_concurrent_readers(self, backend: Backend,
                                                    backend_url: str) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        keys = [b"k%02d" % i for i in range(12)]
        backend.commit(ref, epoch, Batch(puts=dict.fromkeys(keys, b"0")))
        rounds = examples_for(backend_url, 40)
        torn: list[object] = []
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                got = backend.get_many(ref, keys)
                if len(set(got.values())) != 1 or len(got) != len(keys):
                    torn.append(got)
                rows = backend.scan(ref, None, None)
                if len({v for _, v in rows}) != 1 or len(rows) != len(keys):
                    torn.append(rows)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(1, rounds + 1):
                backend.commit(ref, epoch, Batch(puts=dict.fromkeys(keys, b"%d" % i)))
        finally:
            done.set()
            for t in threads:
                t.join()
        assert torn == []
        assert backend.get_many(ref, keys) == dict.fromkeys(keys, b"%d" % rounds)

    def test_threads_commit_to_separate_objects(self, backend: Backend, backend_url: str) -> None:
        refs = [make_ref("Threads", f"o{i}") for i in range(4)]
        epochs = [_acquire(backend, r).epoch for r in refs]
        n = examples_for(backend_url, 25)
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for j in range(n):
                    backend.commit(refs[i], epochs[i], Batch(puts={b"j%03d" % j: b"%d" % i}))
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(refs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for i, r in enumerate(refs):
            assert _scan_all(backend, r) == [(b"j%03d" % j, b"%d" % i) for j in range(n)]

    def test_threads_commit_to_one_object(self, backend: Backend, backend_url: str) -> None:
        """Concurrent batches of one owner on one object all land (they may be grouped)."""
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        n = examples_for(backend_url, 20)
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for j in range(n):
                    backend.commit(ref, epoch, Batch(puts={b"t%d-%03d" % (i, j): b"v",
                                                           b"last-%d" % i: b"%d" % j}))
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        expected = {b"t%d-%03d" % (i, j): b"v" for i in range(4) for j in range(n)}
        expected |= {b"last-%d" % i: b"%d" % (n - 1) for i in range(4)}
        assert dict(_scan_all(backend, ref)) == expected

    def test_concurrent_acquires_have_one_winner(self, backend: Backend) -> None:
        ref = make_ref()
        before = _acquire(backend, ref, "setup", until=T0 + 1).epoch
        barrier = threading.Barrier(6)
        won: list[Lease] = []
        held: list[Lease] = []
        errors: list[BaseException] = []

        def contender(i: int) -> None:
            barrier.wait()
            try:
                won.append(_acquire(backend, ref, f"C{i}", now=T0 + 2, until=T0 + 60))
            except LeaseHeld as exc:
                held.append(exc.lease)
            except BaseException as exc:  # reported by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(won) == 1 and len(held) == 5, (won, held)
        assert won[0].epoch == before + 1
        assert all(h.epoch == won[0].epoch and h.owner == won[0].owner for h in held)
        _assert_lease(backend.read_lease(ref), won[0].epoch, won[0].owner, T0 + 60)

    # -- leases -------------------------------------------------------------------------------

    def test_acquire_records_the_lease(self, backend: Backend) -> None:
        ref = make_ref()
        lease = _acquire(backend, ref, "A", until=T0 + 30, address="127.0.0.1:7001")
        assert lease.epoch >= 1
        _assert_lease(lease, lease.epoch, "A", T0 + 30, "127.0.0.1:7001")
        _assert_lease(backend.read_lease(ref), lease.epoch, "A", T0 + 30, "127.0.0.1:7001")

    def test_acquire_bumps_epoch_strictly(self, backend: Backend) -> None:
        ref = make_ref()
        epochs = [_acquire(backend, ref, "A", now=T0 + i, until=T0 + i + 5).epoch
                  for i in range(4)]  # the same owner re-acquires (a reset)
        epochs.append(_acquire(backend, ref, "B", now=T0 + 100, until=T0 + 200).epoch)
        assert all(x < y for x, y in itertools.pairwise(epochs)), epochs
        _assert_lease(backend.read_lease(ref), epochs[-1], "B", T0 + 200)

    def test_live_lease_blocks_others(self, backend: Backend) -> None:
        ref = make_ref()
        lease = _acquire(backend, ref, "A", until=T0 + 30, address="a:1")
        with pytest.raises(LeaseHeld) as info:
            _acquire(backend, ref, "B", now=T0 + 29.5)
        _assert_lease(info.value.lease, lease.epoch, "A", T0 + 30, "a:1")
        _assert_lease(backend.read_lease(ref), lease.epoch, "A", T0 + 30, "a:1")

    def test_acquire_allowed_once_until_is_reached(self, backend: Backend) -> None:
        ref = make_ref()
        a = _acquire(backend, ref, "A", until=T0 + 30)
        b = _acquire(backend, ref, "B", now=T0 + 30, until=T0 + 60)  # until <= now
        assert b.epoch > a.epoch
        _assert_lease(backend.read_lease(ref), b.epoch, "B", T0 + 60)

    def test_acquire_after_release(self, backend: Backend) -> None:
        ref = make_ref()
        a = _acquire(backend, ref, "A", until=T0 + 30)
        backend.release(ref, a.epoch)
        released = backend.read_lease(ref)
        assert released is not None and released.owner is None and released.epoch == a.epoch
        b = _acquire(backend, ref, "B", now=T0 + 1, until=T0 + 60)
        assert b.epoch > a.epoch
        _assert_lease(backend.read_lease(ref), b.epoch, "B", T0 + 60)

    def test_renew_extends_the_lease(self, backend: Backend) -> None:
        ref = make_ref()
        a = _acquire(backend, ref, "A", until=T0 + 30)
        backend.renew(ref, a.epoch, T0 + 90)
        _assert_lease(backend.read_lease(ref), a.epoch, "A", T0 + 90)
        with pytest.raises(LeaseHeld):
            _acquire(backend, ref, "B", now=T0 + 60)

    def test_renew_and_release_check_the_epoch(self, backend: Backend) -> None:
        ref = make_ref()
        a = _acquire(backend, ref, "A", until=T0 + 30)
        with pytest.raises(Fenced):
            backend.renew(ref, a.epoch + 1, T0 + 99)
        backend.release(ref, a.epoch + 1)  # not ours: nothing happens
        _assert_lease(backend.read_lease(ref), a.epoch, "A", T0 + 30)
        with pytest.raises(Fenced):
            backend.renew(make_ref(name="never-acquired"), 1, T0 + 99)

    # -- fencing ------------------------------------------------------------------------------

    @pytest.mark.parametrize("shape", ["puts", "deletes", "delete_all", "alarm", "mixed",
                                       "lease_until"])
    def test_stale_owner_commit_is_fenced_and_lands_nothing(self, backend: Backend,
                                                            shape: str) -> None:
        ref = make_ref()
        a = _acquire(backend, ref, "A", until=T0 + 10, name="victim")
        backend.commit(ref, a.epoch, Batch(puts={b"x": b"A1", b"y": b"A1"}, alarm=T0 + 500))
        b = _acquire(backend, ref, "B", now=T0 + 11, until=T0 + 40)  # A's lease has passed
        assert b.epoch > a.epoch
        batches = {
            "puts": Batch(puts={b"x": b"A2", b"z": b"A2"}),
            "deletes": Batch(deletes={b"x", b"y"}),
            "delete_all": Batch(delete_all=True),
            "alarm": Batch(alarm=None),
            "mixed": Batch(puts={b"z": b"A2"}, deletes={b"x"}, delete_all=True, alarm=T0 + 1,
                           lease_until=T0 + 1000, active_at=T0 + 12),
            "lease_until": Batch(lease_until=T0 + 1000),
        }
        with pytest.raises(Fenced):
            backend.commit(ref, a.epoch, batches[shape])
        assert _scan_all(backend, ref) == [(b"x", b"A1"), (b"y", b"A1")]
        assert _close_to(backend.get_alarm(ref), T0 + 500)
        _assert_lease(backend.read_lease(ref), b.epoch, "B", T0 + 40)
        # B goes on undisturbed
        backend.commit(ref, b.epoch, Batch(puts={b"x": b"B1"}))
        assert backend.get_many(ref, [b"x", b"z"]) == {b"x": b"B1"}

    def test_stale_owner_cannot_renew_or_release(self, backend: Backend) -> None:
        ref = make_ref()
        a = _acquire(backend, ref, "A", until=T0 + 10)
        b = _acquire(backend, ref, "B", now=T0 + 11, until=T0 + 40)
        with pytest.raises(Fenced):
            backend.renew(ref, a.epoch, T0 + 1000)
        backend.release(ref, a.epoch)
        _assert_lease(backend.read_lease(ref), b.epoch, "B", T0 + 40)
        with pytest.raises(LeaseHeld):
            _acquire(backend, ref, "C", now=T0 + 20)

    def test_reset_owner_fences_its_own_old_epoch(self, backend: Backend) -> None:
        ref = make_ref()
        old = _acquire(backend, ref, "A")
        new = _acquire(backend, ref, "A", now=T0 + 1)
        with pytest.raises(Fenced):
            backend.commit(ref, old.epoch, Batch(puts={b"k": b"old"}))
        backend.commit(ref, new.epoch, Batch(puts={b"k": b"new"}))
        assert _scan_all(backend, ref) == [(b"k", b"new")]

    def test_commit_to_never_acquired_object_is_fenced(self, backend: Backend) -> None:
        ref = make_ref(name="never")
        with pytest.raises(Fenced):
            backend.commit(ref, 1, Batch(puts={b"k": b"v"}))
        assert _scan_all(backend, ref) == []
        assert backend.list_objects(ref.namespace) == []

    # -- delete_object ------------------------------------------------------------------------

    def test_delete_object_removes_state_alarm_and_metadata(self, backend: Backend) -> None:
        ref, other = make_ref(name="doomed"), make_ref(name="kept")
        a = _acquire(backend, ref, "A", name="doomed")
        o = _acquire(backend, other, "A", name="kept")
        backend.commit(ref, a.epoch, Batch(puts={b"k": b"v"}, alarm=T0 + 5, active_at=T0))
        backend.commit(other, o.epoch, Batch(puts={b"k": b"w"}, alarm=T0 + 6))
        backend.delete_object(ref, a.epoch)
        assert _scan_all(backend, ref) == []
        assert backend.get_many(ref, [b"k"]) == {}
        assert backend.get_alarm(ref) is None
        assert [i.ref for i in backend.list_objects(ref.namespace)] == [other]
        [(due_ref, due_at)] = backend.due_alarms(T0 + 100)
        assert due_ref == other and _close_to(due_at, T0 + 6)
        assert _scan_all(backend, other) == [(b"k", b"w")]
        # the epoch survives as a tombstone: a new owner starts above it, the old one is fenced
        again = _acquire(backend, ref, "B", now=T0 + 1000, until=T0 + 2000)
        assert again.epoch > a.epoch
        with pytest.raises(Fenced):
            backend.commit(ref, a.epoch, Batch(puts={b"zombie": b"1"}))
        assert _scan_all(backend, ref) == []
        listed = {i.ref: i for i in backend.list_objects(ref.namespace)}
        assert set(listed) == {ref, other}
        assert listed[ref].name is None and listed[ref].keys == 0 and listed[ref].alarm is None

    def test_delete_object_checks_the_epoch(self, backend: Backend) -> None:
        ref = make_ref()
        a = _acquire(backend, ref, "A", until=T0 + 10)
        backend.commit(ref, a.epoch, Batch(puts={b"k": b"v"}, alarm=T0 + 5))
        b = _acquire(backend, ref, "B", now=T0 + 11, until=T0 + 40)
        with pytest.raises(Fenced):
            backend.delete_object(ref, a.epoch)
        assert _scan_all(backend, ref) == [(b"k", b"v")]
        assert _close_to(backend.get_alarm(ref), T0 + 5)
        assert [i.ref for i in backend.list_objects(ref.namespace)] == [ref]
        backend.delete_object(ref, b.epoch)
        assert backend.list_objects(ref.namespace) == []
        assert backend.namespaces() == []
        c = _acquire(backend, ref, "C", now=T0 + 41)
        assert c.epoch > b.epoch

    # -- registry and alarm index -------------------------------------------------------------

    def test_list_objects_paginates_by_id(self, backend: Backend) -> None:
        refs = [make_ref("Pages", f"n{i}") for i in range(7)]
        for r in refs:
            _acquire(backend, r, name=r.id[:6])
        _acquire(backend, make_ref("Elsewhere", "n0"))
        expected = sorted(r.id for r in refs)
        pages: list[list[str]] = []
        after: str | None = None
        while True:
            page = backend.list_objects("Pages", after=after, limit=3)
            if not page:
                break
            pages.append([i.ref.id for i in page])
            after = page[-1].ref.id
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [i for p in pages for i in p] == expected
        assert all(i.ref.namespace == "Pages" for i in backend.list_objects("Pages"))
        # ``after`` need not be an existing ID: it is compared as a string
        mid = expected[3][:10]
        assert [i.ref.id for i in backend.list_objects("Pages", after=mid)] == \
            [x for x in expected if x > mid]
        assert backend.list_objects("Pages", after=expected[-1]) == []
        assert backend.list_objects("Nobody") == []

    def test_list_objects_fields(self, backend: Backend) -> None:
        named, anon = make_ref("Fields", "named"), make_ref("Fields", "anon")
        a = _acquire(backend, named, "A", until=T0 + 30, name="alice", address="h:1")
        _acquire(backend, anon, "B", until=T0 + 40)
        backend.commit(named, a.epoch, Batch(puts={b"k1": b"12345", b"k2": b"x"}, alarm=T0 + 7,
                                             active_at=T0 + 3))
        info = {i.ref: i for i in backend.list_objects("Fields")}
        i = info[named]
        assert (i.name, i.epoch, i.owner, i.address, i.keys) == ("alice", a.epoch, "A", "h:1", 2)
        assert _close_to(i.lease_until, T0 + 30)
        assert _close_to(i.alarm, T0 + 7)
        assert _close_to(i.last_active, T0 + 3)
        assert i.size > 0
        j = info[anon]
        assert (j.name, j.owner, j.keys, j.size, j.alarm) == (None, "B", 0, 0, None)
        # a later acquire without a name keeps the recorded name
        _acquire(backend, named, "A", now=T0 + 1, until=T0 + 31)
        assert {i.ref: i.name for i in backend.list_objects("Fields")}[named] == "alice"
        _acquire(backend, named, "A", now=T0 + 2, until=T0 + 32, name="alice2")
        assert {i.ref: i.name for i in backend.list_objects("Fields")}[named] == "alice2"

    def test_list_objects_size_counts_key_and_value_bytes(self, backend: Backend) -> None:
        ref = make_ref()
        epoch = _acquire(backend, ref).epoch
        backend.commit(ref, epoch, Batch(puts={b"k1": b"12345", b"key2": b"x" * 100}))
        [info] = backend.list_objects(ref.namespace)
        assert (info.keys, info.size) == (2, 2 + 5 + 4 + 100)
        backend.commit(ref, epoch, Batch(deletes={b"key2"}, puts={b"k1": b"1"}))
        [info] = backend.list_objects(ref.namespace)
        assert (info.keys, info.size) == (1, 3)

    def test_namespaces(self, backend: Backend) -> None:
        for ns in ("Zeta", "Alpha", "Mid"):
            _acquire(backend, make_ref(ns, "x"))
        _acquire(backend, make_ref("Alpha", "y"))
        assert backend.namespaces() == ["Alpha", "Mid", "Zeta"]

    def test_due_alarms_earliest_first_and_only_due(self, backend: Backend) -> None:
        times = {make_ref("Al", "a"): T0 + 10, make_ref("Al", "b"): T0 + 5,
                 make_ref("Bl", "c"): T0 + 20, make_ref("Bl", "d"): T0 + 7.5}
        epochs = {}
        for r, at in times.items():
            epochs[r] = _acquire(backend, r).epoch
            backend.commit(r, epochs[r], Batch(alarm=at))
        _acquire(backend, make_ref("Al", "no-alarm"))
        by_time = sorted(times, key=times.__getitem__)

        def due(now: float, limit: int = 100) -> list[ObjectRef]:
            rows = backend.due_alarms(now, limit)
            for r, at in rows:
                assert _close_to(at, times[r])
            return [r for r, _ in rows]

        assert due(T0 + 4.99) == []
        assert due(T0 + 5) == by_time[:1]  # an alarm at exactly now is due
        assert due(T0 + 10) == by_time[:3]
        assert due(T0 + 10**6) == by_time
        assert due(T0 + 10**6, limit=2) == by_time[:2]
        first = by_time[0]
        backend.commit(first, epochs[first], Batch(alarm=None))
        assert due(T0 + 10**6) == by_time[1:]
        second = by_time[1]
        backend.commit(second, epochs[second], Batch(alarm=T0 + 30))  # moved later
        times[second] = T0 + 30
        assert due(T0 + 25) == [by_time[2], by_time[3]]

    # -- durability ---------------------------------------------------------------------------

    def test_close_and_reopen_keep_everything(self, backend: Backend, backend_url: str) -> None:
        if not self.cls_of(backend_url).persistent:
            pytest.skip("backend is not persistent (capability flag persistent=False)")
        ref, other = make_ref("Durable", "one"), make_ref("Durable", "two")
        a = _acquire(backend, ref, "A", until=T0 + 30, name="one", address="h:1")
        o = _acquire(backend, other, "B", until=T0 + 40)
        model = {k: b"%d" % i for i, k in enumerate(TRICKY_KEYS)}
        backend.commit(ref, a.epoch, Batch(puts=dict(model), alarm=T0 + 8, active_at=T0 + 2))
        backend.commit(other, o.epoch, Batch(puts={b"o": b"1"}))
        backend.commit(other, o.epoch, Batch(deletes={b"o"}, puts={b"p": b"2"}))
        backend.close()
        backend.close()  # idempotent
        again = open_backend(backend_url)
        try:
            assert _scan_all(again, ref) == sorted(model.items())
            assert _scan_all(again, other) == [(b"p", b"2")]
            assert _close_to(again.get_alarm(ref), T0 + 8)
            _assert_lease(again.read_lease(ref), a.epoch, "A", T0 + 30, "h:1")
            _assert_lease(again.read_lease(other), o.epoch, "B", T0 + 40)
            info = {i.ref: i for i in again.list_objects("Durable")}
            assert info[ref].name == "one" and _close_to(info[ref].last_active, T0 + 2)
            assert again.namespaces() == ["Durable"]
            assert [r for r, _ in again.due_alarms(T0 + 100)] == [ref]
            with pytest.raises(LeaseHeld):
                _acquire(again, ref, "C", now=T0 + 29)
            # the lease and epoch survive: the owner keeps committing, the epoch keeps counting
            again.commit(ref, a.epoch, Batch(puts={b"after": b"reopen"}))
            assert again.get_many(ref, [b"after"]) == {b"after": b"reopen"}
            c = _acquire(again, ref, "C", now=T0 + 31)
            assert c.epoch > a.epoch
            with pytest.raises(Fenced):
                again.commit(ref, a.epoch, Batch(puts={b"stale": b"1"}))
        finally:
            again.close()

    def test_deleted_objects_tombstone_survives_reopen(self, backend: Backend,
                                                       backend_url: str) -> None:
        if not self.cls_of(backend_url).persistent:
            pytest.skip("backend is not persistent (capability flag persistent=False)")
        ref = make_ref()
        a = _acquire(backend, ref, "A", until=T0 + 10)
        backend.commit(ref, a.epoch, Batch(puts={b"k": b"v"}, alarm=T0 + 5))
        backend.delete_object(ref, a.epoch)
        backend.close()
        again = open_backend(backend_url)
        try:
            assert _scan_all(again, ref) == []
            assert again.get_alarm(ref) is None
            assert again.list_objects(ref.namespace) == []
            assert again.due_alarms(T0 + 100) == []
            b = _acquire(again, ref, "B", now=T0 + 11)
            assert b.epoch > a.epoch
            with pytest.raises(Fenced):
                again.commit(ref, a.epoch, Batch(puts={b"zombie": b"1"}))
            assert _scan_all(again, ref) == []
        finally:
            again.close()

    def test_state_machine(self, backend_url: str) -> None:
        """Random batches, reads, resets and reopens against a dict model."""
        persistent = self.cls_of(backend_url).persistent

        class Machine(BackendStateMachine):
            url = backend_url

        Machine.persistent = persistent
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=examples_for(backend_url, 50),
                stateful_step_count=12 if BackendURL.parse(backend_url).scheme == "s3" else 20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            ),
        )

    # -- URL options --------------------------------------------------------------------------

    def test_unknown_url_option_is_refused(self, backend_url: str) -> None:
        with pytest.raises(ConfigError, match="no_such_option"):
            open_backend(with_option(backend_url, "no_such_option=1"))

    def test_bad_sync_level_is_refused(self, backend_url: str) -> None:
        with pytest.raises(ConfigError, match="sync"):
            open_backend(with_option(backend_url, "sync=sometimes"))

    def test_sync_full_is_accepted(self, backend_url: str) -> None:
        b = open_backend(with_option(backend_url, "sync=full"))
        try:
            ref = make_ref()
            epoch = _acquire(b, ref).epoch
            b.commit(ref, epoch, Batch(puts={b"k": b"v"}))
            assert b.get_many(ref, [b"k"]) == {b"k": b"v"}
        finally:
            b.close()

    # -- several OS processes -----------------------------------------------------------------

    def test_processes_read_modify_write_one_counter(self, backend: Backend,
                                                     backend_url: str) -> None:
        """4 OS processes take turns on one object's lease, incrementing one counter.

        Leases are about as short as the work, so owners lose them mid-cycle and get fenced.
        Every increment that a process saw committed is in the final count exactly once (no
        lost update, no double apply), and no process met ``BackendUnavailable`` (e.g.
        "database is locked").
        """
        if not self.cls_of(backend_url).multi_process:
            pytest.skip("backend is not shared between processes (multi_process=False)")
        from duro.consistency._mp_worker import COUNTER_KEY

        ref = make_ref("Processes", "counter")
        # a lease about as long as the work (HOLD) lets others take over mid-cycle, so some
        # commits are fenced; s3 round trips through moto take milliseconds, so it gets more
        slow = BackendURL.parse(backend_url).scheme == "s3"
        lease, duration, hold = ("0.1", "3", "0.05") if slow else ("0.004", "1.5", "0.004")
        env = dict(os.environ)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "duro.consistency._mp_worker", backend_url,
                 ref.namespace, ref.id, f"proc-{i}", "1000", lease, duration, hold],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=env,
            )
            for i in range(self.mp_processes)
        ]
        results: list[dict[str, Any]] = []
        try:
            for p in procs:
                assert p.stdout is not None
                line = p.stdout.readline()
                if line.strip() != "ready":
                    _, err = p.communicate(timeout=60)
                    pytest.fail(f"worker did not start: {line!r}\n{err}")
            for p in procs:  # the start barrier: all open, then all go
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            for p in procs:
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        committed = sorted(v for r in results for v in r["committed"])
        summary = {r["owner"]: {k: r[k] for k in ("lease_held", "fenced", "unavailable")}
                   | {"commits": len(r["committed"])} for r in results}
        assert [m for r in results for m in r["unavailable_messages"]] == [], summary
        assert sum(r["unavailable"] for r in results) == 0, summary
        assert sum(1 for r in results if r["committed"]) >= 2, summary  # they did take turns
        raw = backend.get_many(ref, [COUNTER_KEY]).get(COUNTER_KEY)
        assert raw is not None and int(raw) == len(committed), summary
        # each acknowledged increment produced a distinct value: 1, 2, ..., n
        assert committed == list(range(1, len(committed) + 1)), summary
