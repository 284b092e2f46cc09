"""Supervised poller loops: a failure is logged once per streak, counted, retried with a
backoff that starts again after a success, and reported; polling never stops silently."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from gateway.core.model import TaskKey
from gateway.core.policy import RetryDelay
from gateway.exceptions import BackendError
from gateway.hub.local import LocalHub
from gateway.metrics import Metrics
from gateway.poller.engine import LoopHealth, Poller, supervise
from gateway.poller.schedule import LocalSchedule
from gateway.providers.base import UpstreamResponse
from tests.unit.poller.fakes import Call, FakeClock, FakeUpstream, aholo_listing, response, runtime

LOCKED = sqlite3.OperationalError("database is locked")


def failures_of(metrics: Metrics, loop: str) -> float:
    value: float = metrics.loop_failures.labels(loop)._value.get()
    return value


class Script:
    """A loop step that raises the scripted errors in turn (``None``: succeed)."""

    def __init__(self, outcomes: Sequence[BaseException | None]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else asyncio.CancelledError()
        if outcome is not None:
            raise outcome


async def test_failures_are_retried_with_a_backoff_that_resets_after_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    metrics = Metrics()
    health = LoopHealth("housekeeping")
    step = Script([LOCKED, LOCKED, BackendError("store down"), None, None, LOCKED, None])
    with caplog.at_level(logging.INFO, "pollcast.poller"), pytest.raises(asyncio.CancelledError):
        await supervise(health, step, metrics=metrics, sleep=clock.sleep)
    assert clock.slept == pytest.approx([0.2, 0.4, 0.8, 0.2])
    assert failures_of(metrics, "housekeeping") == 4
    assert metrics.backend_errors._value.get() == 1  # the translated one
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per streak, not once per failure
    assert "database is locked" in warnings[0].getMessage()
    assert warnings[0].exc_info is not None  # untranslated: the traceback is kept
    recovered = [r for r in caplog.records if "works again" in r.getMessage()]
    assert len(recovered) == 2
    assert health.failures == 0 and health.total_failures == 4 and health.problem is None


async def test_a_failing_loop_is_reported_while_it_fails() -> None:
    clock = FakeClock()
    health = LoopHealth("lane:aholo")
    seen: list[str | None] = []

    async def sleep(seconds: float) -> None:
        seen.append(health.problem)
        await clock.sleep(seconds)

    step = Script([LOCKED, None])
    with pytest.raises(asyncio.CancelledError):
        await supervise(health, step, metrics=Metrics(), sleep=sleep, delays=RetryDelay(1.0, 1.0))
    assert seen == ["poller loop lane:aholo failing (OperationalError: database is locked)"]
    assert health.problem is None


async def test_a_nudge_ends_the_backoff_at_once() -> None:
    """``retry_now`` (the store answers again) cuts a failing loop's wait short; the
    nudge is used up, so the next failure waits its full backoff again."""
    health = LoopHealth("lane:aholo")
    waits: list[float] = []
    asleep = asyncio.Event()

    async def sleep(seconds: float) -> None:  # a backoff that never ends on its own
        waits.append(seconds)
        asleep.set()
        await asyncio.Event().wait()

    step = Script([LOCKED, LOCKED])
    loop = asyncio.create_task(
        supervise(health, step, metrics=Metrics(), sleep=sleep, delays=RetryDelay(60.0, 60.0))
    )
    for expected_calls in (1, 2):
        await asyncio.wait_for(asleep.wait(), 1)
        asleep.clear()
        assert step.calls == expected_calls and health.failing
        health.retry_now.set()
    with pytest.raises(asyncio.CancelledError):  # the script's end: the loop is cancelled
        await asyncio.wait_for(loop, 1)
    assert step.calls == 3 and waits == [60.0, 60.0]
    assert not health.retry_now.is_set()


async def test_a_nudge_during_a_step_counts_if_that_step_fails() -> None:
    """The store came back while a step was still waiting on the old link: when that
    step fails, the loop tries again at once instead of waiting out its backoff."""
    health = LoopHealth("lane:aholo")
    waits: list[float] = []
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            health.retry_now.set()  # the nudge arrives mid-step
            raise LOCKED
        if calls == 2:
            raise LOCKED  # no nudge this time: the full backoff
        raise asyncio.CancelledError

    async def sleep(seconds: float) -> None:  # a fake clock's: over at once
        waits.append(seconds)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(
            supervise(health, step, metrics=Metrics(), sleep=sleep, delays=RetryDelay(60.0, 60.0)),
            1,
        )
    assert calls == 3 and waits == [60.0]  # the first failure did not wait


async def test_retry_now_nudges_every_loop() -> None:
    def unused(call: Call) -> UpstreamResponse:
        raise AssertionError("not started: nothing is polled")

    poller = Poller(LocalHub(":memory:"), {"aholo": runtime("aholo")}, FakeUpstream(unused))
    failing, fine = LoopHealth("lane:aholo", failures=2), LoopHealth("housekeeping")
    poller.loops = {h.name: h for h in (failing, fine)}
    poller.retry_now()
    assert failing.retry_now.is_set() and fine.retry_now.is_set()


class FlakyHub(LocalHub):
    """A local hub whose purge fails the first ``n`` times, and drop_watch the first time."""

    def __init__(self, n: int, error: Exception) -> None:
        super().__init__(":memory:")
        self.left = {"purge": n, "drop_watch": 1}
        self.calls = {"purge": 0, "drop_watch": 0}
        self.error = error

    def _maybe_fail(self, what: str) -> None:
        self.calls[what] += 1
        if self.left[what] > 0:
            self.left[what] -= 1
            raise self.error

    async def purge(self, now: float) -> int:
        self._maybe_fail("purge")
        return await super().purge(now)

    async def drop_watch(self, task: str) -> bool:
        self._maybe_fail("drop_watch")
        return await super().drop_watch(task)


@pytest.fixture(params=["untranslated", "translated"])
async def flaky_hub(request: pytest.FixtureRequest) -> AsyncIterator[FlakyHub]:
    error = LOCKED if request.param == "untranslated" else BackendError("database is locked")
    hub = FlakyHub(3, error)
    await hub.start()
    yield hub
    await hub.close()


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Let the poller's loops run (on the fake clock) until ``condition`` holds."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (polling state the loops change)
            await asyncio.sleep(0.001)


async def test_a_hub_failing_in_housekeeping_and_finish_does_not_stop_polling(
    flaky_hub: FlakyHub,
) -> None:
    clock = FakeClock()

    def handler(call: Call) -> UpstreamResponse:
        tasks = [{"taskId": i, "status": 3 if i == "DONE" else 2} for i in call.json]
        return response({"c": "0", "d": tasks, "m": None, "f": ""})

    upstream = FakeUpstream(handler, clock=clock)

    async def slow_sleep(seconds: float) -> None:
        # Fake time, but the loops also give the event loop a real moment.
        clock.advance(seconds)
        await asyncio.sleep(0.001)

    poller = Poller(
        flaky_hub,
        {"aholo": runtime("aholo", interval_s=0.2, max_interval_s=0.2)},
        {"aholo": upstream},  # type: ignore[dict-item]
        metrics=Metrics(),
        grace_s=0.3,
        tick_s=0.001,
        purge_every_s=0.2,
        wall=clock.wall,
        monotonic=clock.mono,
        sleep=slow_sleep,
        rng=random.Random(1),
    )
    await poller.start()
    try:
        await poller.watch(TaskKey("aholo", "DONE"), deadline_s=1e6)
        await poller.watch(TaskKey("aholo", "BUSY"), deadline_s=1e6)
        # The purge fails three times; finishing DONE fails once (its drop_watch).
        await _until(lambda: flaky_hub.calls["purge"] >= 5 and flaky_hub.calls["drop_watch"] >= 1)
        polled = len(upstream.calls)
        await _until(lambda: len(upstream.calls) >= polled + 3)
        assert failures_of(poller.metrics, "housekeeping") == 3
        assert poller.running and poller.problems() == []
        # DONE was finished (never polled again) although dropping its watch failed.
        assert set(poller.lane("aholo").tasks) == {"aholo:BUSY"}
        assert all(c.json == ["BUSY"] for c in upstream.calls[polled:])
    finally:
        await poller.close()


async def test_a_lanes_schedule_retry_delay_resets_after_success() -> None:
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "pollcast-lane:aholo-backoff":
            slept.append(seconds)
        await clock.sleep(seconds)

    class FlakySchedule(LocalSchedule):
        """``next_due`` fails on calls 1-3 and 6-7."""

        calls = 0

        async def next_due(self, provider: str) -> float | None:
            FlakySchedule.calls += 1
            if FlakySchedule.calls in (1, 2, 3, 6, 7):
                raise BackendError("schedule unavailable")
            return await super().next_due(provider)

    hub = LocalHub(":memory:")
    await hub.start()
    poller = Poller(
        hub,
        {"aholo": runtime("aholo")},
        {"aholo": FakeUpstream(lambda call: aholo_listing(call.json))},  # type: ignore[dict-item]
        schedule=FlakySchedule(),
        tick_s=0.001,
        wall=clock.wall,
        monotonic=clock.mono,
        sleep=sleep,
    )
    await poller.start()
    try:
        await _until(lambda: FlakySchedule.calls >= 10)
    finally:
        await poller.close()
        await hub.close()
    # Doubling while failing, back to the first delay after the successes in between.
    assert slept == pytest.approx([0.2, 0.4, 0.8, 0.2, 0.4])
    assert failures_of(poller.metrics, "lane:aholo") == 5
