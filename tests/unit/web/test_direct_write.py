"""A direct write that raises stays with its own subscriber.

The fan-out calls each idle stream's direct writer inside the hub's commit
(and, with Redis, inside the listener): one broken connection must neither
fail the commit nor starve the subscribers after it in the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.core.model import Event, EventKind, State
from gateway.core.sse import Encoded
from gateway.hub.local import LocalHub
from gateway.hub.queue import CloseReason, QueueClosed, QueueStats, SubscriberQueue
from gateway.metrics import Metrics
from gateway.service import CLOSING_MESSAGES
from gateway.web.fastpaths import DIRECT_WRITE
from gateway.web.lean import Signal
from gateway.web.streams import FeedStream, single_sse

TASK = "videoproc:a"


def event(seq: int) -> Event:
    return Event(
        event=EventKind.PROGRESS,
        task=TASK,
        seq=seq,
        state=State.RUNNING,
        terminal=False,
        progress=seq,
        position=None,
        message=None,
        result=None,
        error=None,
        upstream={"status": seq},
        updated_at="2026-11-21T10:00:00.000Z",
        observed_at="2026-11-21T10:00:00.000Z",
    )


class Connection:
    """What a stream's direct writer does with an event; the broken one raises."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.got: list[int] = []

    def __call__(self, enc: Encoded) -> bool:
        if self.broken:
            # What uvloop says when the transport closed under the stream.
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
        self.got.append(enc.event.seq)
        return True


@pytest.fixture
async def hub() -> AsyncIterator[LocalHub]:
    hub = LocalHub(":memory:")
    await hub.start()
    yield hub
    await hub.close()


async def test_a_writer_that_raises_mid_fan_out_closes_only_its_subscriber(hub: LocalHub) -> None:
    stats = QueueStats()
    metrics = Metrics()
    metrics.watch_queues(stats)
    connections = [Connection(broken=i == 2) for i in range(5)]
    queues = []
    for conn in connections:
        queue = SubscriberQueue(stats=stats)
        queue.direct = conn
        hub.attach(queue, [TASK])
        queues.append(queue)
    # Every stream idles in its loop, waiting: that is when the fan-out writes directly.
    waiting = [asyncio.create_task(q.get_batch()) for q in queues]
    await asyncio.sleep(0)

    committed = await hub.commit([event(1)], terminal_ttl_s=60)  # returns normally

    assert [enc.event.seq for enc in committed] == [1]
    for i, conn in enumerate(connections):
        assert conn.got == ([] if i == 2 else [1])
    broken = queues[2]
    assert broken.closed is CloseReason.WRITE_FAILED and broken.direct is None
    with pytest.raises(QueueClosed) as closed:
        await asyncio.wait_for(waiting[2], 1)
    assert closed.value.reason is CloseReason.WRITE_FAILED
    assert stats.direct_failures == 1 and stats.delivered == 4
    assert "pollcast_direct_write_failures_total 1.0" in metrics.render().decode()

    # The others stay subscribed; the broken one takes nothing more.
    await hub.commit([event(2)], terminal_ttl_s=60)
    assert [conn.got for conn in connections] == [[1, 2], [1, 2], [], [1, 2], [1, 2]]
    assert stats.direct_failures == 1
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


class BrokenTransport:
    """A socket that died under the stream: every write raises."""

    def __init__(self) -> None:
        self.aborted = asyncio.Event()
        self.lost: Callable[[], None] = lambda: None

    def write(self, data: bytes) -> None:
        raise ConnectionResetError("Connection reset by peer")

    def abort(self) -> None:
        self.aborted.set()
        asyncio.get_running_loop().call_soon(self.lost)  # as a transport reports it


class Cycle:
    """The response state DirectWriter reads: started, chunked, writable; and
    what uvicorn's ``connection_lost`` does to it."""

    def __init__(self, transport: BrokenTransport) -> None:
        self.transport = transport
        self.response_started = True
        self.chunked_encoding = True
        self.response_complete = False
        self.disconnected = False
        self.flow = SimpleNamespace(write_paused=False)
        self.body = bytearray()
        self.message_event = Signal()
        transport.lost = self.connection_lost

    def connection_lost(self) -> None:
        self.disconnected = True
        self.message_event.set()


class OneTaskFeed:
    """Just what FeedStream asks of a feed."""

    def __init__(self) -> None:
        self.queue = SubscriberQueue(stats=QueueStats())
        self.done = False
        self.closed = False

    def accept(self, enc: Encoded) -> bool:
        return True

    def closing_notice(self, reason: CloseReason) -> bytes | None:
        raise AssertionError(f"no notice can go on a broken connection ({reason})")

    def close(self) -> None:
        self.closed = True


async def test_a_stream_whose_direct_write_raises_drops_its_connection_and_ends() -> None:
    transport = BrokenTransport()
    feed = OneTaskFeed()
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        # The fast path hears of the hang-up from the cycle (connection_lost), not here.
        raise AssertionError("a fast-path stream does not await receive()")

    stream = FeedStream(feed, [], single_sse(3000))  # type: ignore[arg-type]
    scope: Any = {"type": "http", DIRECT_WRITE: Cycle(transport)}
    running = asyncio.create_task(stream(scope, receive, send))
    for _ in range(3):  # its head sent, the stream waits for live events
        await asyncio.sleep(0)
    assert feed.queue.direct is not None

    feed.queue.put_nowait(Encoded(event(1)))  # what the hub's fan-out does; it must not raise

    await asyncio.wait_for(running, 2)
    assert transport.aborted.is_set() and feed.closed
    assert feed.queue.stats.direct_failures == 1
    # The head went through send; after the failure nothing more (no notice, no last chunk).
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


def test_every_close_reason_has_a_closing_message() -> None:
    assert set(CLOSING_MESSAGES) == set(CloseReason)


async def test_a_started_stream_keeps_no_request_headers() -> None:
    # Read already (credentials, Accept, Last-Event-ID, CORS); an open stream
    # that kept them would carry its request head for as long as it lives.
    feed = OneTaskFeed()
    sent: list[dict[str, Any]] = []
    started = asyncio.Event()

    async def send(message: Any) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            started.set()

    async def receive() -> Any:
        await asyncio.Event().wait()  # the client stays (plain path: awaited, never answered)

    scope: Any = {"type": "http", "headers": [(b"authorization", b"Bearer secret-token")]}
    stream = FeedStream(feed, [], single_sse(3000))  # type: ignore[arg-type]
    running = asyncio.create_task(stream(scope, receive, send))
    await asyncio.wait_for(started.wait(), 2)
    await asyncio.sleep(0)
    assert scope["headers"] == []
    feed.done = True  # the stream's last event went out: it ends
    feed.queue.wake()
    await asyncio.wait_for(running, 2)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
