"""The injectable clock: the real one, and the manual one tests move by hand."""

from __future__ import annotations

import asyncio
import time

import pytest

from duro.clock import Clock, ManualClock, SystemClock


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SystemClock(), Clock)
    assert isinstance(ManualClock(), Clock)


def test_system_clock_reads_the_real_clocks() -> None:
    c = SystemClock()
    before_wall, before_mono = time.time(), time.monotonic()
    wall, mono = c.time(), c.monotonic()
    assert before_wall <= wall <= time.time()
    assert before_mono <= mono <= time.monotonic()


def test_system_clock_sleep_accepts_negative() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        loop.call_soon(seen.append, "ready callback")
        loop.call_later(4.0, seen.append, "4 s timer")
        assert await SystemClock().sleep(-5) is None
        seen.append("slept")
        return seen

    # It yields once, like sleep(0), and returns long before a 4 s timer: no error, no wait.
    assert asyncio.run(main()) == ["ready callback", "slept"]


def test_manual_clock_moves_only_when_advanced() -> None:
    c = ManualClock(start=1000.0)
    assert (c.time(), c.monotonic()) == (1000.0, 0.0)
    c.advance(2.5)
    assert (c.time(), c.monotonic()) == (1002.5, 2.5)


def test_advance_wakes_due_sleepers_in_time_order() -> None:
    async def main() -> list[str]:
        c = ManualClock()
        woke: list[str] = []

        async def sleeper(name: str, seconds: float) -> None:
            await c.sleep(seconds)
            woke.append(f"{name}@{c.monotonic()}")

        tasks = [asyncio.create_task(sleeper(n, s))
                 for n, s in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0), ("late", 10.0))]
        await asyncio.sleep(0)  # let every task reach its sleep
        c.advance(0.5)
        await asyncio.sleep(0)
        assert woke == []
        c.advance(2.5)  # now 3.0: a, a2, b, c are due; late is not
        for _ in range(3):
            await asyncio.sleep(0)
        assert [w.split("@")[0] for w in woke] == ["a", "a2", "b", "c"]
        assert not tasks[-1].done()
        c.advance(7.0)
        await asyncio.gather(*tasks)
        return woke

    woke = asyncio.run(main())
    assert woke[-1] == "late@10.0"


def test_sleep_zero_yields_without_advancing() -> None:
    async def main() -> None:
        c = ManualClock()
        await asyncio.wait_for(c.sleep(0), timeout=5)
        await asyncio.wait_for(c.sleep(-1), timeout=5)
        assert c.monotonic() == 0.0

    asyncio.run(main())


def test_cancelled_sleeper_does_not_break_advance() -> None:
    async def main() -> None:
        c = ManualClock()
        t1 = asyncio.create_task(c.sleep(1))
        t2 = asyncio.create_task(c.sleep(2))
        await asyncio.sleep(0)
        t1.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t1
        c.advance(5)
        await asyncio.wait_for(t2, timeout=5)

    asyncio.run(main())
