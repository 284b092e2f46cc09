"""The smaller per-connection objects behave as the ones they replace."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.web.lean import Inbox, LeanFlowControl, Pipeline, Signal


async def test_a_signal_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    signal = Signal()
    waiters = [asyncio.create_task(signal.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not signal.is_set() and not any(w.done() for w in waiters)
    signal.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert signal.is_set()
    assert await signal.wait() is True  # already set: returns at once
    signal.clear()
    late = asyncio.create_task(signal.wait())
    await asyncio.sleep(0)
    assert not late.done()
    signal.set()
    assert await late is True


async def test_a_cancelled_waiter_is_forgotten() -> None:
    signal = Signal()
    waiter = asyncio.create_task(signal.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert signal._pending == []
    signal.set()  # nothing left to wake, nothing raised
    assert signal.is_set()


class Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def test_flow_control_holds_writers_while_the_peer_is_full() -> None:
    transport: Any = Transport()
    flow = LeanFlowControl(transport)
    await asyncio.wait_for(flow.drain(), 1)  # writable from the start
    flow.pause_writing()
    drain = asyncio.create_task(flow.drain())
    await asyncio.sleep(0.01)
    assert flow.write_paused and not drain.done()
    flow.resume_writing()
    await asyncio.wait_for(drain, 1)
    flow.pause_reading()
    assert not transport.reading and flow.read_paused
    flow.resume_reading()
    assert transport.reading


def test_the_pipeline_is_first_in_first_out_like_the_deque() -> None:
    pipeline = Pipeline()
    assert not pipeline
    for request in ("first", "second", "third"):
        pipeline.appendleft(request)
    assert [pipeline.pop() for _ in range(3)] == ["first", "second", "third"]
    assert not pipeline


async def test_the_inbox_hands_over_messages_in_order_and_wakes_its_reader() -> None:
    inbox = Inbox()
    assert inbox.empty()
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert not inbox.empty() and inbox.qsize() == 2
    assert await inbox.get() == "a" and await inbox.get() == "b"
    assert inbox.empty()
    reading = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reading.done()  # nothing yet: it waits
    inbox.put_nowait("c")
    assert await asyncio.wait_for(reading, 1) == "c"


async def test_a_second_concurrent_reader_of_the_inbox_is_refused() -> None:
    inbox = Inbox()
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await inbox.get()
    inbox.put_nowait("x")
    assert await asyncio.wait_for(first, 1) == "x"


async def test_a_cancelled_inbox_reader_leaves_the_inbox_usable() -> None:
    inbox = Inbox()
    reading = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    inbox.put_nowait("y")
    assert await asyncio.wait_for(inbox.get(), 1) == "y"


def test_the_inbox_tells_its_on_put_hook_after_each_message() -> None:
    inbox = Inbox()
    inbox.put_nowait("before")  # no hook yet: nothing to call
    seen: list[int] = []
    inbox.on_put = lambda: seen.append(inbox.qsize())
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert seen == [2, 3]  # called once each, with the message already in
    inbox.on_put = None
    inbox.put_nowait("c")
    assert seen == [2, 3]


def test_the_signal_tells_its_on_set_hook_on_every_set_even_when_set_already() -> None:
    # uvicorn sets a request's message event at the end of its body and again
    # when the client leaves; only receive() clears it, and a fast-path stream
    # never calls receive(): the second set must be heard all the same.
    signal = Signal()
    heard: list[bool] = []
    signal.on_set = lambda: heard.append(signal.is_set())
    signal.set()
    signal.set()
    assert heard == [True, True]
    signal.on_set = None
    signal.set()
    assert heard == [True, True]
