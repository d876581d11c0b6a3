"""The :class:`App`: one process's runtime for durable objects on one backend."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from duro.backends.base import Backend, LeaseHeld, ObjectRef
from duro.backends.registry import open_backend
from duro.clock import Clock, SystemClock
from duro.config import anchor, resolve_backend
from duro.deadlines import Deadlines
from duro.errors import ConfigError, DuroError, ObjectReset
from duro.instance import Chain
from duro.namespace import Elsewhere, Namespace
from duro.objects import DurableObject
from duro.stats import ObjectStats
from duro.storage import StorageLimits

if TYPE_CHECKING:
    from duro.ids import ObjectId
    from duro.transport import Transport

__all__ = ["App", "AppClosing", "AppConfig"]

log = logging.getLogger("duro")
T = TypeVar("T")
D = TypeVar("D", bound=DurableObject)


UNSAFE_FLAGS = frozenset({"skip_lease_check", "ack_before_durable", "drop_coalesced_write"})


class AppClosing(ObjectReset):
    """The App is not open: a call was refused before it started."""


@dataclass(frozen=True)
class AppConfig:
    """Tunables of an :class:`App` (all durations in seconds)."""

    lease_ttl: float = 10.0
    drift_margin: float = 1.0
    idle_timeout: float = 60.0
    max_queue: int = 1000
    call_timeout: float = 60.0
    drain_timeout: float = 30.0
    """How long closing the App waits for running turns before cutting them off."""
    alarm_poll_interval: float = 1.0
    alarm_retry_base: float = 2.0
    alarm_max_retries: int = 6
    io_threads: int = 32
    storage_limits: StorageLimits = field(default_factory=StorageLimits)
    cluster_secret: str | None = field(
        default_factory=lambda: os.environ.get("DURO_CLUSTER_SECRET") or None
    )
    """Shared secret that processes present when they forward calls to each other (env
    ``DURO_CLUSTER_SECRET``); without it, anyone who reaches the listen address may call."""
    unsafe: frozenset[str] = frozenset()
    """Test-only mutations that break duro on purpose, so the consistency suite can prove it
    catches them: ``skip_lease_check``, ``ack_before_durable``, ``drop_coalesced_write``."""

    def __post_init__(self) -> None:
        bad = set(self.unsafe) - UNSAFE_FLAGS
        if bad:
            raise ConfigError(
                f"unknown unsafe flag(s) {sorted(bad)}; known: {sorted(UNSAFE_FLAGS)}"
            )
        if self.lease_ttl <= self.drift_margin:
            raise ConfigError("lease_ttl must be greater than drift_margin")


class App:
    """Hosts durable objects on one backend; use as ``async with duro.App(...) as app``.

    *backend* is a URL (or an open :class:`~duro.backends.Backend`); without it the URL comes
    from ``DURO_BACKEND``, the nearest ``duro.toml`` or ``[tool.duro]`` in ``pyproject.toml``
    (current directory, then its parents), or the embedded default ``sqlite:///.duro/duro.db``
    (see :mod:`duro.config`); ``app.url_source`` says which. The tunables of :class:`AppConfig`
    (``lease_ttl``, ``call_timeout``, ``unsafe``…) are keyword arguments (unset ones keep their
    defaults), or pass a whole ``config=``. *listen* (``"127.0.0.1:0"`` by default; ``None``
    to disable) is where other processes forward calls for objects this process owns;
    *advertise* is the address they should use, if different. Leaving the ``async with`` stops
    taking calls, drains in-flight turns and flushes, and releases leases.
    """

    def __init__(
        self,
        backend: str | Backend | None = None,
        *,
        listen: str | None = "127.0.0.1:0",
        advertise: str | None = None,
        clock: Clock | None = None,
        env: Any = None,
        config: AppConfig | None = None,
        lease_ttl: float | None = None,
        drift_margin: float | None = None,
        idle_timeout: float | None = None,
        max_queue: int | None = None,
        call_timeout: float | None = None,
        drain_timeout: float | None = None,
        alarm_poll_interval: float | None = None,
        alarm_retry_base: float | None = None,
        alarm_max_retries: int | None = None,
        io_threads: int | None = None,
        storage_limits: StorageLimits | None = None,
        cluster_secret: str | None = None,
        unsafe: frozenset[str] | None = None,
    ) -> None:
        given = locals()
        options = {f.name: given[f.name] for f in fields(AppConfig)
                   if given.get(f.name) is not None}
        if isinstance(backend, Backend):
            self._backend_obj: Backend | None = backend
            self._url, self.url_source = backend.url.raw, "an open Backend"
        else:
            self._backend_obj = None
            resolved = resolve_backend(backend)
            self._url, self.url_source = resolved.url, resolved.source
        if options and config is not None:
            raise ConfigError("pass either config= or individual options, not both")
        self.config = AppConfig(**options) if config is None else config
        self.clock: Clock = clock or SystemClock()
        self.env = env
        self.owner_id = uuid.uuid4().hex
        self.listen = listen
        self.address: str | None = None
        self._advertise = advertise
        self._namespaces: dict[str, Namespace[Any]] = {}
        self._state = "new"
        self._executor: ThreadPoolExecutor | None = None
        self._backend: Backend | None = None
        self._transport: Transport | None = None
        self._background: asyncio.Task[None] | None = None
        self._websockets: Any = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._deadlines = Deadlines()
        self._http: Any = None  # a duro.server.Server when serving HTTP (duro serve)

    @property
    def url(self) -> str:
        """The backend URL (setting it, as ``duro serve --backend`` does, makes its source
        ``"argument"``)."""
        return self._url

    @url.setter
    def url(self, value: str) -> None:
        self._url, self.url_source = value, "argument"

    @property
    def backend_description(self) -> str:
        """``URL (from SOURCE)`` with a file path made absolute, for banners and logs."""
        return f"{anchor(self._url, Path.cwd())} (from {self.url_source})"

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the backend, start listening, start lease renewal, eviction and alarms."""
        if self._state != "new":
            raise DuroError(f"this App is {self._state}; make a new one")
        self._state = "starting"
        self._executor = ThreadPoolExecutor(self.config.io_threads, thread_name_prefix="duro-io")
        try:
            if self._backend_obj is not None:
                self._backend = self._backend_obj
            else:
                log.info("duro: backend %s", self.backend_description,
                         extra={"event": "backend", "url": self._url, "source": self.url_source})
                self._backend = await self.io(open_backend, self.url)
            if self.listen is not None:
                from duro.transport import Transport

                self._transport = Transport(self)
                self.address = await self._transport.start(self.listen, self._advertise)
        except BaseException:
            await self._shutdown()
            raise
        self._state = "open"
        self._background = asyncio.ensure_future(self._maintain())

    async def close(self) -> None:
        """Stop taking calls, drain in-flight turns and flushes, release leases, close."""
        if self._state in ("closing", "closed", "new"):
            self._state = "closed"
            return
        self._state = "closing"
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)
        if self._http is not None:
            await self._http.closing()  # WebSockets close with 1012: clients reconnect elsewhere
        instances = [i for ns in self._namespaces.values() for i in ns._instances.values()]
        evictions = [asyncio.ensure_future(i.evict()) for i in instances]
        if evictions:
            _, stuck = await asyncio.wait(evictions, timeout=self.config.drain_timeout)
            for inst in instances:  # turns that outlived the drain timeout are cut off
                if not inst.closed.is_set():
                    inst.reset(ObjectReset("the App closed before this call finished"))
                    inst.cancel_worker()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._shutdown()
        self._state = "closed"

    async def _shutdown(self) -> None:
        if self._transport is not None:
            await self._transport.stop()
        if self._backend is not None and self._backend_obj is None:
            await self.io(self._backend.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _check_open(self) -> None:
        if self._state != "open":
            raise AppClosing(f"the App is {self._state}; it takes no calls")

    @property
    def backend(self) -> Backend:
        """The open backend."""
        if self._backend is None:
            raise DuroError("the App is not started: use `async with duro.App(...) as app`")
        return self._backend

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Threads that run blocking backend calls."""
        assert self._executor is not None
        return self._executor

    async def io(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking backend call in the I/O threads."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(fn, *args, **kwargs)
        )

    # -- namespaces -----------------------------------------------------------------------------

    def namespace(self, cls: type[D], name: str | None = None) -> Namespace[D]:
        """The namespace of *cls* (named after the class unless *name* is given)."""
        if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
            raise TypeError(f"{cls!r} is not a duro.DurableObject subclass")
        ns_name = name or cls.__name__
        existing = self._namespaces.get(ns_name)
        if existing is not None:
            if existing.cls is not cls:
                raise ConfigError(f"namespace {ns_name!r} is already bound to "
                                  f"{existing.cls.__qualname__}")
            return existing
        ns: Namespace[D] = Namespace(self, cls, ns_name)
        self._namespaces[ns_name] = ns
        return ns

    def stats(self) -> dict[str, ObjectStats]:
        """Counters per namespace (turns, cache hits/misses, flushes, batch sizes, resets…)."""
        return {name: ns.stats() for name, ns in self._namespaces.items()}

    # -- forwarding -----------------------------------------------------------------------------

    async def _forward(self, where: Elsewhere, ns: Namespace[Any], oid: ObjectId, method: str,
                       payload: bytes, chain: Chain, hops: int) -> bytes | None:
        """Send a call to the owning process; ``None`` if it is gone and its lease has ended."""
        from duro.transport import OwnerUnreachable

        assert self._transport is not None
        try:
            reply = await self._transport.forward(where.address, ns.name, oid, method, payload,
                                                  chain, hops + 1)
        except OwnerUnreachable as gone:
            if gone.moving:  # the owner is closing: it releases the lease in a moment
                await self.clock.sleep(0.02)
                return None
            # A dead owner cannot be asked; its lease must run out before anyone takes over.
            wait = where.until + self.config.drift_margin - self.clock.time()
            await self.clock.sleep(min(max(wait, 0.01), 1.0))
            return None
        ns._retired.forwarded += 1
        return reply

    async def _serve_forwarded(self, ns_name: str, hex_id: str, name: str | None, method: str,
                               payload: bytes, chain: Chain, hops: int) -> bytes:
        """Handle a call another process forwarded here."""
        ns = self._namespaces.get(ns_name)
        if ns is None:
            raise ConfigError(f"this process has no namespace {ns_name!r}")
        oid = ns.id_from_string(hex_id)
        if name is not None:
            oid = ns.id_from_name(name)
        return await ns._invoke(oid, method, payload, chain, hops)

    # -- background work ------------------------------------------------------------------------

    async def _maintain(self) -> None:
        cfg, clock = self.config, self.clock
        tick = max(0.01, min(cfg.lease_ttl / 4, cfg.alarm_poll_interval, 1.0))
        since_alarm_poll = cfg.alarm_poll_interval
        while True:
            await clock.sleep(tick)
            try:
                now = clock.monotonic()
                self._deadlines.sweep(now)
                for ns in list(self._namespaces.values()):
                    for inst in list(ns._instances.values()):
                        if not inst.accepting:
                            continue
                        if inst.idle and now - inst.last_active >= cfg.idle_timeout:
                            evicting = asyncio.ensure_future(inst.evict())
                            self._tasks.add(evicting)
                            evicting.add_done_callback(self._tasks.discard)
                        elif inst.lease_expiring(cfg.lease_ttl / 2):
                            inst._renew_soon()
                since_alarm_poll += tick
                if since_alarm_poll >= cfg.alarm_poll_interval:
                    since_alarm_poll = 0.0
                    await self._poll_alarms()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("duro background maintenance failed; retrying")

    async def _poll_alarms(self) -> None:
        """Activate objects with due alarms that nobody here owns (their timer fires them)."""
        due: list[tuple[ObjectRef, float]] = await self.io(self.backend.due_alarms,
                                                           self.clock.time(), 100)
        for ref, _at in due:
            ns = self._namespaces.get(ref.namespace)
            if ns is None or ref.id in ns._instances or ref.id in ns._activating:
                continue
            lease = await self.io(self.backend.read_lease, ref)
            if lease is not None and lease.owner not in (None, self.owner_id) and (
                lease.until + self.config.drift_margin > self.clock.time()
            ):
                continue  # a live owner elsewhere fires it
            try:
                await ns._activate(ns.id_from_string(ref.id))
            except (Elsewhere, LeaseHeld, DuroError):
                continue
