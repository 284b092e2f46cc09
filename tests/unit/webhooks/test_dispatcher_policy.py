"""The delivery loop's policies with an injected clock, sleep and sender: fencing, supervision.

The outbox is the real :class:`SqliteOutbox` (in memory); only the network
and the passing of time are stand-ins, so nothing here sleeps for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from gateway.exceptions import BackendError
from gateway.metrics import Metrics
from gateway.webhooks.dispatcher import Dispatcher
from gateway.webhooks.model import Delivery, WebhookTarget
from gateway.webhooks.outbox import Outbox, SqliteOutbox
from gateway.webhooks.retry import Backoff, RetrySchedule
from gateway.webhooks.sender import Attempt, DeliveryFailed
from gateway.webhooks.signing import decode_secret
from gateway.webhooks.targets import UrlPolicy

KEY = decode_secret("whsec_" + "cG9saWN5LXRlc3Qta2V5LW9mLTMyLWJ5dGVzLi4uLi4=")
T0 = 1_800_000_000.0
TIMEOUT_S = 1.0  # the lease is 2 × 1 + 5 = 7 s
URL = "http://127.0.0.1:9/in"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class GatedSender:
    """Each POST waits until the test answers it; records what was sent."""

    def __init__(self) -> None:
        self.sent: list[Attempt] = []
        self._gates: list[asyncio.Future[int]] = []

    async def post(self, attempt: Attempt) -> int:
        self.sent.append(attempt)
        gate = asyncio.get_running_loop().create_future()
        self._gates.append(gate)
        return await gate

    def answer(self, index: int, status: int) -> None:
        self._gates[index].set_result(status)


class Sleeps:
    """An injected sleep: records each delay and only yields to the loop."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.now += delay
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], turns: int = 2000) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def delivery(seq: int = 1) -> Delivery:
    return Delivery(
        id=f"vp:t1:{seq}",
        task="vp:t1",
        seq=seq,
        url=URL,
        payload="{}",
        created_at=T0,
        due_at=T0,
    )


async def queue(outbox: Outbox, deliveries: Sequence[Delivery]) -> None:
    await outbox.register("vp:t1", WebhookTarget(URL), 0)
    await outbox.enqueue("vp:t1", deliveries, max(d.seq for d in deliveries), done=False)


@contextlib.asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    runner = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await dispatcher.close()


def dispatcher(outbox: Outbox, clock: Clock, sender: object, **kw: object) -> Dispatcher:
    return Dispatcher(
        outbox,
        key=KEY,
        policy=UrlPolicy(allow_private=True),
        schedule=RetrySchedule(base_s=2.0, max_s=8.0, max_age_s=3600.0),
        timeout_s=TIMEOUT_S,
        poll_s=0.005,
        concurrency=4,
        sender=sender,  # type: ignore[arg-type]
        wall=clock,
        rng=random.Random(11),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def outbox() -> AsyncIterator[SqliteOutbox]:
    store = SqliteOutbox(":memory:", clock=lambda: T0)
    await store.start()
    yield store
    await store.close()


async def test_a_stale_attempt_cannot_undo_the_claim_that_replaced_it(
    outbox: SqliteOutbox,
) -> None:
    # The node is paused mid-attempt past its lease (SIGSTOP); when it runs
    # again its loop claims the delivery anew before the old attempt answers.
    # The old attempt's failure must not reschedule what the new one holds —
    # else the new one's success could not be recorded and the event would
    # go out a third time.
    clock, sender, metrics = Clock(), GatedSender(), Metrics()
    await queue(outbox, [delivery()])
    async with running(dispatcher(outbox, clock, sender, metrics=metrics)) as d:
        await until(lambda: len(sender.sent) == 1)
        clock.now += 10.0  # past the 7 s lease
        d.wake()
        await until(lambda: len(sender.sent) == 2)
        sender.answer(0, 500)  # the stale attempt fails late
        await until(lambda: d.lost_claims == 1)
        sender.answer(1, 204)  # the current one succeeds
        await until(lambda: d.delivered == 1)
        await until(lambda: not d._attempts)
        assert await outbox.pending() == 0
        clock.now += 3600.0  # much later: nothing is left to send
        d.wake()
        await asyncio.sleep(0.05)
    assert len(sender.sent) == 2
    assert {a.headers["webhook-id"] for a in sender.sent} == {"vp:t1:1"}
    assert metrics.registry.get_sample_value("pollcast_webhook_claims_lost_total") == 1


async def test_a_stale_success_does_not_finish_what_another_attempt_holds(
    outbox: SqliteOutbox,
) -> None:
    clock, sender = Clock(), GatedSender()
    await queue(outbox, [delivery()])
    async with running(dispatcher(outbox, clock, sender)) as d:
        await until(lambda: len(sender.sent) == 1)
        clock.now += 10.0
        d.wake()
        await until(lambda: len(sender.sent) == 2)
        sender.answer(0, 204)  # the stale attempt's success is not its to record
        await until(lambda: d.lost_claims == 1)
        assert await outbox.pending() == 1
        sender.answer(1, 503)  # the current attempt fails: rescheduled by it
        await until(lambda: not d._attempts)
    [row] = outbox.db.execute("SELECT attempts, last_error, claim FROM webhook_deliveries")
    assert row == (1, "HTTP 503", None)


async def test_a_claim_found_too_old_to_send_is_not_sent(outbox: SqliteOutbox) -> None:
    # Paused between claiming and sending: the lease no longer covers an attempt.
    clock, sender = Clock(), GatedSender()
    await queue(outbox, [delivery()])
    d = dispatcher(outbox, clock, sender)
    [claimed] = await outbox.claim(T0, T0 + d.lease_s, 1, d.claim_token())
    clock.now += d.lease_s - TIMEOUT_S / 2
    await d._deliver(claimed, T0 + d.lease_s)
    assert sender.sent == []
    assert await outbox.pending() == 1


def test_claim_tokens_are_never_reused() -> None:
    d = dispatcher(SqliteOutbox(":memory:"), Clock(), GatedSender())
    other = dispatcher(SqliteOutbox(":memory:"), Clock(), GatedSender())
    tokens = [d.claim_token() for _ in range(100)] + [other.claim_token() for _ in range(100)]
    assert len(set(tokens)) == 200


class FlakyOutbox(SqliteOutbox):
    """The real outbox, whose next ``fail`` claims raise (a locked file, a Redis restart)."""

    def __init__(self, failure: Exception) -> None:
        super().__init__(":memory:", clock=lambda: T0)
        self.fail = 0
        self.failure = failure
        self.claims = 0

    async def claim(self, now: float, lease_until: float, limit: int, token: str) -> list[Delivery]:
        self.claims += 1
        if self.fail > 0:
            self.fail -= 1
            raise self.failure
        return await super().claim(now, lease_until, limit, token)


@pytest.mark.parametrize(
    "failure",
    [BackendError("webhook outbox claim failed: database is locked"), RuntimeError("a bug")],
)
async def test_the_loop_outlives_a_failing_store_backing_off_and_logging_once(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pollcast.webhooks")
    clock, metrics = Clock(), Metrics()
    sleeps = Sleeps(clock)
    store = FlakyOutbox(failure)
    await store.start()
    try:
        await queue(store, [delivery()])
        store.fail = 6
        sender = GatedSender()
        backoff = Backoff(base_s=1.0, max_s=8.0)
        d = dispatcher(store, clock, sender, sleep=sleeps, backoff=backoff, metrics=metrics)
        async with running(d):
            await until(lambda: len(sender.sent) == 1)
            sender.answer(0, 204)
            await until(lambda: d.delivered == 1)
        assert await store.pending() == 0
    finally:
        await store.close()
    # Six failures: six growing waits, drawn from the dispatcher's random source.
    rng = random.Random(11)
    assert sleeps.delays == [backoff.delay(n, rng) for n in range(1, 7)]
    assert d.store_failures == 6
    assert metrics.registry.get_sample_value("pollcast_backend_errors_total") == 6
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "cannot read the webhook outbox" in m]) == 1
    assert len([m for m in messages if "readable again after 6 failed" in m]) == 1


async def test_a_finish_the_store_refuses_is_retried_not_resent(
    outbox: SqliteOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    # Delivered, then the store refuses to record it (locked): the write is
    # retried while the lease lasts, so the receiver does not get it twice.
    caplog.set_level(logging.INFO, logger="pollcast.webhooks")
    clock = Clock()
    sleeps = Sleeps(clock)
    failures = 3
    real_finish = outbox.finish

    async def locked_finish(d: Delivery) -> bool:
        nonlocal failures
        if failures:
            failures -= 1
            raise BackendError("webhook outbox write failed: database is locked")
        return await real_finish(d)

    outbox.finish = locked_finish  # type: ignore[method-assign]
    sender = GatedSender()
    await queue(outbox, [delivery()])
    d = dispatcher(outbox, clock, sender, sleep=sleeps, backoff=Backoff(0.5, 2.0))
    async with running(d):
        await until(lambda: len(sender.sent) == 1)
        sender.answer(0, 204)
        await until(lambda: not d._attempts and failures == 0)
        await until(lambda: d.store_failures == 3)
    assert await outbox.pending() == 0
    assert len(sender.sent) == 1
    assert len(sleeps.delays) == 3 and sum(sleeps.delays) < d.lease_s
    assert len([r for r in caplog.records if "could not mark done" in r.getMessage()]) == 1


async def test_a_finish_refused_past_the_lease_is_left_to_the_next_claim(
    outbox: SqliteOutbox, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    sleeps = Sleeps(clock)

    async def always_locked(d: Delivery) -> bool:
        raise BackendError("webhook outbox write failed: database is locked")

    outbox.finish = always_locked  # type: ignore[method-assign]
    sender = GatedSender()
    await queue(outbox, [delivery()])
    d = dispatcher(outbox, clock, sender, sleep=sleeps, backoff=Backoff(1.0, 2.0))
    [claimed] = await outbox.claim(T0, T0 + d.lease_s, 1, d.claim_token())
    await d._finish(claimed, T0 + d.lease_s, abandoned=False)
    assert clock.now < T0 + d.lease_s  # gave up before the lease ran out
    assert any("its claim lapses" in r.getMessage() for r in caplog.records)


async def test_a_failed_attempt_is_rescheduled_by_the_schedule(outbox: SqliteOutbox) -> None:
    clock = Clock()
    await queue(outbox, [delivery()])

    class Refusing(GatedSender):
        async def post(self, attempt: Attempt) -> int:
            self.sent.append(attempt)
            raise DeliveryFailed("connection failed (ClientConnectorError)")

    refusing = Refusing()
    async with running(dispatcher(outbox, clock, refusing)) as d:
        await until(lambda: len(refusing.sent) == 1)
        await until(lambda: not d._attempts)
    [row] = outbox.db.execute("SELECT attempts, last_error, due_at FROM webhook_deliveries")
    attempts, error, due_at = row
    assert (attempts, error) == (1, "connection failed (ClientConnectorError)")
    assert T0 + 1.0 <= due_at <= T0 + 2.0  # base 2 s, equal jitter: 1–2 s


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base_s=0.5, max_s=30.0)
    rng = random.Random(2)
    for failures in range(1, 20):
        step = min(30.0, 0.5 * 2 ** (failures - 1))
        for _ in range(20):
            assert step / 2 <= backoff.delay(failures, rng) <= step
    assert backoff.delay(10_000, rng) <= 30.0
    assert backoff.delay(0, rng) <= 0.5
