"""Streaming bodies: one loop over a :class:`Feed`, three framings (SSE, mux SSE, NDJSON)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.core.sse import PING, Encoded, encode_cursor, retry_frame, sse_message
from gateway.hub.queue import QueueClosed
from gateway.service import Feed

__all__ = ["Framing", "feed_body", "mux_sse", "ndjson", "single_sse"]


@dataclass(frozen=True, slots=True)
class Framing:
    transport: str  # metrics label
    media_type: str
    head: bytes
    ping: bytes
    frame: Callable[[Feed, Encoded], bytes]
    last: Callable[[bytes], bytes]  # a closing notice's JSON → bytes


def single_sse(retry_ms: int) -> Framing:
    return Framing(
        transport="sse",
        media_type="text/event-stream",
        head=retry_frame(retry_ms),
        ping=PING,
        frame=lambda _feed, enc: enc.sse,
        last=lambda data: sse_message(data, event="notice"),
    )


def mux_sse(retry_ms: int, order: list[str], start: list[int]) -> Framing:
    """``id:`` is a cursor over every task of the stream, in ``order``.

    The cursor advances with each message *as sent* (``start`` is where the
    client resumed from), so a client cut off mid-catch-up resumes exactly
    after the last message it got.
    """
    position = dict(zip(order, start, strict=True))

    def frame(_feed: Feed, enc: Encoded) -> bytes:
        if not enc.counts_for_resume:
            return enc.sse_tail
        position[enc.event.task] = enc.event.seq
        cursor = encode_cursor([position[name] for name in order])
        return b"id: " + cursor.encode() + b"\n" + enc.sse_tail

    return Framing(
        transport="sse_multi",
        media_type="text/event-stream",
        head=retry_frame(retry_ms),
        ping=PING,
        frame=frame,
        last=lambda data: sse_message(data, event="notice"),
    )


def ndjson() -> Framing:
    # jq and most NDJSON readers skip blank lines, so a bare LF is the heartbeat.
    return Framing(
        transport="ndjson",
        media_type="application/x-ndjson",
        head=b"",
        ping=b"\n",
        frame=lambda _feed, enc: enc.line,
        last=lambda data: data + b"\n",
    )


async def feed_body(
    feed: Feed, initial: list[Encoded], framing: Framing, heartbeat_s: float
) -> AsyncIterator[bytes]:
    """Catch-up, then live events until every task is terminal or the queue closes.

    A disconnecting client cancels this generator at its current ``await``;
    the ``finally`` is synchronous so cleanup cannot be interrupted.
    """
    try:
        head = framing.head + b"".join(framing.frame(feed, enc) for enc in initial)
        initial.clear()  # a long-lived stream must not keep its catch-up alive
        yield head
        del head
        while not feed.done:
            try:
                # No timer per wait: the gateway's heartbeat wakes idle streams
                # (Gateway.heartbeat); an empty batch means "send a ping".
                batch = await feed.queue.get_batch()
            except QueueClosed as closed:
                data = feed.closing_notice(closed.reason)
                if data is not None:
                    yield framing.last(data)
                return
            if not batch:
                yield framing.ping
                continue
            out = [framing.frame(feed, enc) for enc in batch if feed.accept(enc)]
            if out:
                yield b"".join(out)
    finally:
        feed.close()
