"""The base class of durable objects, its context (``ctx``) and alarm info."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from duro.errors import ObjectReset

if TYPE_CHECKING:
    from duro.host import Host
    from duro.ids import ObjectId
    from duro.storage import Storage

__all__ = ["AlarmInfo", "Context", "DurableObject"]

T = TypeVar("T")


@dataclass(frozen=True)
class AlarmInfo:
    """Passed to :meth:`DurableObject.alarm`: how many times this alarm was retried."""

    retry_count: int = 0

    @property
    def is_retry(self) -> bool:
        """Whether an earlier run of this alarm failed."""
        return self.retry_count > 0


class Activation(Protocol):
    """What a :class:`Context` uses of the instance running its object."""

    @property
    def oid(self) -> ObjectId: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def app(self) -> Host: ...

    async def block_concurrency_while(self, awaitable: Awaitable[T]) -> T:
        """Run *awaitable* with no other event delivered."""
        ...

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Keep the instance alive until *awaitable* completes."""
        ...

    def reset(self, exc: BaseException) -> None:
        """Drop held outputs; the next call re-activates the object."""
        ...


class Context:
    """The object's view of its runtime (``self.ctx``), named after Cloudflare's ``ctx``."""

    def __init__(self, inst: Activation) -> None:
        self._inst = inst

    @property
    def id(self) -> ObjectId:
        """This object's ID."""
        return self._inst.oid

    @property
    def storage(self) -> Storage:
        """This object's storage."""
        return self._inst.storage

    def now(self) -> float:
        """The App's wall-clock time, in seconds since the epoch.

        Read time here rather than from ``time.time()`` or ``datetime.now()``: it is the clock
        that leases and alarms run on, so a test's manual clock (``duro_clock``) moves it, and
        ``storage.set_alarm(self.ctx.now() + 60)`` fires after ``duro_clock.advance(60)``.
        """
        return self._inst.app.clock.time()

    async def block_concurrency_while(self, awaitable: Awaitable[T]) -> T:
        """Run *awaitable* while no other event is delivered to this object.

        If it raises, the object is reset (its outputs are dropped) and the error propagates.
        """
        return await self._inst.block_concurrency_while(awaitable)

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Keep the object alive (not evicted) until *awaitable* completes."""
        self._inst.wait_until(awaitable)

    def abort(self, reason: str = "aborted") -> None:
        """Reset the object now: pending outputs are dropped; the next call re-activates it."""
        exc = ObjectReset(f"object aborted: {reason}")
        self._inst.reset(exc)
        raise exc

    def accept_websocket(self, ws: Any, tags: tuple[str, ...] | list[str] = ()) -> None:
        """Accept a hibernatable WebSocket (requires ``duro serve``)."""
        hub = self._inst.app._websockets
        if hub is None:
            raise RuntimeError("WebSockets need the HTTP server: run the app with `duro serve`")
        hub.accept(self._inst, ws, tuple(tags))

    def get_websockets(self, tag: str | None = None) -> list[Any]:
        """The accepted WebSockets of this object, optionally only those with *tag*."""
        hub = self._inst.app._websockets
        return [] if hub is None else hub.sockets(self._inst, tag)

    def get_tags(self, ws: Any) -> list[str]:
        """The tags *ws* was accepted with."""
        return list(ws.tags)

    def set_websocket_auto_response(self, request: str | None = None,
                                    response: str | None = None) -> None:
        """Answer the text message *request* with *response* without waking the object.

        The pair outlives eviction (while the object's sockets stay open); no arguments clear it.
        """
        hub = self._inst.app._websockets
        if hub is None:
            raise RuntimeError("WebSockets need the HTTP server: run the app with `duro serve`")
        hub.set_auto_response(self._inst, request, response)


class DurableObject:
    """Subclass this to define a durable object.

    Every public ``async def`` method is callable through a stub. Inside, ``self.id``,
    ``self.ctx``, ``self.storage`` and ``self.env`` are available (also in ``__init__``).
    Optional hooks: :meth:`on_activate`, :meth:`alarm`, ``fetch(request)`` (HTTP) and
    ``websocket_message`` / ``websocket_close`` (hibernatable WebSockets).
    """

    ctx: Context
    env: Any

    @property
    def id(self) -> ObjectId:
        """This object's ID."""
        return self.ctx.id

    @property
    def storage(self) -> Storage:
        """This object's transactional key-value storage."""
        return self.ctx.storage

    async def on_activate(self) -> None:
        """Runs once per activation, before the first event; nothing interleaves with it."""

    async def alarm(self, info: AlarmInfo) -> None:
        """Runs when the alarm set with ``storage.set_alarm`` fires (at least once)."""


def _instantiate(cls: type[DurableObject], ctx: Context, env: Any) -> DurableObject:
    obj = cls.__new__(cls)
    obj.ctx = ctx
    obj.env = env
    obj.__init__()  # type: ignore[misc]
    return obj

