"""An object's storage: an in-memory cache in front of the backend, with write coalescing.

Reads are served from the cache; a hit does no I/O and does not yield. Writes validate and
encode at once, apply to the cache at once, and are committed later by the instance's flush,
all unflushed writes together as one atomic batch, one flush in flight at a time. Every write
method returns an awaitable that resolves once that write is durable; ignoring it is fine.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as _dt
import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from duro.backends.base import UNCHANGED, Batch, _Unchanged
from duro.codec import decode, encode_value
from duro.errors import DuroError, InvalidKey, ObjectReset
from duro.keys import encode_key, key_range
from duro.settings import StorageLimits

if TYPE_CHECKING:
    from duro.backends.base import Backend, ObjectRef
    from duro.host import Host
    from duro.stats import ObjectStats

__all__ = ["Durable", "Owner", "Storage", "StorageLimits", "Transaction"]

T = TypeVar("T")

_MISSING: Final = object()
_ABSENT: Final = object()
_IMMUTABLE: Final = frozenset({str, int, float, bool, bytes, type(None), _dt.datetime})
_seq = itertools.count()


class Owner(Protocol):
    """What a :class:`Storage` uses of the instance it belongs to."""

    @property
    def backend(self) -> Backend: ...
    @property
    def ref(self) -> ObjectRef: ...
    @property
    def stats(self) -> ObjectStats: ...
    @property
    def app(self) -> Host: ...

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a backend read off the event loop."""
        ...

    async def commit(self, batch: Batch) -> None:
        """Make *batch* durable under the instance's epoch."""
        ...

    def reset(self, exc: BaseException) -> None:
        """Drop the instance's held outputs; the next call re-activates it."""
        ...

    def _alarm_changed(self, t: float | None) -> None: ...


MILLISECONDS_FROM: Final = 1e11
"""Alarm times at or past this (the year 5138 in seconds, 1973 in milliseconds) are refused."""


def _alarm_time(when: object) -> float:
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            raise ValueError("set_alarm(): use an aware datetime (with tzinfo) or epoch seconds")
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
        raise TypeError(f"set_alarm(): expected epoch seconds or an aware datetime, not {when!r}")
    if when >= MILLISECONDS_FROM:
        raise ValueError(f"set_alarm({when!r}): this looks like milliseconds; alarm times are "
                         "seconds since the epoch (use self.ctx.now() + delay_in_seconds)")
    return float(when)


def _list_range(start: str | None, start_after: str | None, end: str | None,
                prefix: str | None, limit: int | None) -> tuple[bytes | None, bytes | None]:
    """Check ``list()``'s arguments; the byte range they select."""
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError(f"list(): limit must be a non-negative int, not {limit!r}")
    return key_range(start=start, start_after=start_after, end=end, prefix=prefix)


def _overlay_rows(
    base: list[tuple[bytes, bytes]],
    asked: int | None,
    writes: Mapping[bytes, bytes | None],
    clear: bool,
    reverse: bool,
    limit: int | None,
) -> list[tuple[bytes, bytes]]:
    """Rows of a range read from below (*base*, at most *asked* of them, in list order) with
    the writes not yet applied there laid over them (``None`` deletes; *clear*: nothing below
    counts). Only keys up to *base*'s last row are known when it came back full, so the result
    stops there; it has ``min(limit, count)`` rows as long as *asked* counted *writes*.
    """
    merged = {} if clear else dict(base)
    for k, v in writes.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    keys = sorted(merged, reverse=reverse)
    if asked is not None and base and len(base) >= asked:
        edge = base[-1][0]
        keys = [k for k in keys if (k >= edge if reverse else k <= edge)]
    if limit is not None:
        keys = keys[:limit]
    return [(k, merged[k]) for k in keys]


class Durable:
    """The awaitable a write returns: resolves to its value once the write is durable."""

    __slots__ = ("_seq", "_storage", "_value")

    def __init__(self, storage: Storage, seq: int, value: Any) -> None:
        self._storage = storage
        self._seq = seq
        self._value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self._storage._wait_durable(self._seq, self._value).__await__()


class _Overlay:
    """Writes not yet applied somewhere: a transaction's, or the storage's dirty/in-flight set."""

    __slots__ = ("alarm", "clear", "writes")

    def __init__(self) -> None:
        self.writes: dict[bytes, bytes | None] = {}
        self.clear = False
        self.alarm: float | _Unchanged | None = UNCHANGED

    def put(self, k: bytes, v: bytes | None) -> None:
        self.writes[k] = v

    def delete_all(self) -> None:
        self.writes.clear()
        self.clear = True
        self.alarm = None

    def merge(self, other: _Overlay) -> None:
        if other.clear:
            self.delete_all()
        self.writes.update(other.writes)
        if other.alarm is not UNCHANGED:
            self.alarm = other.alarm

    def to_batch(self) -> Batch:
        puts = {k: v for k, v in self.writes.items() if v is not None}
        deletes = {k for k, v in self.writes.items() if v is None}
        return Batch(puts=puts, deletes=deletes, delete_all=self.clear, alarm=self.alarm)

    def __bool__(self) -> bool:
        return bool(self.writes or self.clear or self.alarm is not UNCHANGED)


class _Reader:
    """Read methods shared by :class:`Storage` and :class:`Transaction`."""

    async def _get_raw(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        raise NotImplementedError

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under *key*, or *default*."""
        k = encode_key(key)
        got = await self._get_raw([k])
        v = got[k]
        return default if v is None else decode(v)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys that exist, in the order given (missing keys are omitted)."""
        if isinstance(keys, str):
            raise InvalidKey("get_many() takes an iterable of keys, not one str")
        ks = [encode_key(k) for k in keys]
        got = await self._get_raw(ks)
        return {k.decode(): decode(v) for k in ks if (v := got[k]) is not None}


class Storage(_Reader):
    """The storage of one live object instance (``self.storage`` / ``ctx.storage``)."""

    def __init__(
        self,
        inst: Owner,
        limits: StorageLimits,
        alarm: float | None,
        preload: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._inst = inst
        self._limits = limits
        self._cache: OrderedDict[bytes, bytes | None] = OrderedDict()
        # Decoded immutable values of cached keys, by str key: the cache-hit fast path.
        self._hot: dict[str, Any] = {}
        self._cache_bytes = 0
        # The cache holds every key of the object (absent keys need no I/O).
        self._complete = False
        if preload is not None:
            for k, v in preload:
                self._cache[k] = v
                self._cache_bytes += len(k) + len(v)
            self._complete = len(preload) < limits.preload_keys
        self._alarm = alarm
        self._dirty = _Overlay()
        self._dirty_bytes = 0
        self._inflight: _Overlay | None = None
        self._write_seq = 0
        self._durable_seq = 0
        self._flush_scheduled = False
        self._flush_task: asyncio.Task[None] | None = None
        self._prereads: list[asyncio.Future[Any]] = []
        self._waiters: list[tuple[int, int, Callable[[BaseException | None], None]]] = []
        self._broken: BaseException | None = None
        self._stats = inst.stats
        self._drop_one = "drop_coalesced_write" in inst.app.config.unsafe

    # -- reads ----------------------------------------------------------------------------------

    async def _get_raw(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        cache = self._cache
        out: dict[bytes, bytes | None] = {}
        missing: list[bytes] = []
        for k in keys:
            v = cache.get(k, _MISSING)
            if v is _MISSING:
                if self._complete:
                    out[k] = None
                else:
                    missing.append(k)
            else:
                cache.move_to_end(k)
                out[k] = v  # type: ignore[assignment]
        self._stats.cache_hits += len(keys) - len(missing)
        if missing:
            self._stats.cache_misses += len(missing)
            rows = await self._inst.read(self._inst.backend.get_many, self._inst.ref, missing)
            for k in missing:
                # A write made while the read was in flight wins over what was read.
                v = cache.get(k, _MISSING)
                if v is _MISSING:
                    v = rows.get(k)
                    self._fill(k, v)
                out[k] = v  # type: ignore[assignment]
            self._evict()
        return out

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under *key*, or *default*. A cache hit does not yield."""
        try:
            value = self._hot[key]
        except (KeyError, TypeError):
            return await self._get_slow(key, default)
        self._stats.cache_hits += 1
        return default if value is _ABSENT else value

    async def _get_slow(self, key: str, default: Any) -> Any:
        k = encode_key(key)
        v = self._cache.get(k, _MISSING)
        if v is _MISSING:
            v = (await self._get_raw([k]))[k]
        else:
            self._cache.move_to_end(k)
            self._stats.cache_hits += 1
        if v is None:
            if k in self._cache:
                self._hot[key] = _ABSENT
            return default
        value = decode(v)  # type: ignore[arg-type]
        if type(value) in _IMMUTABLE and k in self._cache:
            self._hot[key] = value  # immutable: safe to hand out again without copying
        return value

    async def list(
        self,
        *,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        prefix: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """Keys and values in UTF-8 byte order within the bounds (``end`` exclusive).

        ``reverse`` returns the same range from the other end; ``limit`` caps the count.
        """
        lo, hi = _list_range(start, start_after, end, prefix, limit)
        rows = await self._scan(lo, hi, reverse, limit)
        return {k.decode(): decode(v) for k, v in rows}

    def _pending(self) -> _Overlay:
        over = _Overlay()
        if self._inflight is not None:
            over.merge(self._inflight)
        over.merge(self._dirty)
        return over

    async def _scan(
        self, lo: bytes | None, hi: bytes | None, reverse: bool, limit: int | None
    ) -> builtins.list[tuple[bytes, bytes]]:
        """The range's rows as this object sees them: ``min(limit, count)`` of them, in order."""
        def inside(k: bytes) -> bool:
            return (lo is None or k >= lo) and (hi is None or k < hi)

        if self._complete:
            self._stats.cache_hits += 1
            rows = sorted(
                ((k, v) for k, v in self._cache.items() if v is not None and inside(k)),
                reverse=reverse,
            )
            return rows if limit is None else rows[:limit]
        self._stats.cache_misses += 1
        while True:
            before = self._pending()
            extra = sum(1 for k in before.writes if inside(k))
            asked = None if limit is None else limit + extra
            got: builtins.list[tuple[bytes, bytes]] = []
            if not before.clear:
                got = await self._inst.read(
                    self._inst.backend.scan, self._inst.ref, lo, hi, reverse=reverse, limit=asked
                )
            # A flush may have landed during the read, taking its writes out of the pending
            # set while the rows were read before it: apply the writes pending before the read
            # and those made since, each key at its latest value (the cache holds it).
            over = before
            over.merge(self._pending())
            writes: dict[bytes, bytes | None] = {}
            for k, v in over.writes.items():
                if inside(k):
                    cached = self._cache.get(k, _MISSING)
                    writes[k] = v if cached is _MISSING else cached  # type: ignore[assignment]
            if asked is not None and len(got) >= asked and len(writes) > extra:
                continue  # writes made during the read may hide rows past the backend's last
            for k, v in got:
                if k not in self._cache and k not in over.writes:
                    self._fill(k, v)
            self._evict()
            return _overlay_rows(got, asked, writes, over.clear, reverse, limit)

    async def get_alarm(self) -> float | None:
        """The alarm time (epoch seconds), or ``None``."""
        return self._alarm

    # -- cache ----------------------------------------------------------------------------------

    def _fill(self, k: bytes, v: bytes | None) -> None:
        self._cache[k] = v
        self._cache_bytes += len(k) + (len(v) if v else 0)

    def _set(self, k: bytes, v: bytes | None) -> None:
        if self._hot:
            self._hot.pop(k.decode(), None)
        old = self._cache.get(k, _MISSING)
        if old is not _MISSING:
            self._cache_bytes -= len(k) + (len(old) if old else 0)  # type: ignore[arg-type]
        self._cache[k] = v
        self._cache.move_to_end(k)
        self._cache_bytes += len(k) + (len(v) if v else 0)

    def _evict(self) -> None:
        lim = self._limits
        if self._cache_bytes <= lim.cache_bytes and len(self._cache) <= lim.cache_entries:
            return
        pending = self._pending().writes
        for k in list(self._cache):
            if self._cache_bytes <= lim.cache_bytes and len(self._cache) <= lim.cache_entries:
                break
            if k in pending:
                continue
            v = self._cache.pop(k)
            self._hot.pop(k.decode(), None)
            self._cache_bytes -= len(k) + (len(v) if v else 0)
            self._complete = False
            self._stats.evictions += 1

    # -- writes ---------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._broken is not None:
            raise ObjectReset(f"object was reset: {self._broken}")

    def _wrote(self, value: Any = None) -> Durable:
        self._write_seq += 1
        if not self._flush_scheduled and self._flush_task is None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        return Durable(self, self._write_seq, value)

    def _apply(self, k: bytes, v: bytes | None) -> None:
        self._set(k, v)
        self._dirty.put(k, v)
        self._dirty_bytes += len(k) + (len(v) if v else 0)

    def put(self, key: str, value: Any) -> Durable:
        """Store *value* under *key*. Applies at once; await the result to wait for durability."""
        k = encode_key(key)
        v = encode_value(value, self._limits.max_value_bytes)
        self._check_writable()
        self._apply(k, v)
        self._evict()
        return self._wrote()

    def put_many(self, entries: Mapping[str, Any]) -> Durable:
        """Store several keys at once (atomically, in one batch)."""
        if not isinstance(entries, Mapping):
            raise TypeError("put_many() takes a mapping of str keys to values")
        encoded = [
            (encode_key(k), encode_value(v, self._limits.max_value_bytes))
            for k, v in entries.items()
        ]
        self._check_writable()
        for k, v in encoded:
            self._apply(k, v)
        self._evict()
        return self._wrote()

    def _existed(self, k: bytes) -> bool | asyncio.Future[bool]:
        """Whether *k* exists now: known from the cache, or read before the delete lands."""
        v = self._cache.get(k, _MISSING)
        if v is not _MISSING or self._complete:
            return v is not None and v is not _MISSING
        if self._pending().clear:
            return False
        inst = self._inst
        fut = asyncio.ensure_future(inst.read(inst.backend.get_many, inst.ref, [k]))
        exists: asyncio.Future[bool] = asyncio.ensure_future(_contains(fut, k))
        self._prereads.append(exists)
        return exists

    def delete(self, key: str) -> Durable:
        """Delete *key*; the awaitable resolves to whether it existed."""
        k = encode_key(key)
        self._check_writable()
        existed = self._existed(k)
        self._apply(k, None)
        return self._wrote(existed)

    def delete_many(self, keys: Iterable[str]) -> Durable:
        """Delete several keys; the awaitable resolves to how many existed."""
        if isinstance(keys, str):
            raise InvalidKey("delete_many() takes an iterable of keys, not one str")
        ks = list(dict.fromkeys(encode_key(k) for k in keys))
        self._check_writable()
        existed = [self._existed(k) for k in ks]
        for k in ks:
            self._apply(k, None)
        return self._wrote(existed)

    def delete_all(self) -> Durable:
        """Delete every key and the alarm, atomically."""
        self._check_writable()
        self._cache.clear()
        self._hot.clear()
        self._cache_bytes = 0
        self._complete = True
        self._dirty.delete_all()
        self._alarm = None
        return self._wrote()

    def set_alarm(self, when: float | _dt.datetime) -> Durable:
        """Set the object's alarm to *when*: seconds since the epoch (a float, e.g.
        ``self.ctx.now() + 60``) or an aware datetime. Values that look like milliseconds
        (≥ 1e11) are a ``ValueError``."""
        t = _alarm_time(when)
        self._check_writable()
        self._alarm = t
        self._dirty.alarm = t
        self._inst._alarm_changed(t)
        return self._wrote()

    def delete_alarm(self) -> Durable:
        """Remove the alarm."""
        self._check_writable()
        self._alarm = None
        self._dirty.alarm = None
        self._inst._alarm_changed(None)
        return self._wrote()

    def transaction(self) -> Transaction:
        """``async with storage.transaction() as txn``: all of it or nothing of it."""
        self._check_writable()
        return Transaction(self)

    async def sync(self) -> None:
        """Wait until every write made so far is durable."""
        await self._wait_durable(self._write_seq, None)

    # -- durability -----------------------------------------------------------------------------

    async def _wait_durable(self, seq: int, value: Any) -> Any:
        if self._durable_seq < seq or self._broken is not None:
            if self._broken is not None:
                raise ObjectReset(f"object was reset: {self._broken}") from None
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def done(exc: BaseException | None) -> None:
                if fut.done():
                    return
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

            self.after_durable(seq, done)
            await fut
        return await _resolve(value)

    def after_durable(self, seq: int, callback: Callable[[BaseException | None], None]) -> None:
        """Call *callback(None)* once writes up to *seq* are durable, or with the reset error."""
        if self._broken is not None:
            callback(ObjectReset(f"object was reset: {self._broken}"))
        elif self._durable_seq >= seq:
            callback(None)
        else:
            heapq.heappush(self._waiters, (seq, next(_seq), callback))

    @property
    def write_seq(self) -> int:
        """Sequence number of the latest write."""
        return self._write_seq

    @property
    def over_dirty_limit(self) -> bool:
        """Whether unflushed writes exceed the backpressure limit (new events wait)."""
        return self._dirty_bytes > self._limits.dirty_bytes

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if self._flush_task is not None or not self._dirty or self._broken is not None:
            if not self._dirty and self._flush_task is None:
                self._durable_seq = self._write_seq
                self._wake(None)
            return
        batch_over, self._dirty = self._dirty, _Overlay()
        if self._drop_one and len(batch_over.writes) > 1:  # mutant: lose a coalesced write
            batch_over.writes.pop(next(iter(batch_over.writes)))
        self._dirty_bytes = 0
        self._inflight = batch_over
        prereads, self._prereads = self._prereads, []
        self._flush_task = asyncio.ensure_future(
            self._flush(batch_over, self._write_seq, prereads)
        )

    async def _flush(
        self, over: _Overlay, seq: int, prereads: builtins.list[asyncio.Future[Any]]
    ) -> None:
        try:
            if prereads:
                await asyncio.gather(*prereads)
            await self._inst.commit(over.to_batch())
        except BaseException as exc:
            self._flush_task = None
            self._inflight = None
            self._inst.reset(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._flush_task = None
        self._inflight = None
        self._durable_seq = seq
        self._wake(None)
        if self._dirty:
            self._start_flush()

    def _wake(self, exc: BaseException | None) -> None:
        while self._waiters and (exc is not None or self._waiters[0][0] <= self._durable_seq):
            _, _, cb = heapq.heappop(self._waiters)
            cb(exc)

    def break_(self, exc: BaseException) -> None:
        """Mark the storage unusable after a failed flush or a reset; fail every waiter."""
        if self._broken is not None:
            return
        self._broken = exc
        if isinstance(exc, ObjectReset):
            err: BaseException = exc
        else:
            err = ObjectReset(f"object was reset: {exc}")
        self._wake(err)  # pending existence reads finish harmlessly on their own

    @property
    def flushing(self) -> bool:
        """Whether writes are waiting to be, or being, flushed."""
        return bool(self._flush_task is not None or self._dirty or self._flush_scheduled)


async def _contains(fut: Awaitable[dict[bytes, bytes]], k: bytes) -> bool:
    return k in await fut


async def _resolve(value: Any) -> Any:
    if isinstance(value, asyncio.Future):
        return await value
    if isinstance(value, list):
        n = 0
        for v in value:
            n += int(await v) if isinstance(v, asyncio.Future) else int(v)
        return n
    return value


class Transaction(_Reader):
    """A transaction: reads see its own writes; on exit all writes apply at once, or none.

    An exception inside the ``async with`` block, or :meth:`rollback`, discards every write.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._over = _Overlay()
        self._done = False
        self._rolled_back = False

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and not self._rolled_back:
            self._commit()
        self._done = True

    def _check(self) -> None:
        if self._done or self._rolled_back:
            raise DuroError("this transaction is finished (committed or rolled back)")

    def rollback(self) -> None:
        """Discard every write of this transaction."""
        self._check()
        self._rolled_back = True

    def _commit(self) -> None:
        s = self._storage
        s._check_writable()
        over = self._over
        if not over:
            return
        if over.clear:
            s.delete_all()
        for k, v in over.writes.items():
            s._apply(k, v)
        if over.alarm is not UNCHANGED:
            s._alarm = over.alarm  # type: ignore[assignment]
            s._dirty.alarm = over.alarm
            s._inst._alarm_changed(over.alarm)  # type: ignore[arg-type]
        s._evict()
        s._wrote()

    async def _get_raw(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        self._check()
        out: dict[bytes, bytes | None] = {}
        rest = []
        for k in keys:
            if k in self._over.writes:
                out[k] = self._over.writes[k]
            elif self._over.clear:
                out[k] = None
            else:
                rest.append(k)
        if rest:
            out.update(await self._storage._get_raw(rest))
        return out

    async def list(
        self,
        *,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        prefix: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """Like :meth:`Storage.list`, seeing this transaction's writes."""
        self._check()
        lo, hi = _list_range(start, start_after, end, prefix, limit)
        mine = {k: v for k, v in self._over.writes.items()
                if (lo is None or k >= lo) and (hi is None or k < hi)}
        asked = None if limit is None else limit + len(mine)
        base: builtins.list[tuple[bytes, bytes]] = []
        if not self._over.clear:
            base = await self._storage._scan(lo, hi, reverse, asked)
        rows = _overlay_rows(base, asked, mine, self._over.clear, reverse, limit)
        return {k.decode(): decode(v) for k, v in rows}

    async def get_alarm(self) -> float | None:
        """The alarm as this transaction sees it."""
        self._check()
        if self._over.alarm is not UNCHANGED:
            return self._over.alarm  # type: ignore[return-value]
        return self._storage._alarm

    def _done_now(self, value: Any = None) -> Durable:
        return Durable(self._storage, 0, value)

    def put(self, key: str, value: Any) -> Durable:
        """Stage a put."""
        k, v = encode_key(key), encode_value(value, self._storage._limits.max_value_bytes)
        self._check()
        self._over.put(k, v)
        return self._done_now()

    def put_many(self, entries: Mapping[str, Any]) -> Durable:
        """Stage several puts."""
        lim = self._storage._limits.max_value_bytes
        encoded = [(encode_key(k), encode_value(v, lim)) for k, v in entries.items()]
        self._check()
        for k, v in encoded:
            self._over.put(k, v)
        return self._done_now()

    def _existed(self, k: bytes) -> bool | asyncio.Future[bool]:
        if k in self._over.writes:
            return self._over.writes[k] is not None
        if self._over.clear:
            return False
        return self._storage._existed(k)

    def delete(self, key: str) -> Durable:
        """Stage a delete; resolves to whether the key existed."""
        k = encode_key(key)
        self._check()
        existed = self._existed(k)
        self._over.put(k, None)
        return self._done_now(existed)

    def delete_many(self, keys: Iterable[str]) -> Durable:
        """Stage several deletes; resolves to how many existed."""
        if isinstance(keys, str):
            raise InvalidKey("delete_many() takes an iterable of keys, not one str")
        ks = list(dict.fromkeys(encode_key(k) for k in keys))
        self._check()
        existed = [self._existed(k) for k in ks]
        for k in ks:
            self._over.put(k, None)
        return self._done_now(existed)

    def delete_all(self) -> Durable:
        """Stage deleting every key and the alarm."""
        self._check()
        self._over.delete_all()
        return self._done_now()

    def set_alarm(self, when: float | _dt.datetime) -> Durable:
        """Stage setting the alarm."""
        t = _alarm_time(when)
        self._check()
        self._over.alarm = t
        return self._done_now()

    def delete_alarm(self) -> Durable:
        """Stage removing the alarm."""
        self._check()
        self._over.alarm = None
        return self._done_now()

