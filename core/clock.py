"""The one injectable clock that leases, alarms and timeouts use.

:class:`SystemClock` reads the real clocks. :class:`ManualClock` only moves when a test calls
:meth:`ManualClock.advance`, which also wakes the sleepers whose time has come.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time for durations, wall time for what is stored, and sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (lease validity, timeouts)."""
        ...

    def time(self) -> float:
        """Wall-clock epoch seconds (lease ends and alarm times stored in the backend)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for *seconds* of this clock's time."""
        ...


class SystemClock:
    """The real clocks: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that tests move by hand; :meth:`advance` wakes due sleepers in time order."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall0 = start
        self._now = 0.0
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall0 + self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper that is now due."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
