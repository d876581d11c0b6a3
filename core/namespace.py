"""Namespaces (one per object class) and stubs, the way callers reach objects."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, Generic, TypeVar, cast

from duro.backends.base import MIGRATE_OWNER_PREFIX, LeaseHeld, ObjectRef
from duro.calls import encode_args, unpack
from duro.errors import BackendUnavailable, CallTimeout, InvalidObjectId, ObjectError
from duro.ids import ObjectId, id_from_name, id_from_string, new_unique_id
from duro.instance import Chain, Gone, Instance, current_call
from duro.objects import DurableObject
from duro.stats import ObjectStats

if TYPE_CHECKING:
    from duro.app import App

__all__ = ["Namespace", "ObjectSummary", "Stub", "StubOf"]

T = TypeVar("T", bound=DurableObject)

StubOf = Annotated[T, "a duro.Stub"]
"""What :meth:`Namespace.get` returns, as type checkers see it: the object class itself, so
mypy and pyright check method names, argument types and awaited result types of stub calls
(``await stub.increment("two")`` is an error). At run time it is a :class:`Stub`, which takes
only public ``async def`` methods; hooks, ``storage`` and ``ctx`` are not reachable through it."""
HOOKS: Final = frozenset({"on_activate", "alarm", "fetch", "websocket_message", "websocket_close"})
MAX_HOPS: Final = 4


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


class Elsewhere(Exception):
    """Another live process owns the object; forward the call there."""

    def __init__(self, address: str, until: float) -> None:
        super().__init__(address)
        self.address = address
        self.until = until


class Stub:
    """A handle on one object: every public ``async def`` of its class is callable here.

    Arguments and results pass by value through the codec, the same in-process and remote.
    """

    __slots__ = ("_calls", "_ns", "id")

    def __init__(self, ns: Namespace[Any], oid: ObjectId) -> None:
        self._ns = ns
        self.id = oid
        self._calls: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {}

    @property
    def name(self) -> str | None:
        """The name the ID was made from, if any."""
        return self.id.name

    def __getattr__(self, method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        try:
            return self._calls[method]
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
        self._calls[method] = call
        return call

    def __repr__(self) -> str:
        return f"<Stub {self._ns.name} {self.id.name or self.id.hex[:12]}>"


class Namespace(Generic[T]):
    """All objects of one class in one app. Made by :meth:`duro.App.namespace`."""

    def __init__(self, app: App, cls: type[T], name: str) -> None:
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
        return cast(T, Stub(self, self._check_id(oid)))

    def get_by_name(self, name: str) -> StubOf[T]:
        """``get(id_from_name(name))``."""
        return cast(T, Stub(self, self.id_from_name(name)))

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
        deadlines = self.app._deadlines
        token = deadlines.add(self.app.clock.monotonic() + self.app.config.call_timeout)
        try:
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
                    reply = await self.app._forward(where, self, oid, method, payload, chain, hops)
                    if reply is None:
                        self._owners.pop(oid.hex, None)
                        continue  # the owner was unreachable and its lease is now over
                    return reply
                assert inst is not None
            try:
                if method == "__delete__":
                    return await inst.delete()
                return await inst.call(method, payload, chain)
            except Gone:
                continue

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
        app, cfg, clock = self.app, self.app.config, self.app.clock
        ref = ObjectRef(self.name, oid.hex)
        while True:
            app._check_open()
            sent, now = clock.monotonic(), clock.time()
            try:
                lease = await app.io(
                    app.backend.acquire, ref, owner=app.owner_id, address=app.address,
                    now=now - cfg.drift_margin, until=now + cfg.lease_ttl, name=oid.name)
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
        alarm, preload = await app.io(self._load, ref)
        inst = Instance(self, oid, lease, sent, alarm, preload)
        self._instances[oid.hex] = inst
        try:
            await inst.start()
        except BaseException:
            inst.reset(ObjectError("ActivationFailed", "on_activate failed"))
            await app.io(app.backend.release, ref, lease.epoch)
            raise
        return inst

    def _load(self, ref: ObjectRef) -> tuple[float | None, list[tuple[bytes, bytes]]]:
        backend = self.app.backend
        n = self.app.config.storage_limits.preload_keys
        return backend.get_alarm(ref), backend.scan(ref, None, None, limit=n)

    def _forget(self, inst: Instance) -> None:
        if self._instances.get(inst.oid.hex) is inst:
            del self._instances[inst.oid.hex]
            self._retired.add(inst.stats)
