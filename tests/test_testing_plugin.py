"""The pytest plugin as a new user meets it: one backend by default, opt-in parametrizing,
async tests without extra plugins, a manual clock that drives alarms, alarm units."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

import duro

pytest_plugins = ["pytester"]

USER_TESTS = '''
import duro
import pytest


class Counter(duro.DurableObject):
    async def increment(self) -> int:
        n = await self.storage.get("n", 0) + 1
        self.storage.put("n", n)
        return n


async def test_counter(duro_app_factory):
    async with duro_app_factory() as app:
        assert await app.namespace(Counter).get_by_name("a").increment() == 1


@pytest.mark.duro_backends("memory", "lmdb")
async def test_marked(duro_app_factory):
    async with duro_app_factory() as app:
        assert await app.namespace(Counter).get_by_name("a").increment() == 1
'''


@pytest.fixture
def user_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("DURO_TEST_BACKENDS", raising=False)
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester


def test_one_fast_backend_by_default_and_async_tests_just_work(
        user_project: pytest.Pytester) -> None:
    result = user_project.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_counter*sqlite] PASSED*", "*test_marked*memory] PASSED*",
                                 "*test_marked*lmdb] PASSED*"])


def test_backends_are_opt_in_by_option_env_or_ini(user_project: pytest.Pytester,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    result = user_project.runpytest_subprocess("-v", "--duro-backends=memory,sqlite")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_counter*memory] PASSED*", "*test_counter*sqlite] PASSED*"])

    monkeypatch.setenv("DURO_TEST_BACKENDS", "memory")
    result = user_project.runpytest_subprocess("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_counter*memory] PASSED*"])

    monkeypatch.delenv("DURO_TEST_BACKENDS")
    user_project.makeini("[pytest]\nduro_backends = lmdb\n")
    result = user_project.runpytest_subprocess("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_counter*lmdb] PASSED*"])


def test_all_names_only_installed_backends() -> None:
    from duro.testing import test_backend_names

    names = test_backend_names("all")
    assert names[:4] == ["memory", "sqlite", "lmdb", "s3"]
    assert set(names) <= {"memory", "sqlite", "lmdb", "s3", "postgresql"}
    assert test_backend_names("sqlite, all ,sqlite")[:2] == ["sqlite", "memory"]


class Reminder(duro.DurableObject):
    fired: asyncio.Event

    async def remind_in(self, seconds: float) -> float:
        at = self.ctx.now() + seconds
        self.storage.set_alarm(at)
        return at

    async def alarm(self, info: duro.AlarmInfo) -> None:
        self.storage.put("fired_at", self.ctx.now())
        Reminder.fired.set()

    async def fired_at(self) -> float | None:
        value: float | None = await self.storage.get("fired_at")
        return value

    async def pending(self) -> float | None:
        return await self.storage.get_alarm()


async def test_duro_clock_drives_an_alarm_set_from_ctx_now(
        duro_app_factory: Callable[..., duro.App], duro_clock: duro.ManualClock) -> None:
    Reminder.fired = asyncio.Event()
    async with duro_app_factory() as app:
        stub = app.namespace(Reminder).get_by_name("r")
        at = await stub.remind_in(60)
        assert at == duro_clock.time() + 60
        duro_clock.advance(59)
        assert await stub.pending() == at
        assert await stub.fired_at() is None
        duro_clock.advance(1)
        await asyncio.wait_for(Reminder.fired.wait(), 30)
        assert await stub.fired_at() == at


class Alarms(duro.DurableObject):
    async def set_at(self, when: float) -> None:
        self.storage.set_alarm(when)


async def test_alarm_in_milliseconds_is_refused(
        duro_app_factory: Callable[..., duro.App]) -> None:
    async with duro_app_factory(clock=None) as app:
        stub = app.namespace(Alarms).get_by_name("a")
        with pytest.raises(ValueError, match="looks like milliseconds; alarm times are seconds"):
            await stub.set_at(time.time() * 1000)
        await stub.set_at(time.time() + 3600)  # seconds are fine
