"""The :class:`App`: one process's runtime for durable objects on one backend."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from duro import tracing
from duro.backends.base import Backend, LeaseHeld, ObjectRef
from duro.backends.registry import open_backend
from duro.clock import Clock, SystemClock
from duro.cluster_auth import derive_key
from duro.committer import Committer
from duro.config import anchor, resolve_backend
from duro.deadlines import Deadlines
from duro.errors import ConfigError, DuroError, ObjectReset
from duro.fetch import EVENTS as FETCH_EVENTS
from duro.host import EventHandler
from duro.namespace import Namespace
from duro.objects import DurableObject
from duro.settings import AppConfig, StorageLimits
from duro.signals import AppClosing, Chain, Elsewhere, OwnerGone, OwnerUnreachable
from duro.stats import ObjectStats
from duro.transport import Transport
from duro.websockets import EVENTS as WEBSOCKET_EVENTS

if TYPE_CHECKING:
    from duro.ids import ObjectId

__all__ = ["App", "AppClosing", "AppConfig"]

log = logging.getLogger("duro")
T = TypeVar("T")
D = TypeVar("D", bound=DurableObject)


class App:
    """Hosts durable objects on one backend; use as ``async with duro.App(...) as app``.

    *backend* is a URL (or an open :class:`~duro.backends.Backend`); without it the URL comes
    from ``DURO_BACKEND``, the nearest ``duro.toml`` or ``[tool.duro]`` in ``pyproject.toml``
    (current directory, then its parents), or the embedded default ``sqlite:///.duro/duro.db``
    (see :mod:`duro.config`); ``app.url_source`` says which. The tunables of :class:`AppConfig`
    (``lease_ttl``, ``call_timeout``, ``unsafe``…) are keyword arguments (unset ones keep their
    defaults), or pass a whole ``config=``. *listen* (``"127.0.0.1:0"`` by default; ``None``
    to disable) is the cluster listener, where other processes sharing the backend forward
    calls for objects this process owns (authenticated; not the public HTTP surface, and not
    opened for a backend no other process can share, such as ``memory://``); *advertise*
    (``host`` or ``host:port``) is the address they should use, if different. An unspecified
    address (``0.0.0.0``, ``::``) is never advertised. Leaving the ``async with`` stops
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
        forward_connections: int | None = None,
        forward_queue: int | None = None,
        forward_wait: float | None = None,
        shed_load: bool | None = None,
        failover_wait: float | None = None,
        storage_limits: StorageLimits | None = None,
        cluster_secret: str | None = None,
        cluster_max_body_bytes: int | None = None,
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
        self._lease_executor: ThreadPoolExecutor | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.shedding = False
        """Whether a lease renewal ran late: new calls are refused with ``Overloaded``."""
        self._backend: Backend | None = None
        self._transport: Transport | None = None
        self._background: asyncio.Task[None] | None = None
        self._websockets: Any = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._deadlines = Deadlines()
        self.committer = Committer(self)
        self.events: dict[str, EventHandler] = {**FETCH_EVENTS, **WEBSOCKET_EVENTS}
        """Runtime events that run as turns of an object (``__fetch__``, WebSocket events)."""
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
        # Lease renewals have their own thread: they never queue behind commits and reads.
        self._lease_executor = ThreadPoolExecutor(1, thread_name_prefix="duro-lease")
        try:
            if self._backend_obj is not None:
                self._backend = self._backend_obj
            else:
                log.info("duro: backend %s", self.backend_description,
                         extra={"event": "backend", "url": self._url, "source": self.url_source})
                self._backend = await self.io(open_backend, self.url)
            if self.listen is not None and self._backend.multi_process:
                self._transport = Transport(self, await self._cluster_key(),
                                            authenticate="skip_cluster_auth" not in
                                            self.config.unsafe)
                self.address = await self._transport.start(self.listen, self._advertise)
        except BaseException:
            await self._shutdown()
            raise
        self._state = "open"
        self._background = asyncio.ensure_future(self._maintain())
        self._keeper = asyncio.ensure_future(self._keep_leases())

    async def close(self) -> None:
        """Stop taking calls, drain in-flight turns and flushes, release leases, close."""
        if self._state in ("closing", "closed", "new"):
            self._state = "closed"
            return
        self._state = "closing"
        for task in (self._background, self._keeper):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
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
        self.committer.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._lease_executor is not None:
            self._lease_executor.shutdown(wait=False)

    async def _cluster_key(self) -> bytes:
        """The key peers sign cluster calls with: the configured secret, else the backend's."""
        if self.config.cluster_secret is not None:
            return derive_key(self.config.cluster_secret.encode())
        return derive_key(await self.io(self.backend.cluster_key, secrets.token_bytes(32)))

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

    @property
    def lease_executor(self) -> Executor:
        """The thread that runs lease renewals (nothing else queues there)."""
        assert self._lease_executor is not None
        return self._lease_executor

    async def lease_io(self, fn: Any, *args: Any) -> Any:
        """Run a blocking lease call (renewal) in the lease thread."""
        return await asyncio.get_running_loop().run_in_executor(self.lease_executor, fn, *args)

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

    async def _forward(self, where: Elsewhere, ns: str, oid: ObjectId, method: str,
                       payload: bytes, chain: Chain, hops: int) -> bytes | None:
        """Send a call to the owning process; ``None`` if it is handing the object over.

        An owner that refuses connections raises :class:`OwnerGone` (the call was not sent).
        """
        assert self._transport is not None
        with tracing.forward_span(ns, oid, method, where.address) as span:
            try:
                reply = await self._transport.forward(where.address, ns, oid, method,
                                                      payload, chain, hops + 1)
            except OwnerUnreachable as gone:
                if gone.moving:  # the owner is closing: it releases the lease in a moment
                    span.reply(None)
                    await self.clock.sleep(0.02)
                    return None
                raise OwnerGone(where.address, where.until) from None
            span.reply(reply)
        return reply

    async def _serve_forwarded(self, ns_name: str, hex_id: str, name: str | None, method: str,
                               payload: bytes, chain: Chain, hops: int,
                               trace: Any = None) -> bytes:
        """Handle a call another process forwarded here (*trace*: its trace context, if any)."""
        ns = self._namespaces.get(ns_name)
        if ns is None:
            raise ConfigError(f"this process has no namespace {ns_name!r}")
        oid = ns.id_from_string(hex_id)
        if name is not None:
            oid = ns.id_from_name(name)
        with tracing.inbound(trace):
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
                        # A lost lease is not released (storage is unreachable): the
                        # instance stays, refusing its calls at once, until a renewal.
                        if (inst.idle and now - inst.last_active >= cfg.idle_timeout
                                and not inst.lease_lost(now)):
                            evicting = asyncio.ensure_future(inst.evict())
                            self._tasks.add(evicting)
                            evicting.add_done_callback(self._tasks.discard)
                since_alarm_poll += tick
                if since_alarm_poll >= cfg.alarm_poll_interval:
                    since_alarm_poll = 0.0
                    await self._poll_alarms()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("duro background maintenance failed; retrying")

    async def _keep_leases(self) -> None:
        """Renew leases on their own timer, apart from maintenance and alarm polls.

        Leases half used are renewed together, in one backend call in the lease thread. If
        one has used more than half its slack past that point, renewals run late: until they
        catch up, new calls are refused with ``Overloaded`` rather than risk the lease.
        """
        cfg, clock = self.config, self.clock
        tick = max(0.01, min(cfg.lease_ttl / 4, cfg.alarm_poll_interval, 1.0))
        late_within = (cfg.lease_ttl / 2 - tick) / 2  # half the slack a renewal has
        while True:
            await clock.sleep(tick)
            due = [inst for ns in list(self._namespaces.values())
                   for inst in list(ns._instances.values())
                   if inst.accepting and inst._renewing is None
                   and inst.lease_expiring(cfg.lease_ttl / 2)]
            # Late: still valid, but past half the slack. (An expired lease, after a pause,
            # is no longer at risk: the next event renews it or finds it fenced.)
            late = any(inst.lease_expiring(late_within) and not inst.lease_expiring(0)
                       for inst in due)
            late = late and cfg.shed_load
            if late != self.shedding:
                log.warning("duro: lease renewals %s", "run late; refusing new calls with "
                            "Overloaded" if late else "caught up; taking calls again")
                self.shedding = late
            if not due:
                continue
            sent = clock.monotonic()
            for inst in due:
                inst.renewal_sent(sent)
            try:
                stale = await self.lease_io(self.backend.renew_many,
                                            [(inst.ref, inst.epoch) for inst in due],
                                            clock.time() + cfg.lease_ttl)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - transient: the next tick tries again
                log.warning("duro: renewing %d leases failed (%s); retrying", len(due), exc)
                for inst in due:  # once a lease runs out, its calls are refused
                    inst.renewal_failed()
                continue
            for inst in due:
                fenced = stale.get(inst.ref)
                if fenced is not None:
                    inst.reset(fenced)
                else:
                    inst.renewed(sent)

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
