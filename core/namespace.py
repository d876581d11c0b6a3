"""Namespaces (one per object class) and stubs, the way callers reach objects."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Generic, TypeVar, cast

from duro.backends.base import MIGRATE_OWNER_PREFIX, AcquireOp, LeaseHeld, ObjectRef
from duro.calls import encode_args, unpack
from duro.errors import (
    BackendUnavailable,
    CallTimeout,
    ConfigError,
    InvalidObjectId,
    ObjectError,
    Overloaded,
)
from duro.ids import ObjectId, id_from_name, id_from_string, new_unique_id
from duro.instance import Instance, current_call
from duro.objects import DurableObject
from duro.signals import Chain, Elsewhere, Gone, OwnerGone
from duro.stats import ObjectStats

if TYPE_CHECKING:
    from duro.host import Host

__all__ = ["Namespace", "ObjectSummary", "Stub", "StubOf"]

T = TypeVar("T", bound=DurableObject)

StubOf = Annotated[T, "a duro.Stub"]
"""What :meth:`Namespace.get` returns, as type checkers see it: the object class itself, so
mypy and pyright check method names, argument types and awaited result types of stub calls
(``await stub.increment("two")`` is an error). At run time it is a :class:`Stub`, which takes
only public ``async def`` methods; hooks, ``storage`` and ``ctx`` are not reachable through it."""
HOOKS: Final = frozenset({"on_activate", "alarm", "fetch", "websocket_message", "websocket_close"})
MAX_HOPS: Final = 4
MAX_NAMESPACE_BYTES: Final = 200
"""Longest namespace name (UTF-8): names go into storage keys, e.g. S3's 1,024-byte keys."""


@dataclass(frozen=True)
class ObjectSummary:
    """One object in :meth:`Namespace.list_objects`."""

    id: ObjectId
    name: str | None
    last_active: float | None
    size: int
    keys: int
    alarm: float | None
    owner: str | None
    epoch: int


class Stub:
    """A handle on one object: every public ``async def`` of its class is callable here.

    Arguments and results pass by value through the codec, the same in-process and remote.
    Each namespace makes one subclass with a method per callable name, resolved once per
    class (see :func:`_stub_class`); ``__getattr__`` only serves names it does not define.
    """

    __slots__ = ("_calls", "_ns", "id")

    def __init__(self, ns: Namespace[Any], oid: ObjectId) -> None:
        self._ns = ns
        self.id = oid
        self._calls: dict[str, Callable[..., Coroutine[Any, Any, Any]]] | None = None

    @property
    def name(self) -> str | None:
        """The name the ID was made from, if any."""
        return self.id.name

    def __getattr__(self, method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        calls = self._calls
        if calls is None:
            calls = self._calls = {}
        try:
            return calls[method]
        except KeyError:
            pass
        if method not in self._ns._methods:
            cls = self._ns.cls.__name__
            why = "is private" if method.startswith("_") else "is not a public async method"
            raise AttributeError(f"{cls}.{method} {why}; a stub can call: "
                                 f"{', '.join(sorted(self._ns._methods)) or 'nothing'}")
        ns, oid = self._ns, self.id

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await ns._call(oid, method, args, kwargs)

        call.__name__ = method
        calls[method] = call
        return call

    def __repr__(self) -> str:
        return f"<Stub {self._ns.name} {self.id.name or self.id.hex[:12]}>"


def _stub_method(method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def call(self: Stub, *args: Any, **kwargs: Any) -> Any:
        return await self._ns._call(self.id, method, args, kwargs)

    call.__name__ = call.__qualname__ = method
    return call


def _stub_class(cls: type, methods: frozenset[str]) -> type[Stub]:
    """The :class:`Stub` subclass of one object class: its methods as plain class attributes,
    so a call resolves them like any method (no ``__getattr__``, no closure per stub)."""
    attrs: dict[str, Any] = {"__slots__": ()}
    for m in methods:
        if not hasattr(Stub, m):  # never shadow the stub's own attributes (id, name…)
            attrs[m] = _stub_method(m)
    return type(f"{cls.__name__}Stub", (Stub,), attrs)


class Namespace(Generic[T]):
    """All objects of one class in one app. Made by :meth:`duro.App.namespace`."""

    def __init__(self, app: Host, cls: type[T], name: str) -> None:
        if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAMESPACE_BYTES:
            raise ConfigError(f"namespace name {name[:40]!r}{'…' if len(name) > 40 else ''} must "
                              f"be 1 to {MAX_NAMESPACE_BYTES} bytes of UTF-8 (it is part of "
                              "storage keys)")
        self.app = app
        self.cls = cls
        self.name = name
        self._instances: dict[str, Instance] = {}
        self._activating: dict[str, asyncio.Future[Instance]] = {}
        self._owners: dict[str, Elsewhere] = {}  # id → where its owner was last found
        self._methods = frozenset(
            n for n, f in inspect.getmembers(cls, inspect.iscoroutinefunction)
            if not n.startswith("_") and n not in HOOKS
        )
        self._retired = ObjectStats()
        self._stub_cls = _stub_class(cls, self._methods)

    # -- IDs and stubs --------------------------------------------------------------------------

    def id_from_name(self, name: str) -> ObjectId:
        """The deterministic ID for *name* (the same in every process)."""
        return id_from_name(self.name, name)

    def new_unique_id(self) -> ObjectId:
        """A new random, unguessable ID."""
        return new_unique_id(self.name)

    def id_from_string(self, s: str) -> ObjectId:
        """Parse a 64-hex ID; raises ``InvalidObjectId`` if malformed or from another namespace."""
        return id_from_string(self.name, s)

    def _check_id(self, oid: ObjectId | str) -> ObjectId:
        if isinstance(oid, str):
            return self.id_from_string(oid)
        if not isinstance(oid, ObjectId):
            raise InvalidObjectId(f"expected an ObjectId or its 64-hex string, not {oid!r:.80}")
        if oid.namespace != self.name:
            raise InvalidObjectId(
                f"ID {oid.hex[:12]}… belongs to namespace {oid.namespace!r}, not {self.name!r}"
            )
        return oid

    def get(self, oid: ObjectId | str) -> StubOf[T]:
        """A :class:`Stub` for the object *oid* (no I/O: the object activates on the first call).

        Type checkers see it as the object class (:data:`StubOf`), so a misspelled method or a
        wrong argument type is caught before it runs.
        """
        return cast(T, self._stub_cls(self, self._check_id(oid)))

    def get_by_name(self, name: str) -> StubOf[T]:
        """``get(id_from_name(name))``."""
        return cast(T, self._stub_cls(self, self.id_from_name(name)))

    # -- registry -------------------------------------------------------------------------------

    async def list_objects(
        self, *, after: ObjectId | str | None = None, limit: int = 100
    ) -> list[ObjectSummary]:
        """Objects of this namespace by ID; pass the last ID as *after* for the next page."""
        if not isinstance(limit, int) or limit < 1:
            raise ValueError("list_objects(): limit must be a positive int")
        cursor = None if after is None else self._check_id(after).hex
        infos = await self.app.io(self.app.backend.list_objects, self.name, after=cursor,
                                  limit=limit)
        return [
            ObjectSummary(ObjectId(self.name, i.ref.id, i.name), i.name, i.last_active, i.size,
                          i.keys, i.alarm, i.owner, i.epoch)
            for i in infos
        ]

    async def delete_object(self, oid: ObjectId | str) -> None:
        """Delete the object's state, alarm and metadata atomically, on its owner."""
        await self._invoke(self._check_id(oid), "__delete__", b"", ())

    def stats(self) -> ObjectStats:
        """Counters summed over this namespace's instances (live and past)."""
        total = ObjectStats()
        total.add(self._retired)
        for inst in self._instances.values():
            total.add(inst.stats)
        return total

    # -- dispatch -------------------------------------------------------------------------------

    async def _call(self, oid: ObjectId, method: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        cur = current_call.get()
        chain: Chain = () if cur is None else cur[1]
        if (self.name, oid.hex) in chain:
            raise ObjectError("CallCycle", f"call cycle: {self.name} {oid.name or oid.hex[:12]} "
                              f"is already handling a call in this chain")
        payload = encode_args(method, args, kwargs)
        if cur is not None:
            await cur[0].output_ready()  # an outgoing call is an output
        app = self.app
        deadlines = app._deadlines
        token = deadlines.add(app.clock.monotonic() + app.config.call_timeout)
        try:
            inst = self._instances.get(oid.hex)
            reply = None
            if inst is not None and app._state == "open":
                with contextlib.suppress(Gone):  # the object is live here: no dispatch loop
                    reply = await inst.enqueue(method, payload, chain)
            if reply is None:
                reply = await self._invoke(oid, method, payload, chain)
        except asyncio.CancelledError:
            if deadlines.expired(token):
                raise CallTimeout(
                    f"{self.name}.{method} did not answer within "
                    f"{self.app.config.call_timeout} s; its outcome is unknown") from None
            raise
        finally:
            deadlines.discard(token)
        return unpack(reply)

    async def _invoke(self, oid: ObjectId, method: str, payload: bytes, chain: Chain,
                      hops: int = 0) -> bytes:
        """Run a call on the owner of *oid*: here, or forwarded to the process that owns it."""
        self.app._check_open()
        refused_at: float | None = None
        while True:
            inst = self._instances.get(oid.hex)
            if inst is None or not inst.accepting:
                if inst is not None:
                    await inst.closed.wait()
                # Where the owner was last seen, while its lease then lasted: forwarding there
                # skips a lease attempt (a backend write) per call. A stale hint is harmless -
                # the receiver runs this same logic - and an unreachable owner drops it.
                where = self._owners.get(oid.hex)
                if where is not None and where.until <= self.app.clock.time():
                    where = None
                if where is None:
                    try:
                        inst = await self._activate(oid)
                    except Elsewhere as found:
                        where = found
                        if len(self._owners) > 10_000:
                            self._owners.clear()
                        self._owners[oid.hex] = found
                if where is not None:
                    if hops >= MAX_HOPS:
                        raise BackendUnavailable(
                            f"call to {self.name} {oid.hex[:12]}… was forwarded {hops} times "
                            "without reaching its owner") from None
                    try:
                        reply = await self.app._forward(where, self.name, oid, method,
                                                        payload, chain, hops)
                    except OwnerGone as gone:
                        self._owners.pop(oid.hex, None)
                        refused_at = await self._owner_gone(oid, gone, refused_at)
                        continue  # its lease is over (or was stale): take over or find it
                    if reply is None:
                        self._owners.pop(oid.hex, None)
                        continue  # the owner is handing the object over
                    self._retired.forwarded += 1
                    return reply
                assert inst is not None
            # An owner that lost its lease says so (in inst.call), rather than "overloaded".
            if self.app.shedding and method != "__delete__" and not inst.lease_lost():
                raise Overloaded("this process is renewing its leases late; it refuses new "
                                 "calls until they catch up (the call was not started)",
                                 not_run=True)
            try:
                if method == "__delete__":
                    return await inst.delete()
                return await inst.call(method, payload, chain)
            except Gone:
                continue

    async def _owner_gone(self, oid: ObjectId, gone: OwnerGone, since: float | None) -> float:
        """An owner refused the call: wait for its lease up to ``failover_wait``, else fail.

        Returns when the lease is over, so the caller takes over; raises
        :class:`BackendUnavailable` with ``retry_after`` = the time the lease has left (whole
        seconds, rounded down, at least 1) once the wait is used up. The call was never sent.
        """
        cfg, clock = self.app.config, self.app.clock
        now = clock.monotonic()
        since = now if since is None else since
        left = gone.until + cfg.drift_margin - clock.time()
        if left <= 0:
            return since
        budget = cfg.failover_wait - (now - since)
        if budget <= 0:
            err = BackendUnavailable(
                f"the owner of {self.name} {oid.name or oid.hex[:12]} at {gone.address} refuses "
                f"connections; its lease ends in {left:.1f} s, then another process takes over "
                "(this call was not sent)", not_run=True)
            err.retry_after = float(max(1, math.floor(left)))
            raise err
        await clock.sleep(min(left, budget, 1.0))
        return since

    async def _activate(self, oid: ObjectId) -> Instance:
        pending = self._activating.get(oid.hex)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        self._activating[oid.hex] = fut
        try:
            inst = await self._do_activate(oid)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        else:
            fut.set_result(inst)
            return inst
        finally:
            del self._activating[oid.hex]

    async def _do_activate(self, oid: ObjectId) -> Instance:
        """Acquire the lease and load the object's state in one op of the App's committer.

        Activation costs no synced commit of its own: the acquire shares a group transaction
        with whatever other objects queued meanwhile (their acquires and batches), and the
        same op reads the alarm and the preload rows after the epoch bump, inside that
        transaction (one executor hop, no separate read). Safety:

        - the object exists only once that transaction has committed, so no turn runs, and
          no output leaves, before the lease is established;
        - the reads belong to the new epoch: they are the state the epoch bump saw, and a
          stale owner's later write is fenced; a failed or fenced group fails the activation
          and nothing was served from what it read;
        - on SQLite at sync=full a group of only acquires and releases is not fsynced by
          itself (see the SQL backend): the object's first synced commit covers it, and a
          crash that loses it ends every process on the host that could use it.
        """
        app, cfg, clock = self.app, self.app.config, self.app.clock
        ref = ObjectRef(self.name, oid.hex)
        while True:
            app._check_open()
            sent, now = clock.monotonic(), clock.time()
            try:
                got = await app.committer.submit(AcquireOp(
                    ref, app.owner_id, app.address, now - cfg.drift_margin, now + cfg.lease_ttl,
                    oid.name, load=cfg.storage_limits.preload_keys))
                break
            except LeaseHeld as held:
                cur = held.lease
                if cur.owner and cur.owner.startswith(MIGRATE_OWNER_PREFIX):
                    raise BackendUnavailable(
                        f"{self.name} {oid.name or oid.hex[:12]} is sealed by `duro migrate` "
                        f"(lease {cur.owner}): this store was migrated; point the app at the "
                        "new store, or run `duro unseal --backend URL` to write here again"
                    ) from None
                if cur.address and cur.address != app.address and app.address is not None:
                    raise Elsewhere(cur.address, cur.until) from None
                # Nobody to forward to: wait for the holder's lease to end.
                await clock.sleep(min(max(cur.until + cfg.drift_margin - now, 0.01), 1.0))
        lease, alarm, preload = got.lease, got.alarm, got.rows
        inst = Instance(self, oid, lease, sent, alarm, preload)
        self._instances[oid.hex] = inst
        try:
            await inst.start()
        except BaseException:
            inst.reset(ObjectError("ActivationFailed", "on_activate failed"))
            await app.io(app.backend.release, ref, lease.epoch)
            raise
        return inst

    def _forget(self, inst: Instance) -> None:
        if self._instances.get(inst.oid.hex) is inst:
            del self._instances[inst.oid.hex]
            self._retired.add(inst.stats)
