"""The subscriber queue: bounded, coalescing progress, never dropping state events."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.model import Event, EventKind, State
from gateway.core.sse import Encoded
from gateway.hub.queue import CloseReason, QueueClosed, SubscriberQueue

TASK = "videoproc:abc"


def _enc(seq: int, kind: EventKind = EventKind.PROGRESS, state: State = State.RUNNING) -> Encoded:
    return Encoded(
        Event(
            event=kind,
            task=TASK,
            seq=seq,
            state=state,
            terminal=state.terminal,
            progress=seq,
            position=None,
            message=None,
            result=None,
            error=None,
            upstream=None,
            updated_at="1970-01-01T00:00:00.000Z",
            observed_at=None,
        )
    )


def _state(seq: int, state: State = State.RUNNING) -> Encoded:
    return _enc(seq, EventKind.STATE, state)


def _seqs(batch: list[Encoded]) -> list[int]:
    return [item.event.seq for item in batch]


async def _yield_to_others() -> None:
    """Let the other tasks run until they block (no time passes)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_get_batch_returns_everything_queued_in_fifo_order() -> None:
    queue = SubscriberQueue(maxsize=8)
    items = [_state(1), _enc(2), _enc(3), _state(4)]
    for item in items:
        queue.put_nowait(item)
    assert len(queue) == 4
    batch = await queue.get_batch()
    assert batch == items  # the same objects, in order
    assert len(queue) == 0


async def test_get_batch_with_timeout_returns_empty_list() -> None:
    queue = SubscriberQueue()
    assert await queue.get_batch(max_wait_s=0.0) == []
    assert await queue.get_batch(max_wait_s=0.01) == []
    assert queue.closed is None
    # The queue still works after a timed-out wait.
    queue.put_nowait(_enc(1))
    assert _seqs(await queue.get_batch(max_wait_s=0.0)) == [1]


async def test_put_wakes_a_waiting_consumer() -> None:
    queue = SubscriberQueue()
    consumer = asyncio.create_task(queue.get_batch())
    await _yield_to_others()
    assert not consumer.done()
    queue.put_nowait(_state(1))
    queue.put_nowait(_enc(2))
    assert _seqs(await asyncio.wait_for(consumer, 5)) == [1, 2]


async def test_overflow_discards_the_oldest_progress_event_first() -> None:
    queue = SubscriberQueue(maxsize=4, hard_limit=16)
    for item in (_state(1), _enc(2), _enc(3), _state(4)):
        queue.put_nowait(item)
    queue.put_nowait(_enc(5))  # full: progress 2 goes
    assert queue.coalesced == 1
    queue.put_nowait(_enc(6))  # full again: progress 3 goes
    assert queue.coalesced == 2
    queue.put_nowait(_state(7))  # full again: progress 5 goes
    assert queue.coalesced == 3
    assert len(queue) == 4
    batch = await queue.get_batch()
    assert _seqs(batch) == [1, 4, 6, 7]
    assert [item.event.event for item in batch] == [
        EventKind.STATE,
        EventKind.STATE,
        EventKind.PROGRESS,
        EventKind.STATE,
    ]


async def test_state_events_are_never_discarded_below_the_hard_limit() -> None:
    queue = SubscriberQueue(maxsize=2, hard_limit=5)
    for seq in range(1, 6):
        queue.put_nowait(_state(seq))
    assert queue.closed is None
    assert queue.coalesced == 0
    assert _seqs(await queue.get_batch()) == [1, 2, 3, 4, 5]


async def test_terminal_state_survives_a_flood_of_progress() -> None:
    queue = SubscriberQueue(maxsize=3)
    queue.put_nowait(_state(1))
    for seq in range(2, 50):
        queue.put_nowait(_enc(seq))
    queue.put_nowait(_state(50, State.SUCCEEDED))
    assert queue.closed is None
    batch = await queue.get_batch()
    assert _seqs(batch) == [1, 49, 50]  # the newest progress is kept, older ones coalesced
    assert batch[-1].event.terminal is True
    assert queue.coalesced == 47


async def test_exceeding_the_hard_limit_closes_with_overflow_and_drains_first() -> None:
    queue = SubscriberQueue(maxsize=2, hard_limit=4)
    for seq in range(1, 5):
        queue.put_nowait(_state(seq))
    assert queue.closed is None
    queue.put_nowait(_state(5))  # nothing to coalesce and at the hard limit
    assert queue.closed is CloseReason.OVERFLOW
    queue.put_nowait(_state(6))  # ignored once closed
    assert _seqs(await queue.get_batch()) == [1, 2, 3, 4]
    with pytest.raises(QueueClosed) as info:
        await queue.get_batch()
    assert info.value.reason is CloseReason.OVERFLOW
    assert str(info.value) == "overflow"


async def test_default_hard_limit_is_four_times_maxsize() -> None:
    queue = SubscriberQueue(maxsize=3)
    assert queue.hard_limit == 12
    for seq in range(1, 13):
        queue.put_nowait(_state(seq))
    assert queue.closed is None
    queue.put_nowait(_state(13))
    assert queue.closed is CloseReason.OVERFLOW
    assert len(queue) == 12


async def test_close_wakes_a_waiting_consumer_with_queue_closed() -> None:
    queue = SubscriberQueue()
    consumer = asyncio.create_task(queue.get_batch())
    await _yield_to_others()
    assert not consumer.done()
    queue.close(CloseReason.DRAINING)
    with pytest.raises(QueueClosed) as info:
        await asyncio.wait_for(consumer, 5)
    assert info.value.reason is CloseReason.DRAINING


async def test_close_lets_the_consumer_drain_what_is_queued() -> None:
    queue = SubscriberQueue()
    queue.put_nowait(_state(1))
    queue.put_nowait(_enc(2))
    queue.close(CloseReason.TOKEN_EXPIRED)
    assert _seqs(await queue.get_batch()) == [1, 2]
    with pytest.raises(QueueClosed) as info:
        await queue.get_batch(max_wait_s=0.0)
    assert info.value.reason is CloseReason.TOKEN_EXPIRED


async def test_put_after_close_is_ignored() -> None:
    queue = SubscriberQueue()
    queue.close(CloseReason.BACKEND_LOST)
    queue.put_nowait(_state(1))
    assert len(queue) == 0
    with pytest.raises(QueueClosed):
        await queue.get_batch()


async def test_the_first_close_reason_wins() -> None:
    queue = SubscriberQueue()
    queue.close(CloseReason.OVERFLOW)
    queue.close(CloseReason.DRAINING)
    assert queue.closed is CloseReason.OVERFLOW


async def test_a_cancelled_wait_leaves_the_queue_usable() -> None:
    queue = SubscriberQueue()
    consumer = asyncio.create_task(queue.get_batch())
    await _yield_to_others()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    queue.put_nowait(_enc(1))
    assert _seqs(await queue.get_batch(max_wait_s=0.0)) == [1]
    # A new waiter is woken after the cancelled one.
    again = asyncio.create_task(queue.get_batch())
    await _yield_to_others()
    queue.put_nowait(_enc(2))
    assert _seqs(await asyncio.wait_for(again, 5)) == [2]


async def test_a_waiting_consumer_takes_items_directly_and_a_busy_one_gets_them_queued() -> None:
    queue = SubscriberQueue(maxsize=8)
    taken: list[int] = []
    accept = True

    def direct(item: Encoded) -> bool:
        if accept:
            taken.append(item.event.seq)
        return accept

    queue.direct = direct
    queue.put_nowait(_enc(1))  # nobody waits yet: queued
    assert _seqs(await queue.get_batch()) == [1]
    consumer = asyncio.create_task(queue.get_batch())
    await asyncio.sleep(0)
    queue.put_nowait(_enc(2))  # the consumer waits, nothing queued: taken at once
    queue.put_nowait(_enc(3))
    assert taken == [2, 3] and len(queue) == 0 and not consumer.done()
    accept = False  # e.g. the socket is backed up: the item is queued and the consumer woken
    queue.put_nowait(_enc(4))
    assert _seqs(await consumer) == [4]
    assert queue.stats.delivered == 4
