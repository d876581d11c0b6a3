"""What each runtime layer needs of the one above it, as protocols (dependency inversion).

The runtime (storage, objects, instances, namespaces, WebSocket hubs) never imports the
:class:`~duro.app.App`: it is handed a :class:`Host`, which the App satisfies. Instances reach
their namespace through :class:`Home`. Runtime events (``__fetch__``, WebSocket messages) run
through the host's ``events`` table, which the App composes, so the runtime never names HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from duro.backends.base import Backend, WriteOp
    from duro.clock import Clock
    from duro.deadlines import Deadlines
    from duro.ids import ObjectId
    from duro.settings import AppConfig
    from duro.signals import Chain, Elsewhere

__all__ = ["Commits", "EventHandler", "Home", "Host"]

EventHandler = Callable[[Any, bytes], Awaitable[Any]]
"""Runs a runtime event (``__fetch__``, ``__ws_message__``…) as a turn: ``(instance, payload)``."""


class Commits(Protocol):
    """The App's group committer: one backend write for many objects' ops."""

    def submit(self, op: WriteOp) -> asyncio.Future[Any]:
        """Queue *op*; the future resolves once it is durable (or fails)."""
        ...


class Host(Protocol):
    """What namespaces, instances and hubs use of their App."""

    @property
    def config(self) -> AppConfig: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def backend(self) -> Backend: ...
    @property
    def executor(self) -> Executor: ...
    @property
    def committer(self) -> Commits: ...
    @property
    def env(self) -> Any: ...
    @property
    def owner_id(self) -> str: ...
    @property
    def address(self) -> str | None: ...
    @property
    def shedding(self) -> bool: ...
    @property
    def events(self) -> Mapping[str, EventHandler]: ...
    @property
    def _websockets(self) -> Any: ...
    @property
    def _deadlines(self) -> Deadlines: ...
    @property
    def _state(self) -> str: ...

    def _check_open(self) -> None: ...

    async def io(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def lease_io(self, fn: Any, *args: Any) -> Any: ...

    async def _forward(self, where: Elsewhere, ns: str, oid: ObjectId, method: str,
                       payload: bytes, chain: Chain, hops: int) -> bytes | None: ...


class Home(Protocol):
    """What an instance uses of its namespace."""

    @property
    def app(self) -> Host: ...
    @property
    def name(self) -> str: ...
    @property
    def cls(self) -> type[Any]: ...

    def _forget(self, inst: Any) -> None: ...
