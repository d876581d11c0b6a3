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

What is covered: every check of the contract stage that ``duro check`` runs first (one test
per check, the same functions: :mod:`duro.consistency.contract`, by contract area: reads,
ranges, keys, values, isolation, batches, alarms, leases, fencing, registry, durability,
atomicity for thread and process readers, concurrency, errors), plus a Hypothesis state machine
against a dict model and the URL-option tests.

Times passed to leases are explicit arguments, so the tests need no clock except in the
multi-process tests, which use the wall clock as the runtime does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

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
    ObjectRef,
    backend_class,
    open_backend,
)
from duro.consistency.contract import CHECKS, T0, TRICKY_KEYS, CheckContext, ContractCheck
from duro.consistency.contract.context import close_to, model_scan
from duro.errors import ConfigError, Fenced
from duro.ids import id_from_name

__all__ = [
    "T0",
    "TRICKY_KEYS",
    "BackendConformance",
    "BackendStateMachine",
    "examples_for",
    "make_ref",
    "with_option",
]

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
             until: float = T0 + 60) -> Lease:
    return backend.acquire(ref, owner=owner, address=None, now=now, until=until)


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
        assert got == model_scan(obj.data, lo, hi, reverse, limit)

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
            assert self.backend.scan(obj.ref, None, None) == sorted(obj.data.items())
            assert close_to(self.backend.get_alarm(obj.ref), obj.alarm)


# -- the suite --------------------------------------------------------------------------------


class BackendConformance:
    """Abstract conformance tests; subclass with a ``backend_url`` fixture to run them.

    Besides the Hypothesis state machine and the URL-option tests below, the class has one
    ``test_<name>`` per check of the contract stage (:data:`duro.consistency.contract.CHECKS`),
    the same functions ``duro check`` runs as its stage 1.
    """

    depth: ClassVar[str] = "default"
    """Loop counts of the contract checks: ``quick``, ``default`` or ``thorough``."""

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


def _contract_test(check: ContractCheck) -> Callable[[BackendConformance, str], None]:
    def test(self: BackendConformance, backend_url: str) -> None:
        ctx = CheckContext(backend_url, depth=self.depth)
        try:
            reason = check.skip_reason(ctx)
            if reason is not None:
                pytest.skip(reason)
            ctx.next_check()
            check.fn(ctx)
        finally:
            ctx.close_backend()

    test.__name__ = test.__qualname__ = f"test_{check.name}"
    test.__doc__ = check.fn.__doc__
    return test


for _check in CHECKS:
    setattr(BackendConformance, f"test_{_check.name}", _contract_test(_check))
