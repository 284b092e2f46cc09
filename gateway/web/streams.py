"""Streaming responses: one loop over a :class:`Feed`, three framings (SSE, mux SSE, NDJSON)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from litestar import Request, Response
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.core.sse import PING, Encoded, encode_cursor, retry_frame, sse_message
from gateway.hub.queue import CloseReason, QueueClosed, SubscriberQueue
from gateway.service import Feed
from gateway.web.fastpaths import DirectWrite, StreamWrite, stream_writer
from gateway.web.lean import forget_headers

__all__ = ["FeedResponse", "FeedStream", "Framing", "mux_sse", "ndjson", "single_sse"]

Headers = list[tuple[bytes, bytes]]

# After dropping a connection whose direct write failed: how long to wait for
# uvicorn to see it go (so the response ends as "client gone", not as an app error).
ABORT_WAIT_S = 1.0


def _headers(media_type: bytes) -> Headers:
    # X-Accel-Buffering: nginx would otherwise buffer the stream (deploy/nginx.conf).
    return [
        (b"content-type", media_type),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]


SSE_HEADERS = _headers(b"text/event-stream; charset=utf-8")
NDJSON_HEADERS = _headers(b"application/x-ndjson")


@dataclass(frozen=True, slots=True)
class Framing:
    stream_kind: str  # metrics label
    headers: Headers
    head: bytes
    ping: bytes
    frame: Callable[[Feed, Encoded], bytes]
    last: Callable[[bytes], bytes]  # a closing notice's JSON → bytes


def _notice(data: bytes) -> bytes:
    return sse_message(data, event="notice")


@cache
def single_sse(retry_ms: int) -> Framing:
    """One task's stream (shared by every such stream: it keeps no state)."""
    return Framing(
        stream_kind="sse",
        headers=SSE_HEADERS,
        head=retry_frame(retry_ms),
        ping=PING,
        frame=lambda _feed, enc: enc.sse,
        last=_notice,
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
        stream_kind="sse_multi",
        headers=SSE_HEADERS,
        head=retry_frame(retry_ms),
        ping=PING,
        frame=frame,
        last=_notice,
    )


@cache
def ndjson() -> Framing:
    # jq and most NDJSON readers skip blank lines, so a bare LF is the heartbeat.
    return Framing(
        stream_kind="ndjson",
        headers=NDJSON_HEADERS,
        head=b"",
        ping=b"\n",
        frame=lambda _feed, enc: enc.line,
        last=lambda data: data + b"\n",
    )


class FeedStream:
    """The ASGI response of a stream: catch-up, then live events, until every
    task is terminal, the queue closes or the client goes away.

    Written straight to the ASGI ``send`` rather than through a streaming
    response class: an idle stream is one coroutine waiting on its queue,
    nothing more (the plain path adds a task waiting for the client to
    leave). At 10,000 open streams that is what the memory per connection
    is made of.
    """

    __slots__ = ("feed", "framing", "initial")

    def __init__(self, feed: Feed, initial: list[Encoded], framing: Framing) -> None:
        self.feed = feed
        self.initial = initial
        self.framing = framing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        feed, framing = self.feed, self.framing
        # uvicorn's send() returns quietly once the client is gone; only
        # receive() tells. The queue is woken so the loop sees it at once: on
        # the fast path by the request's message event itself (no task per
        # stream), otherwise by a task that awaits receive().
        writer = stream_writer(scope)
        listener: asyncio.Future[None] | None = None
        if writer is not None:
            writer.watch(feed.queue.wake)
        else:
            listener = asyncio.ensure_future(_until_disconnect(receive, feed.queue))

        try:
            # A copy: middleware (CORS) appends to the headers of the message it passes on.
            headers = list(framing.headers)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            del headers
            head = framing.head + b"".join(framing.frame(feed, enc) for enc in self.initial)
            self.initial = []  # a long-lived stream must not keep its catch-up alive
            await send({"type": "http.response.body", "body": head, "more_body": True})
            del head
            forget_headers(scope)  # read already (auth, Accept, Last-Event-ID, CORS)
            if writer is not None:
                feed.queue.direct = partial(_deliver_now, feed, framing, writer)
            while not feed.done and not _gone(writer, listener):
                try:
                    # No timer per wait: the gateway's heartbeat wakes idle streams
                    # (Gateway.heartbeat); an empty batch means "send a ping".
                    batch = await feed.queue.get_batch()
                except QueueClosed as closed:
                    if closed.reason is CloseReason.WRITE_FAILED:
                        # Mid-chunk, maybe: nothing more can go on this connection.
                        if writer is not None:
                            writer.abort()
                            await _until_gone(writer, ABORT_WAIT_S)
                        return
                    data = feed.closing_notice(closed.reason)
                    if data is not None:
                        await _write(send, framing.last(data))
                    break
                if _gone(writer, listener):
                    break
                if not batch:
                    if feed.done:  # the terminal event went out directly
                        break
                    await _write(send, framing.ping)
                    continue
                out = [framing.frame(feed, enc) for enc in batch if feed.accept(enc)]
                if out:
                    await _write(send, b"".join(out))
            if not _gone(writer, listener):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # Synchronous on purpose: this also runs when the server cancels us.
            feed.queue.direct = None
            if listener is not None:
                listener.cancel()
            if writer is not None:
                writer.watch(None)
            feed.close()


def _gone(writer: StreamWrite | None, listener: asyncio.Future[None] | None) -> bool:
    """The client has left: as the fast path's cycle says, or as ``receive()`` told."""
    if listener is not None:
        return listener.done()
    return writer is not None and writer.gone


async def _until_gone(writer: StreamWrite, timeout_s: float) -> None:
    """After an abort: until uvicorn has seen the connection go, or ``timeout_s``."""
    if writer.gone:
        return
    seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def heard() -> None:
        if not seen.done():
            seen.set_result(None)

    writer.watch(heard)  # the next thing it hears is the loss: the transport is aborted
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(seen, timeout_s)


def _deliver_now(feed: Feed, framing: Framing, writer: DirectWrite, enc: Encoded) -> bool:
    """A live event for an idle stream, written at once (``SubscriberQueue.direct``).

    ``False`` when the connection cannot take it now: the event is queued and
    the stream's own loop sends it. The terminal event wakes that loop to end
    the response. If it raises, the queue closes with ``WRITE_FAILED``.
    """
    if not writer.ready:
        return False
    if feed.accept(enc):
        writer.write(framing.frame(feed, enc))
        if feed.done:
            feed.queue.wake()
    return True


async def _write(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _until_disconnect(receive: Receive, queue: SubscriberQueue) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    queue.wake()


class FeedResponse(Response[None]):
    """What a stream handler returns: Litestar sends it as the :class:`FeedStream` itself."""

    __slots__ = ("stream",)

    def __init__(self, stream: FeedStream) -> None:
        super().__init__(content=None)
        self.stream = stream

    def to_asgi_response(  # type: ignore[override]  # any ASGI app will do
        self, app: object, request: Request[Any, Any, Any], **_: object
    ) -> ASGIApp:
        return self.stream
