"""Structured log events (``extra=`` fields on records of the ``duro`` loggers): activation,
reset and alarm failure, as a log pipeline would read them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import pytest

import duro


class Events(logging.Handler):
    """Collects records that carry an ``event`` field; wakes waiters per event name."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.seen: dict[str, asyncio.Event] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event is not None:
            self.records.append(record)
            self.waiter(event).set()

    def waiter(self, event: str) -> asyncio.Event:
        return self.seen.setdefault(event, asyncio.Event())


@pytest.fixture
def events() -> Iterator[Events]:
    handler = Events()
    logger = logging.getLogger("duro")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


class Flaky(duro.DurableObject):
    async def arm(self) -> None:
        self.storage.set_alarm(self.ctx.now() + 10)

    async def give_up(self) -> None:
        self.ctx.abort("the user gave up")

    async def alarm(self, info: duro.AlarmInfo) -> None:
        raise RuntimeError("the alarm broke")


async def test_activation_reset_and_alarm_failure_events(
        duro_app_factory: Callable[..., duro.App], duro_clock: duro.ManualClock,
        events: Events) -> None:
    async with duro_app_factory() as app:
        stub = app.namespace(Flaky).get_by_name("f")
        await stub.arm()
        duro_clock.advance(10)
        await asyncio.wait_for(events.waiter("alarm_failure").wait(), 30)
        with pytest.raises(duro.ObjectReset, match="the user gave up"):
            await stub.give_up()
        await asyncio.wait_for(events.waiter("reset").wait(), 30)
    by_event = {r.event: r for r in events.records}  # type: ignore[attr-defined]
    oid = app.namespace(Flaky).id_from_name("f").hex
    activation = by_event["activation"]
    assert (activation.namespace, activation.object_id, activation.object_name) == (  # type: ignore[attr-defined]
        "Flaky", oid, "f")
    failure = by_event["alarm_failure"]
    assert failure.retry_count == 0 and failure.will_retry is True  # type: ignore[attr-defined]
    assert failure.exc_info is not None and "the alarm broke" in str(failure.exc_info[1])
    assert failure.levelno == logging.WARNING
    reset = by_event["reset"]
    assert "the user gave up" in reset.reason  # type: ignore[attr-defined]
    assert app.stats()["Flaky"].alarm_failures == 1
