"""Backoff and give-up; which events a target wants; delivery ids and payloads."""

from __future__ import annotations

import json
import random

import pytest

from gateway.core.model import EventKind, State
from gateway.webhooks.model import WebhookTarget, deliveries_for, delivery_id, payload
from gateway.webhooks.retry import RetrySchedule
from tests.unit.webhooks.support import event

SCHEDULE = RetrySchedule(base_s=5.0, max_s=3600.0, max_age_s=86400.0)


def test_delays_double_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(7)
    for attempts in range(1, 12):
        step = min(3600.0, 5.0 * 2 ** (attempts - 1))
        for _ in range(50):
            assert step / 2 <= SCHEDULE.delay(attempts, rng) <= step
    assert SCHEDULE.delay(500, rng) <= 3600.0  # no overflow, capped


def test_retries_stop_once_a_delivery_would_be_older_than_max_age() -> None:
    rng = random.Random(1)
    now, created, attempts = 0.0, 0.0, 0
    while True:
        attempts += 1
        due = SCHEDULE.next_attempt(created_at=created, attempts=attempts, now=now, rng=rng)
        if due is None:
            break
        assert due - created <= 86400.0
        now = due
    # About a day of retries: hourly at the end, a couple of dozen attempts in all.
    assert 86400.0 - 3600.0 <= now <= 86400.0
    assert 20 <= attempts <= 45


EVENTS = [
    event(1, State.QUEUED),
    event(2, State.RUNNING),
    event(3, State.RUNNING, EventKind.PROGRESS),
    event(4, State.FAILED),
]


@pytest.mark.parametrize(
    ("events", "wanted"),
    [
        (("terminal",), [4]),
        (("state",), [1, 2, 4]),
        (("state", "terminal"), [1, 2, 4]),
        (("progress",), [3]),
        (("progress", "terminal"), [3, 4]),
    ],
)
def test_targets_want_what_they_asked_for(events: tuple[str, ...], wanted: list[int]) -> None:
    target = WebhookTarget("https://x.example/h", events)  # type: ignore[arg-type]
    deliveries = deliveries_for(target, EVENTS, now=100.0)
    assert [d.seq for d in deliveries] == wanted
    assert all(d.due_at == d.created_at == 100.0 and d.attempts == 0 for d in deliveries)


def test_delivery_ids_are_stable_and_header_safe() -> None:
    assert delivery_id("ailab:7f3c", 4) == "ailab:7f3c:4"
    assert delivery_id("vp:任务/1", 2) == "vp:%E4%BB%BB%E5%8A%A1/1:2"
    assert delivery_id("vp:a%b", 1) == "vp:a%25b:1"


def test_the_payload_is_the_standard_shape_around_the_event() -> None:
    body = json.loads(payload(EVENTS[3]))
    assert body["type"] == "task.state"
    assert body["timestamp"] == "2026-11-21T10:00:05.120Z"
    assert body["data"]["task"] == "ailab:7f3c"
    assert body["data"]["seq"] == 4
    assert body["data"]["terminal"] is True
    assert body["data"]["error"] == {"code": "upstream_failed", "message": "x"}
    assert json.loads(payload(EVENTS[2]))["type"] == "task.progress"
