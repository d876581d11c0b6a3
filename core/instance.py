"""One live activation of a durable object: its turns, gates, flushes, lease and alarm.

Events (calls, alarms) run one at a time. A turn's result leaves the object only after every
write made before it is durable (output gate) and only while the lease is valid; the next turn
may start while that flush is in flight (group commit). A failed flush, or one whose outcome is
unknown, resets the instance: its held outputs become :class:`~duro.errors.ObjectReset`, and
the next call re-activates the object from storage under a new epoch.

An owner whose lease ran out and cannot be renewed (storage unreachable: renewals fail, or get
no answer within a grace of ``min(drift_margin, lease_ttl / 4)``) has *lost its lease*: it
refuses every call for the object at once with :class:`~duro.errors.BackendUnavailable` (the
call was not run; ``retry_after`` is the time until another process may take the object over)
and never answers from its cache, while the output gate keeps holding the results of turns
that ran before. A renewal that gets through later (epoch-checked) ends that state; a fenced
one resets the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from duro import tracing
from duro.backends.base import Batch, CommitOp, Lease, ObjectRef, ReleaseOp
from duro.calls import decode_args, encode_result, pack_error
from duro.errors import BackendUnavailable, DuroError, Fenced, ObjectReset, Overloaded
from duro.objects import AlarmInfo, Context, DurableObject, _instantiate
from duro.signals import Chain, Gone
from duro.stats import ObjectStats
from duro.storage import Storage

log = logging.getLogger("duro.instance")

if TYPE_CHECKING:
    from duro.host import Home, Host
    from duro.ids import ObjectId

__all__ = ["Instance", "current_call"]

T = TypeVar("T")
log = logging.getLogger("duro.alarms")
lease_log = logging.getLogger("duro.lease")

current_call: contextvars.ContextVar[tuple[Instance, Chain] | None] = contextvars.ContextVar(
    "duro_current_call", default=None
)
"""The instance whose turn is running, and the chain of objects in the current call."""

@dataclass(slots=True)
class _Event:
    kind: str  # "call" | "alarm" | "delete"
    method: str
    payload: bytes
    chain: Chain
    fut: asyncio.Future[bytes] | None
    retry: int = 0
    trace: Any = None  # the call's OpenTelemetry context (duro.tracing), if tracing


class Instance:
    """A live object instance owned by this process under one fencing epoch."""

    def __init__(
        self,
        ns: Home,
        oid: ObjectId,
        lease: Lease,
        sent_at: float,
        alarm: float | None,
        preload: list[tuple[bytes, bytes]] | None,
    ) -> None:
        self.ns = ns
        self.app: Host = ns.app
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
        # mutant: renew as usual, but keep serving from the cache once the lease is lost
        self._ignore_lost_lease = "ignore_lost_lease" in cfg.unsafe
        self._renew_grace = min(cfg.drift_margin, cfg.lease_ttl / 4)
        self._unanswered_since: float | None = None  # oldest renewal sent since the last success
        self._renew_failed = False  # a renewal failed since the last success
        self._lost_logged = False
        self.storage = Storage(self, cfg.storage_limits, alarm, preload)
        self.ctx = Context(self)
        self.obj: DurableObject | None = None
        self._queue: deque[_Event] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while the worker waits for events
        self._busy = False  # the worker is running events (not waiting for any)
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
        """No queued or running event, no flush, no background task, no alarm retry pending.

        A failed alarm's retry count lives here: evicting before its retry would start the
        count again from 0 on re-activation, and the retries would never end.
        """
        return (
            not self._queue
            and not self._busy
            and not self.storage.flushing
            and not self._tasks
            and self._gate_holders == 0
            and not self._alarm_retry
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
        self._wake_worker()  # it sees the reset and ends
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
            while self._busy or self._queue:
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
                    await self.app.committer.submit(ReleaseOp(self.ref, self.epoch))
        finally:
            self.ns._forget(self)
            self._wake_worker()  # it sees the instance closing and ends
            self.closed.set()

    # -- events ---------------------------------------------------------------------------------

    async def call(self, method: str, payload: bytes, chain: Chain) -> bytes:
        """Queue a call and return its reply envelope once the output gate releases it."""
        return await self.enqueue(method, payload, chain)

    def enqueue(self, method: str, payload: bytes, chain: Chain) -> asyncio.Future[bytes]:
        """Queue a call; the future is its reply envelope, once the output gate releases it.

        Raises :class:`Gone` at once if the instance takes no events.
        """
        if self._broken is not None or self._closing:
            raise Gone()
        if self.lease_lost():
            raise self._lost_error()
        if len(self._queue) >= self.app.config.max_queue:
            raise Overloaded(
                f"object {self.oid.hex[:12]}… has {len(self._queue)} queued calls; retry later",
                not_run=True)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append(_Event("call", method, payload, chain, fut, 0,
                                  tracing.start_call(self.ns.name, self.oid, method, fut)))
        self._kick()
        return fut

    async def delete(self) -> bytes:
        """Queue the deletion of this object's state; runs as a turn on the owner."""
        if not self.accepting:
            raise Gone()
        if self.lease_lost():
            raise self._lost_error()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.append(_Event("delete", "__delete__", b"", (), fut))
        self._kick()
        return await fut

    async def _delete_turn(self, ev: _Event) -> None:
        assert ev.fut is not None
        try:
            await self.storage.sync()
            await self.read(self.backend.delete_object, self.ref, self.epoch)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
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
        """Wait until every write so far is durable and the lease is valid (output gate).

        Raises :class:`~duro.errors.BackendUnavailable` if the lease is lost (the output, an
        outgoing call, is not sent)."""
        await self.storage.sync()
        clock = self.app.clock
        if self._lease_ok(clock.monotonic()):
            return
        await self._await_renewal(clock.monotonic())
        if self._broken is not None:
            raise ObjectReset(f"object was reset: {self._broken}")
        if not self._lease_ok(clock.monotonic()):
            raise self._lost_error("the outgoing call was not sent")

    def _kick(self) -> None:
        """A new event is queued: wake the worker, or start it."""
        if self._wake is not None:
            self._wake_worker()
        elif self._worker is None:
            self._busy = True
            self._worker = asyncio.ensure_future(self._run())

    def _wake_worker(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _run(self) -> None:
        """The object's one long-lived worker: runs queued events one at a time, then waits
        for the next (a new task per call costs more than the call itself)."""
        loop = asyncio.get_running_loop()
        try:
            while self._broken is None:
                if not self._queue:
                    self._busy = False
                    self.last_active = self.app.clock.monotonic()
                    if self._closing or self._broken is not None:
                        return
                    self._wake = loop.create_future()
                    await self._wake
                    self._busy = True
                    continue
                now = self.app.clock.monotonic()
                if not self._lease_ok(now):  # never serve from a cache we may not own
                    if not self.lease_lost(now):
                        await self._await_renewal(now)
                        continue
                    self._refuse_queued()  # lost: what waits here was not run, and never is
                    if self._queue:  # alarms: they wait for the lease to come back
                        self._busy = False
                        self._wake = loop.create_future()
                        await self._wake
                        self._busy = True
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
            self._wake = None
            self._busy = False
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
        otel = None if ev.trace is None else tracing.attach(ev.trace)
        try:
            if ev.method.startswith("__"):
                handler = self.app.events.get(ev.method)
                if handler is None:
                    raise AttributeError(f"unknown runtime event {ev.method!r}")
                value = await handler(self, ev.payload)
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
        except Exception as exc:  # noqa: BLE001 - the method's own error, sent back to its caller
            out = pack_error(exc, ran=True)
        finally:
            current_call.reset(token)
            if otel is not None:
                tracing.detach(otel)
        self._release(ev.fut, out)

    def _release(self, fut: asyncio.Future[bytes], out: bytes) -> None:
        """Send *out* once all earlier writes are durable and the lease is valid (output gate)."""
        storage = self.storage
        if (storage._durable_seq >= storage._write_seq and storage._broken is None
                and self._lease_ok(self.app.clock.monotonic())):
            if not fut.done():  # nothing pending and the lease valid: the gate is open now
                fut.set_result(out)
            return

        def gate_open(exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            elif self._lease_ok(self.app.clock.monotonic()):
                fut.set_result(out)
            else:
                self._lease_waiters.append((fut, out))
                self._renew_soon()

        if self._ack_early:  # mutant: release outputs before their writes are durable
            gate_open(None)
            return
        storage.after_durable(storage._write_seq, gate_open)

    # -- lease ----------------------------------------------------------------------------------

    def lease_expiring(self, within: float) -> bool:
        """Whether the lease stops being valid within *within* seconds."""
        return self.app.clock.monotonic() + within >= self._lease_valid_until

    def _lease_ok(self, now: float) -> bool:
        """Whether outputs may leave and turns may start at monotonic time *now*."""
        return now < self._lease_valid_until or self._ignore_lost_lease

    def lease_lost(self, now: float | None = None) -> bool:
        """Whether the lease ran out and renewing it fails, or has had no answer for the
        grace (storage is unreachable): calls are refused until a renewal gets through."""
        if self._ignore_lost_lease:
            return False
        now = self.app.clock.monotonic() if now is None else now
        if now < self._lease_valid_until:
            return False
        since = self._unanswered_since
        return self._renew_failed or (since is not None and now - since >= self._renew_grace)

    def _lost_error(self, what: str = "the call was not run") -> BackendUnavailable:
        """The refusal of a call (or an output) while the lease is lost."""
        clock, cfg = self.app.clock, self.app.config
        now = clock.monotonic()
        # Another process may acquire once the stored lease end plus a drift margin is past;
        # the local validity ends a margin before the stored end.
        left = self._lease_valid_until + 2 * cfg.drift_margin - now
        since = now - (self._unanswered_since if self._unanswered_since is not None else now)
        how = "fail" if self._renew_failed else f"have had no answer for {since:.1f} s"
        name = self.oid.name or self.oid.hex[:12]
        if not self._lost_logged:
            self._lost_logged = True
            lease_log.warning(
                "duro: %s %s lost its lease: storage is unreachable (renewals %s); refusing "
                "its calls until a renewal gets through", self.ns.name, name, how,
                extra=self._event("lease_lost", renewals=how))
        err = BackendUnavailable(
            f"{self.ns.name} {name}: this process lost its lease on the object because its "
            f"storage is unreachable (lease renewals {how}); {what}. Another process may take "
            f"the object over in {max(left, 0.0):.1f} s: retry then", not_run=True)
        err.retry_after = float(max(1, math.ceil(left)))
        return err

    def _refuse_queued(self) -> None:
        """Fail the queued calls (none started) with the lost-lease error; alarms stay."""
        keep: deque[_Event] = deque()
        for ev in self._queue:
            if ev.fut is None:
                keep.append(ev)
            elif not ev.fut.done():
                ev.fut.set_exception(self._lost_error())
        self._queue = keep

    async def _await_renewal(self, now: float) -> None:
        """Renew the expired lease, waiting for the answer no longer than the grace."""
        renewing = self._renew_soon()
        if renewing is None:
            return
        since = now if self._unanswered_since is None else self._unanswered_since
        # On the App's clock (a test's manual clock decides when the grace is over).
        grace = asyncio.ensure_future(self.app.clock.sleep(max(0.0, since + self._renew_grace
                                                               - now)))
        try:
            await asyncio.wait({renewing, grace}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            grace.cancel()

    def _renew_soon(self) -> asyncio.Task[None] | None:
        if self._renewing is None and self._broken is None:
            self._renewing = asyncio.ensure_future(self.renew())
        return self._renewing

    def renewal_sent(self, at: float) -> None:
        """A renewal of this lease was sent at monotonic time *at*."""
        if self._unanswered_since is None:
            self._unanswered_since = at

    def renewal_failed(self) -> None:
        """A renewal of this lease failed (transiently: the backend is unavailable)."""
        self._renew_failed = True

    async def renew(self) -> None:
        """Renew the lease (epoch-checked); if that fails (``Fenced``, or an error: the
        outcome of the outputs it held is then unknown), reset the instance."""
        cfg, clock = self.app.config, self.app.clock
        try:
            sent = clock.monotonic()
            self.renewal_sent(sent)
            # In the lease thread, without the input gate: renewals never wait behind commits.
            await self.app.lease_io(self.backend.renew, self.ref, self.epoch,
                                    clock.time() + cfg.lease_ttl)
            self.renewed(sent)
        except DuroError as exc:
            self.reset(exc)
        finally:
            self._renewing = None
            self.renewed(None)

    def renewed(self, sent: float | None) -> None:
        """The lease was renewed by a request sent at monotonic time *sent* (``None``: not
        renewed): extend its validity, release the outputs that waited for a valid lease."""
        if sent is not None:
            cfg = self.app.config
            self._lease_valid_until = max(
                self._lease_valid_until, sent + cfg.lease_ttl - cfg.drift_margin
            )
            self._unanswered_since = None
            self._renew_failed = False
            if self._lost_logged:
                self._lost_logged = False
                lease_log.warning("duro: %s %s renewed its lease: taking calls again",
                                  self.ns.name, self.oid.name or self.oid.hex,
                                  extra=self._event("lease_back"))
            if self._queue:
                self._wake_worker()  # alarms held while the lease was lost may run
        if not self._lease_ok(self.app.clock.monotonic()):
            return  # the outputs keep waiting
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
        await self.app.committer.submit(CommitOp(self.ref, self.epoch, batch))
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
        failure: Exception | None = None
        span = tracing.alarm_span(self.ns.name, self.oid, ev.retry)
        try:
            await self.obj.alarm(AlarmInfo(retry_count=ev.retry))
        except Exception as exc:  # noqa: BLE001 - an alarm's failure is logged and retried below
            failure = exc
            self.stats.alarm_failures += 1
        finally:
            current_call.reset(token)
            self._alarm_running = None
            span.end(failure)
        if self._broken is not None:
            return
        cfg = self.app.config
        if self._alarm_set_in_run:
            self._alarm_retry = 0
            return  # a new alarm supersedes this one and its retries
        what = f"alarm of {self.ns.name} {self.oid.name or self.oid.hex[:12]}"
        if failure is None or ev.retry >= cfg.alarm_max_retries:
            if failure is not None:
                log.error("%s failed on its last retry (%d); giving up: the alarm is cleared",
                          what, ev.retry, exc_info=failure,
                          extra=self._event("alarm_failure", retry_count=ev.retry,
                                            will_retry=False))
            self._alarm_retry = 0
            self.storage.delete_alarm()  # cleared only after success (at-least-once)
            return
        self.storage._alarm = scheduled
        self._alarm_retry = ev.retry + 1
        backoff = cfg.alarm_retry_base * (2 ** ev.retry)
        delay = backoff * (1 + random.uniform(0, 0.25))
        log.warning("%s failed (run %d of at most %d); retrying in %.1f s", what, ev.retry + 1,
                    cfg.alarm_max_retries + 1, delay, exc_info=failure,
                    extra=self._event("alarm_failure", retry_count=ev.retry, will_retry=True))
        self._schedule_alarm(scheduled, delay=delay)

