"""One live activation of a durable object: its turns, gates, flushes, lease and alarm.

Events (calls, alarms) run one at a time. A turn's result leaves the object only after every
write made before it is durable (output gate) and only while the lease is valid; the next turn
may start while that flush is in flight (group commit). A failed flush, or one whose outcome is
unknown, resets the instance: its held outputs become :class:`~duro.errors.ObjectReset`, and
the next call re-activates the object from storage under a new epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from duro.backends.base import Batch, Lease, ObjectRef
from duro.calls import decode_args, encode_result, pack_error
from duro.errors import DuroError, Fenced, ObjectReset, Overloaded
from duro.objects import AlarmInfo, Context, DurableObject, _instantiate
from duro.stats import ObjectStats
from duro.storage import Storage

log = logging.getLogger("duro.instance")

if TYPE_CHECKING:
    from duro.app import App
    from duro.ids import ObjectId
    from duro.namespace import Namespace

__all__ = ["Gone", "Instance", "current_call"]

T = TypeVar("T")

Chain = tuple[tuple[str, str], ...]
current_call: contextvars.ContextVar[tuple[Instance, Chain] | None] = contextvars.ContextVar(
    "duro_current_call", default=None
)
"""The instance whose turn is running, and the chain of objects in the current call."""

INTERNAL_METHODS: dict[str, Callable[[Instance, bytes], Awaitable[Any]]] = {}
"""Runtime events that run as turns under a ``__name__`` method (``__fetch__``, WebSocket
events); registered by :mod:`duro.fetch` and :mod:`duro.websockets`."""


def _internal(method: str) -> Callable[[Instance, bytes], Awaitable[Any]]:
    handler = INTERNAL_METHODS.get(method)
    if handler is None:
        import duro.fetch
        import duro.websockets  # noqa: F401 - both register their events on import

        handler = INTERNAL_METHODS.get(method)
        if handler is None:
            raise AttributeError(f"unknown internal method {method!r}")
    return handler


class Gone(Exception):
    """The instance stopped taking events before this one started: dispatch it again."""


@dataclass
class _Event:
    kind: str  # "call" | "alarm"
    method: str
    payload: bytes
    chain: Chain
    fut: asyncio.Future[bytes] | None
    retry: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Instance:
    """A live object instance owned by this process under one fencing epoch."""

    def __init__(
        self,
        ns: Namespace[Any],
        oid: ObjectId,
        lease: Lease,
        sent_at: float,
        alarm: float | None,
        preload: list[tuple[bytes, bytes]] | None,
    ) -> None:
        self.ns = ns
        self.app: App = ns.app
        self.oid = oid
        self.key = (ns.name, oid.hex)
        self.ref = ObjectRef(ns.name, oid.hex)
        self.backend = self.app.backend
        self.epoch = lease.epoch
        self.stats = ObjectStats(activations=1)
        cfg = self.app.config
        self._lease_valid_until = sent_at + cfg.lease_ttl - cfg.drift_margin
        if "skip_lease_check" in cfg.unsafe:  # mutant: serve after losing the lease
            self._lease_valid_until = float("inf")
        self.storage = Storage(self, cfg.storage_limits, alarm, preload)
        self.ctx = Context(self)
        self.obj: DurableObject | None = None
        self._queue: deque[_Event] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._gate_holders = 0
        self._gate_free = asyncio.Event()
        self._gate_free.set()
        self._broken: BaseException | None = None
        self._closing = False
        self.closed = asyncio.Event()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._lease_waiters: list[tuple[asyncio.Future[bytes], bytes]] = []
        self._renewing: asyncio.Task[None] | None = None
        self._alarm_timer: asyncio.Task[None] | None = None
        self._alarm_retry = 0
        self._alarm_running: float | None = None
        self._alarm_set_in_run = False
        self.last_active = self.app.clock.monotonic()
        self._ack_early = "ack_before_durable" in cfg.unsafe

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Construct the object and run ``on_activate`` before any event."""
        token = current_call.set((self, (self.key,)))
        try:
            self.obj = _instantiate(self.ns.cls, self.ctx, self.app.env)
            await self.block_concurrency_while(self.obj.on_activate())
        finally:
            current_call.reset(token)
        log.debug("duro: activated %s %s", self.ns.name, self.oid.name or self.oid.hex,
                  extra=self._event("activation"))
        self._schedule_alarm(self.storage._alarm)

    def _event(self, event: str, **fields: Any) -> dict[str, Any]:
        """``extra=`` fields of a structured log event about this object."""
        return {"event": event, "namespace": self.ns.name, "object_id": self.oid.hex,
                "object_name": self.oid.name, **fields}

    @property
    def accepting(self) -> bool:
        """Whether new events may be queued here."""
        return self._broken is None and not self._closing

    @property
    def idle(self) -> bool:
        """No queued or running event, no flush, no background task."""
        return (
            not self._queue
            and self._worker is None
            and not self.storage.flushing
            and not self._tasks
            and self._gate_holders == 0
        )

    def reset(self, exc: BaseException) -> None:
        """Drop this instance: fail held outputs, re-dispatch events that never started."""
        if self._broken is not None:
            return
        self._broken = exc
        self.stats.resets += 1
        fenced = isinstance(exc, Fenced)
        self.stats.fenced += fenced
        log.warning("duro: %s %s %s: %s", self.ns.name, self.oid.name or self.oid.hex,
                    "fenced (another owner took over)" if fenced else "reset", exc,
                    extra=self._event("fencing" if fenced else "reset", reason=str(exc)))
        self.storage.break_(exc)
        err = exc if isinstance(exc, ObjectReset) else ObjectReset(f"object was reset: {exc}")
        for fut, _ in self._lease_waiters:
            if not fut.done():
                fut.set_exception(err)
        self._lease_waiters.clear()
        self._cancel_alarm_timer()
        self.ns._forget(self)
        queued = list(self._queue)
        self._queue.clear()
        for ev in queued:
            if ev.fut is not None and not ev.fut.done():
                ev.fut.set_exception(Gone())
        self.closed.set()

    def cancel_worker(self) -> None:
        """Cancel the running turn (after a reset, when the App may wait no longer)."""
        if self._worker is not None:
            self._worker.cancel()

    async def evict(self) -> None:
        """Stop taking events, drain running ones and the last flush, release the lease."""
        if self._closing or self._broken is not None:
            await self.closed.wait()
            return
        self._closing = True
        try:
            while self._worker is not None or self._queue:
                await asyncio.sleep(0.001)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            try:
                await self.storage.sync()
            except DuroError:
                return  # the flush failed: reset() already ran
            self._cancel_alarm_timer()
            if self._broken is None:
                with contextlib.suppress(DuroError):  # else the lease expires by itself
                    await self.read(self.backend.release, self.ref, self.epoch)
        finally:
            self.ns._forget(self)
            self.closed.set()

    # -- events ---------------------------------------------------------------------------------

    async def call(self, method: str, payload: bytes, chain: Chain) -> bytes:
        """Queue a call and return its reply envelope once the output gate releases it."""
        if not self.accepting:
            raise Gone()
        if len(self._queue) >= self.app.config.max_queue:
            raise Overloaded(
                f"object {self.oid.hex[:12]}… has {len(self._queue)} queued calls; retry later"
            )
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append(_Event("call", method, payload, chain, fut))
        self._kick()
        return await fut

    async def delete(self) -> bytes:
        """Queue the deletion of this object's state; runs as a turn on the owner."""
        if not self.accepting:
            raise Gone()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append(_Event("delete", "__delete__", b"", (), fut))
        self._kick()
        return await fut

    async def _delete_turn(self, ev: _Event) -> None:
        assert ev.fut is not None
        try:
            await self.storage.sync()
            await self.read(self.backend.delete_object, self.ref, self.epoch)
        except Exception as exc:
            if not ev.fut.done():
                ev.fut.set_result(pack_error(exc))
            return
        if not ev.fut.done():
            ev.fut.set_result(encode_result(None))
        self.reset(ObjectReset("object deleted"))
        self.stats.resets -= 1
        with contextlib.suppress(DuroError):  # else the lease expires by itself
            await self.read(self.backend.release, self.ref, self.epoch)

    async def output_ready(self) -> None:
        """Wait until every write so far is durable and the lease is valid (output gate)."""
        await self.storage.sync()
        if self.app.clock.monotonic() >= self._lease_valid_until:
            renewing = self._renew_soon()
            if renewing is not None:
                await asyncio.shield(renewing)
            if self._broken is not None:
                raise ObjectReset(f"object was reset: {self._broken}")

    def _kick(self) -> None:
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self._queue and self._broken is None:
                if self.app.clock.monotonic() >= self._lease_valid_until:
                    renewing = self._renew_soon()  # never serve from a cache we may not own
                    if renewing is not None:
                        await asyncio.shield(renewing)
                    continue
                if self._gate_holders or self.storage.over_dirty_limit:
                    self.stats.gate_waits += 1
                    await self._wait_gate()
                    continue
                ev = self._queue.popleft()
                if ev.kind == "alarm":
                    await self._alarm_turn(ev)
                elif ev.kind == "delete":
                    await self._delete_turn(ev)
                else:
                    await self._call_turn(ev)
        finally:
            self._worker = None
            self.last_active = self.app.clock.monotonic()

    async def _wait_gate(self) -> None:
        while self._gate_holders:
            self._gate_free.clear()
            await self._gate_free.wait()
        if self.storage.over_dirty_limit:
            await self.storage.sync()

    async def _call_turn(self, ev: _Event) -> None:
        assert ev.fut is not None
        if ev.fut.done():  # the caller gave up before the call started
            return
        self.stats.turns += 1
        token = current_call.set((self, (*ev.chain, self.key)))
        try:
            if ev.method.startswith("__"):
                value = await _internal(ev.method)(self, ev.payload)
            else:
                args, kwargs = decode_args(ev.payload)
                value = await getattr(self.obj, ev.method)(*args, **kwargs)
            out = encode_result(value)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The worker itself is being cancelled (the App gave up waiting): answer the
                # caller, then stop.
                if not ev.fut.done():
                    ev.fut.set_exception(ObjectReset("the object's turn was cancelled"))
                raise
            out = pack_error(exc)  # raised by the method's own awaits: its error, not ours
        except Exception as exc:
            out = pack_error(exc)
        finally:
            current_call.reset(token)
        self._release(ev.fut, out)

    def _release(self, fut: asyncio.Future[bytes], out: bytes) -> None:
        """Send *out* once all earlier writes are durable and the lease is valid (output gate)."""

        def gate_open(exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            elif self.app.clock.monotonic() < self._lease_valid_until:
                fut.set_result(out)
            else:
                self._lease_waiters.append((fut, out))
                self._renew_soon()

        if self._ack_early:  # mutant: release outputs before their writes are durable
            gate_open(None)
            return
        self.storage.after_durable(self.storage.write_seq, gate_open)

    # -- lease ----------------------------------------------------------------------------------

    def lease_expiring(self, within: float) -> bool:
        """Whether the lease stops being valid within *within* seconds."""
        return self.app.clock.monotonic() + within >= self._lease_valid_until

    def _renew_soon(self) -> asyncio.Task[None] | None:
        if self._renewing is None and self._broken is None:
            self._renewing = asyncio.ensure_future(self.renew())
        return self._renewing

    async def renew(self) -> None:
        """Renew the lease (epoch-checked); on ``Fenced`` reset the instance."""
        cfg, clock = self.app.config, self.app.clock
        try:
            sent = clock.monotonic()
            await self.read(self.backend.renew, self.ref, self.epoch, clock.time() + cfg.lease_ttl)
            self._lease_valid_until = max(
                self._lease_valid_until, sent + cfg.lease_ttl - cfg.drift_margin
            )
        except DuroError as exc:
            self.reset(exc)
        finally:
            self._renewing = None
        waiters, self._lease_waiters = self._lease_waiters, []
        for fut, out in waiters:
            if not fut.done():
                fut.set_result(out)

    # -- storage I/O ----------------------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a backend call in the app's I/O threads, holding the input gate."""
        self._gate_holders += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.app.executor, functools.partial(fn, *args, **kwargs)
            )
        finally:
            self._gate_holders -= 1
            if not self._gate_holders:
                self._gate_free.set()

    async def commit(self, batch: Batch) -> None:
        """Commit one batch under this epoch; renew the lease with it once half of it is used.

        The registry's last-active time is refreshed at the same moments. Touching the lease
        record on every batch would cost a second page write per SQLite commit and a second
        PUT per S3 flush, for nothing.
        """
        cfg, clock = self.app.config, self.app.clock
        sent = clock.monotonic()
        now = clock.time()
        renew = self.lease_expiring(cfg.lease_ttl / 2)
        if renew:
            batch.lease_until = now + cfg.lease_ttl
            batch.active_at = now
        self.stats.flushes += 1
        n = len(batch.puts) + len(batch.deletes) + int(batch.delete_all)
        self.stats.flushed_writes += n
        self.stats.max_batch = max(self.stats.max_batch, n)
        await asyncio.get_running_loop().run_in_executor(
            self.app.executor, self.backend.commit, self.ref, self.epoch, batch
        )
        if renew:
            self._lease_valid_until = max(
                self._lease_valid_until, sent + cfg.lease_ttl - cfg.drift_margin
            )

    # -- concurrency helpers --------------------------------------------------------------------

    async def block_concurrency_while(self, awaitable: Awaitable[T]) -> T:
        """Hold the input gate while *awaitable* runs; reset the object if it fails."""
        self._gate_holders += 1
        try:
            return await awaitable
        except BaseException as exc:
            self.reset(exc)
            raise
        finally:
            self._gate_holders -= 1
            if not self._gate_holders:
                self._gate_free.set()

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Track a background task so eviction waits for it."""
        fut = asyncio.ensure_future(awaitable)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    # -- alarms ---------------------------------------------------------------------------------

    def _alarm_changed(self, t: float | None) -> None:
        if self._alarm_running is not None:
            self._alarm_set_in_run = True
        self._schedule_alarm(t)

    def _cancel_alarm_timer(self) -> None:
        if self._alarm_timer is not None:
            self._alarm_timer.cancel()
            self._alarm_timer = None

    def _schedule_alarm(self, t: float | None, delay: float | None = None) -> None:
        self._cancel_alarm_timer()
        if t is None or self._broken is not None:
            return
        clock = self.app.clock
        wait = max(0.0, t - clock.time()) if delay is None else delay

        async def fire() -> None:
            await clock.sleep(wait)
            self._alarm_timer = None
            if self.accepting:
                self._queue.append(_Event("alarm", "alarm", b"", (), None, self._alarm_retry))
                self._kick()

        self._alarm_timer = asyncio.ensure_future(fire())

    async def _alarm_turn(self, ev: _Event) -> None:
        scheduled = self.storage._alarm
        if scheduled is None or self.obj is None:
            return  # deleted meanwhile
        self.stats.alarms += 1
        self.stats.turns += 1
        self._alarm_running = scheduled
        self._alarm_set_in_run = False
        self.storage._alarm = None  # during the run get_alarm() is None unless set anew
        token = current_call.set((self, (self.key,)))
        ok = True
        try:
            await self.obj.alarm(AlarmInfo(retry_count=ev.retry))
        except Exception:
            ok = False
            self.stats.alarm_failures += 1
            retry = ev.retry < self.app.config.alarm_max_retries
            log.warning("duro: alarm of %s %s failed (retry %d)%s", self.ns.name,
                        self.oid.name or self.oid.hex, ev.retry,
                        "; it will be retried" if retry else "; giving up", exc_info=True,
                        extra=self._event("alarm_failure", retry_count=ev.retry,
                                          will_retry=retry))
        finally:
            current_call.reset(token)
            self._alarm_running = None
        if self._broken is not None:
            return
        cfg = self.app.config
        if self._alarm_set_in_run:
            self._alarm_retry = 0
            return  # a new alarm supersedes this one and its retries
        if ok or ev.retry >= cfg.alarm_max_retries:
            self._alarm_retry = 0
            self.storage.delete_alarm()  # cleared only after success (at-least-once)
            return
        self.storage._alarm = scheduled
        self._alarm_retry = ev.retry + 1
        backoff = cfg.alarm_retry_base * (2 ** ev.retry)
        self._schedule_alarm(scheduled, delay=backoff * (1 + random.uniform(0, 0.25)))

