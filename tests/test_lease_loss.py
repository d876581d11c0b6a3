"""An owner cut off from storage stops answering within its lease time, and says so.

Two Apps share one S3 store (a moto server), each through its own backend. The S3 backend's
own fault hooks cut one of them from storage: every request it sends from then on hangs
before it leaves (as across a silent partition), or fails (as when the store is down), until
the test heals it. The cut owner must then refuse the calls for its objects - its own and
those forwarded by the other App - with :class:`~duro.errors.BackendUnavailable` saying it
lost its lease and did not run the call, no later than the moment another process may take
the object over; it must never answer from its cache after its lease is gone; a result it held
must stay held; and its write, once healed, must not land (fencing).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import duro
from duro.backends import Backend, open_backend
from duro.backends._s3 import S3Backend
from duro.errors import BackendUnavailable, ObjectReset, Overloaded

LEASE_TTL = 2.0
DRIFT = 0.5
TAKEOVER = LEASE_TTL + 2 * DRIFT
"""From a cut, the longest time before another process may take the object over: the cut
owner's last renewal was sent before the cut, its record ends one lease after that, and a
challenger waits one more drift margin (its local validity ends a margin *before* the record's
end, so two margins separate the two)."""


class Counter(duro.DurableObject):
    async def increment(self, by: int = 1) -> int:
        n = await self.storage.get("n", 0)
        self.storage.put("n", n + by)
        return int(n + by)

    async def read(self) -> int:
        return int(await self.storage.get("n", 0))


class Cut:
    """Cuts one S3 backend from its store with its fault hooks, until :meth:`heal`."""

    def __init__(self, backend: S3Backend, how: str) -> None:
        self.backend = backend
        self.how = how
        self.healed = threading.Event()

    def __enter__(self) -> Cut:
        if self.how == "hang":  # requests never leave: they wait until the partition heals
            self.backend._faults.plan("hook", hook=lambda: self.healed.wait(120), count=100_000)
        else:  # the store answers "unavailable" at once
            self.backend._faults.plan("503", count=100_000)
        return self

    def heal(self) -> None:
        self.backend._faults.clear()
        self.healed.set()

    def __exit__(self, *exc: object) -> None:
        self.heal()


@pytest.fixture
def url(duro_s3_endpoint: str) -> str:
    return (f"s3://duro-test/lease-loss-{uuid.uuid4().hex[:10]}?endpoint_url={duro_s3_endpoint}"
            "&region=us-east-1")


@pytest.fixture
def backends(url: str) -> Iterator[list[S3Backend]]:
    opened: list[S3Backend] = []
    for _ in range(2):
        b = open_backend(url)
        assert isinstance(b, S3Backend)
        opened.append(b)
    yield opened
    for b in opened:
        b.close()


def _app(backend: Backend) -> duro.App:
    return duro.App(backend, lease_ttl=LEASE_TTL, drift_margin=DRIFT, call_timeout=60.0,
                    idle_timeout=600.0)


async def _outcome(call: Any) -> tuple[str, Any, float]:
    """``("value"|"refused"|"shed"|"timeout", value or error, monotonic time)`` of one call
    (``shed``: refused as overloaded while renewals ran late, before the lease ran out)."""
    try:
        value = await asyncio.wait_for(call, 1.0)
    except BackendUnavailable as exc:
        return "refused", exc, time.monotonic()
    except Overloaded as exc:
        return "shed", exc, time.monotonic()
    except TimeoutError:
        return "timeout", None, time.monotonic()
    return "value", value, time.monotonic()


@pytest.mark.parametrize("how", ["hang", "fail"])
def test_owner_cut_from_storage_refuses_within_its_lease(
        backends: list[S3Backend], how: str, report_figure: Callable[[str], None]) -> None:
    async def main() -> None:
        async with _app(backends[0]) as a, _app(backends[1]) as b:
            on_a, on_b = a.namespace(Counter), b.namespace(Counter)
            x_a, x_b = on_a.get_by_name("x"), on_b.get_by_name("x")
            for _ in range(3):
                await x_a.increment()  # a owns x, with n = 3 in its cache
            assert await x_b.read() == 3  # b forwards to a
            with Cut(backends[0], how):
                cut_at = time.monotonic()
                outcomes: list[tuple[str, Any, float]] = []
                for _ in range(int(2 * TAKEOVER / 0.05)):  # bounded: well past a takeover
                    outcomes.append(await _outcome(x_a.read()))
                    if outcomes[-1][0] == "refused":
                        break
                    await asyncio.sleep(0.05)
                kinds = [k for k, _, _ in outcomes]
                assert "refused" in kinds, f"the cut owner never refused: {kinds}"
                _, err, refused_at = outcomes[-1]
                # Within its lease time: before another process may take the object over.
                assert refused_at - cut_at <= TAKEOVER, (refused_at - cut_at, kinds)
                assert "lease" in err.message and "not run" in err.message, err.message
                assert err.retry_after is not None and err.retry_after >= 1
                report_figure(f"owner cut from storage ({how}): refused "
                              f"{refused_at - cut_at:.2f} s after the cut (lease {LEASE_TTL} s, "
                              "takeover from "
                              f"{TAKEOVER} s); {kinds.count('value')} answers before")
                # A call forwarded from the other App is refused the same way, by the owner.
                forwarded = await _outcome(x_b.read())
                assert forwarded[0] == "refused", forwarded
                assert "lease" in forwarded[1].message, forwarded[1].message
                # And it keeps refusing; never a value from its cache.
                again = [await _outcome(x_a.read()) for _ in range(5)]
                assert [k for k, _, _ in again] == ["refused"] * 5, again
    asyncio.run(main())


def test_cut_owner_holds_its_result_and_its_write_never_lands(backends: list[S3Backend]) -> None:
    async def main() -> None:
        async with _app(backends[0]) as a, _app(backends[1]) as b:
            x_a, x_b = a.namespace(Counter).get_by_name("y"), b.namespace(Counter).get_by_name("y")
            assert await x_a.increment() == 1
            with Cut(backends[0], "hang") as cut:
                # The turn runs on a's cache; its flush cannot reach storage: the result waits.
                held = asyncio.ensure_future(x_a.increment(10))
                # b takes over once a's lease is over, from what storage holds (n = 1).
                values: list[int] = []
                for _ in range(int(4 * TAKEOVER / 0.05)):
                    try:
                        values.append(await asyncio.wait_for(x_b.read(), 1.0))
                        break
                    except (BackendUnavailable, TimeoutError):
                        await asyncio.sleep(0.05)
                assert values == [1], values
                assert not held.done()  # the output gate still holds a's result
                cut.heal()
                # a's flush now reaches storage under its old epoch: fenced, never landed.
                with pytest.raises(ObjectReset):
                    await asyncio.wait_for(held, 30)
            assert await x_b.increment() == 2
            assert await x_a.read() == 2  # a forwards to b, the owner now
        async with _app(open_backend(backends[0].url.raw)) as c:  # storage alone says so
            assert await c.namespace(Counter).get_by_name("y").read() == 2
    asyncio.run(main())
