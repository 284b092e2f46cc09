"""Queueing: committed events become deliveries once, even across a crash between steps.

A real :class:`LocalHub` and :class:`SqliteOutbox` (in memory); the
dispatcher is not started, so what was queued can be read back with a claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.core.model import State
from gateway.exceptions import BackendError
from gateway.hub.local import LocalHub
from gateway.webhooks.model import WebhookTarget
from gateway.webhooks.outbox import SqliteOutbox
from gateway.webhooks.service import Webhooks
from gateway.webhooks.settings import WebhooksConfig
from tests.unit.webhooks.support import TASK, event

NOW = 1_800_000_000.0
CONFIG = WebhooksConfig(secret="whsec_" + "dW5pdC10ZXN0LXNlY3JldC1vZi0zMi1ieXRlcyEhISE=")


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Webhooks, LocalHub, SqliteOutbox]]:
    hub = LocalHub(":memory:", clock=lambda: NOW)
    outbox = SqliteOutbox(":memory:", clock=lambda: NOW)
    await hub.start()
    await outbox.start()
    webhooks = Webhooks(CONFIG, outbox, hub, wall=lambda: NOW)
    yield webhooks, hub, outbox
    await outbox.close()
    await hub.close()


async def queued(outbox: SqliteOutbox) -> list[tuple[str, str]]:
    claimed = await outbox.claim(NOW, NOW + 30, 100, "reader")
    for delivery in claimed:
        await outbox.finish(delivery)
    return [(d.id, json.loads(d.payload)["data"]["state"]) for d in claimed]


async def test_committed_events_of_registered_tasks_are_queued_once(
    parts: tuple[Webhooks, LocalHub, SqliteOutbox],
) -> None:
    webhooks, hub, outbox = parts
    await webhooks.register(TASK, WebhookTarget("https://h.example/in", ("state", "terminal")))
    first = [event(1, State.QUEUED), event(1, State.RUNNING, task="vp:other")]
    await hub.commit([first[0]], terminal_ttl_s=60)
    await webhooks.committed(first)
    await webhooks.committed(first)  # told twice: still once
    assert await queued(outbox) == [(f"{TASK}:1", "queued")]

    final = [event(2, State.RUNNING), event(3, State.SUCCEEDED)]
    await hub.commit(final, terminal_ttl_s=60)
    await webhooks.committed(final)
    assert await queued(outbox) == [(f"{TASK}:2", "running"), (f"{TASK}:3", "succeeded")]
    assert await outbox.registrations() == {}  # the terminal event ends the registration


async def test_catch_up_queues_what_a_crash_left_between_commit_and_queue(
    parts: tuple[Webhooks, LocalHub, SqliteOutbox],
) -> None:
    webhooks, hub, outbox = parts
    await webhooks.register(TASK, WebhookTarget("https://h.example/in", ("terminal",)))
    # The hub stored these, then the node died before queueing them.
    await hub.commit([event(1, State.RUNNING), event(2, State.FAILED)], terminal_ttl_s=60)
    await webhooks.catch_up()
    await webhooks.catch_up()
    assert await queued(outbox) == [(f"{TASK}:2", "failed")]


async def test_registering_after_the_end_owes_the_final_event_only(
    parts: tuple[Webhooks, LocalHub, SqliteOutbox],
) -> None:
    webhooks, hub, outbox = parts
    await hub.commit([event(1, State.RUNNING), event(2, State.SUCCEEDED)], terminal_ttl_s=60)
    await webhooks.register(TASK, WebhookTarget("https://h.example/in", ("state", "terminal")))
    assert await queued(outbox) == [(f"{TASK}:2", "succeeded")]


async def test_registering_mid_way_owes_only_what_comes_next(
    parts: tuple[Webhooks, LocalHub, SqliteOutbox],
) -> None:
    webhooks, hub, outbox = parts
    await hub.commit([event(1, State.QUEUED)], terminal_ttl_s=60)
    await webhooks.register(TASK, WebhookTarget("https://h.example/in", ("state",)))
    assert await queued(outbox) == []
    await hub.commit([event(2, State.RUNNING)], terminal_ttl_s=60)
    await webhooks.committed([event(2, State.RUNNING)])
    assert await queued(outbox) == [(f"{TASK}:2", "running")]


async def test_events_the_store_failed_to_queue_are_queued_once_it_recovers(
    parts: tuple[Webhooks, LocalHub, SqliteOutbox], caplog: pytest.LogCaptureFixture
) -> None:
    # The outbox refuses writes for a while (a locked file, Redis restarting):
    # the committed events must not wait for the next start to be queued.
    webhooks, hub, outbox = parts
    delays: list[float] = []

    async def no_wait(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    webhooks.dispatcher.sleep = no_wait
    await webhooks.register(TASK, WebhookTarget("https://h.example/in", ("state", "terminal")))
    real_enqueue = outbox.enqueue
    refusals = 4

    async def locked(*args: Any, **kwargs: Any) -> int:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise BackendError("webhook outbox write failed: database is locked")
        return await real_enqueue(*args, **kwargs)

    outbox.enqueue = locked  # type: ignore[method-assign]
    events = [event(1, State.QUEUED), event(2, State.RUNNING)]
    await hub.commit(events, terminal_ttl_s=60)
    await webhooks.committed(events)  # fails: nothing queued, nothing raised
    assert await outbox.pending() == 0
    keeper = asyncio.create_task(webhooks.keep_up())
    try:
        for _ in range(200):
            if await outbox.pending() == 2:
                break
            await asyncio.sleep(0.005)
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    assert await queued(outbox) == [(f"{TASK}:1", "queued"), (f"{TASK}:2", "running")]
    assert len(delays) == 3  # three failed catch-ups, each after a backoff delay
    assert delays[0] < delays[2]
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "webhook catch-up failed" in m]) == 1
