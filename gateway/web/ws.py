"""``/v1/ws``: many tasks per connection (docs/protocol.md, "WebSocket").

A raw handler, not ``@websocket_listener``, so that every bad frame gets an
error frame and the connection stays open. A lock keeps a subscription's
catch-up ahead of its live events on the wire.

On the fast path one task serves the socket: the protocol's inbox wakes it
for a frame as the subscriber queue does for events (every open socket
keeps its tasks, so one fewer is about 1.5 KB less per connection). On the
plain path one task reads frames and one writes events.

On the fast path (gateway/web/fastpaths.py) a live event for an idle
connection — nothing queued, nothing being written under the lock, the
socket open and not backed up — is written by the fan-out itself, as the
event's shared text frame (``Encoded.ws_frame``); otherwise it is queued and
sent by the connection's writer task through ``send``, as on the plain path.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from litestar import WebSocket, websocket
from litestar.datastructures import State
from litestar.types import ReceiveMessage

from gateway.core.protocol import (
    ErrorFrame,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    decode_client_message,
    encode_frame,
)
from gateway.core.sse import MAX_SEQ, Encoded
from gateway.exceptions import BackendError, Forbidden, InputError, TooManyTasks, Unauthorized
from gateway.hub.queue import CloseReason, QueueClosed
from gateway.service import Feed, Gateway
from gateway.web.auth import (
    Principal,
    SubscriberPrincipal,
    authenticator_of,
    authorize_read,
    check_socket_origin,
    may_poll,
)
from gateway.web.fastpaths import SocketWrite, socket_writer
from gateway.web.lean import Inbox, forget_headers
from gateway.web.limits import RefundingBucket
from gateway.web.routes import gateway_of

__all__ = ["ws_endpoint"]

# Close codes (RFC 6455 §7.4.1): 1001 going away (draining), 1013 try again later;
# 4000 + HTTP status (4401, 4403) for credentials, the private-use range (§7.4.2).
GOING_AWAY = 1001
TRY_AGAIN_LATER = 1013
CREDENTIALS_BASE = 4000


class Connection:
    __slots__ = ("direct", "feed", "frames", "gw", "lock", "principal", "socket")

    def __init__(self, socket: WebSocket[Any, Any, Any], gw: Gateway, principal: Principal) -> None:
        self.socket = socket
        self.gw = gw
        self.principal = principal
        self.feed: Feed = gw.open_feed("ws")
        if isinstance(principal, SubscriberPrincipal):
            self.feed.expire_at(principal.expires_at)
        self.lock = asyncio.Lock()
        server = gw.config.server
        self.frames = RefundingBucket(server.ws_frames_per_s, burst=server.ws_frames_per_s * 2)
        self.direct: SocketWrite | None = socket_writer(socket.scope)
        if self.direct is not None:
            self.feed.queue.direct = self.deliver_now

    def deliver_now(self, enc: Encoded) -> bool:
        """A live event for an idle connection, written at once (``SubscriberQueue.direct``).

        ``False`` when it cannot go now (a catch-up, an error frame or a batch is
        being written under the lock, or the socket is backed up or closing):
        the event is queued. If the write raises, the queue closes with
        ``WRITE_FAILED``.
        """
        writer = self.direct
        if writer is None or self.lock.locked() or not writer.ready:
            return False
        if self.feed.accept(enc):
            writer.write(enc.ws_frame)
            self.forget_if_done(enc)
        return True

    async def send(self, data: str | bytes) -> None:
        text = data if isinstance(data, str) else data.decode()
        await self.socket.send_text(text)

    async def error(self, code: str, message: str, task: str | None = None) -> None:
        # Both may quote what the client sent; neither may carry a credential.
        message = self.gw.redactor.text(message)
        task = None if task is None else self.gw.redactor.text(task)
        async with self.lock:
            await self.send(encode_frame(ErrorFrame(code=code, message=message, task=task)))

    async def read(self) -> None:
        while True:
            message = await self.socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await self.on_frame(message)
            # Not kept while the socket idles (every open socket would hold its last frame).
            del message

    async def on_frame(self, message: ReceiveMessage) -> None:
        limit = self.gw.config.server.max_frame_bytes
        text, raw = message.get("text"), message.get("bytes")
        data: str | bytes = (
            text if isinstance(text, str) else raw if isinstance(raw, bytes) else b""
        )
        if len(data) > limit:
            await self.error("frame_too_large", f"frame of {len(data)} bytes; limit {limit}")
            return
        if self.frames.try_take(self.gw.clock.monotonic()) > 0:
            await self.error("rate_limited", "too many frames per second; frame ignored")
            return
        try:
            await self.handle(decode_client_message(data))
        except InputError as exc:
            await self.error(exc.code, exc.message)
        except BackendError:
            # The frame may be sent again as it is; the connection stays open.
            await self.error(
                "backend_unavailable", "the state backend is unavailable; try again shortly"
            )

    async def handle(self, msg: Subscribe | Unsubscribe | Ping) -> None:
        match msg:
            case Ping():
                async with self.lock:
                    await self.send(encode_frame(Pong()))
            case Subscribe(tasks=tasks, since=since):
                await self.subscribe(tasks, since)
            case Unsubscribe(tasks=tasks):
                removed = self.feed.remove(tasks)
                async with self.lock:
                    await self.send(encode_frame(Unsubscribed(tasks=removed)))

    async def subscribe(self, tasks: list[str], since: dict[str, int]) -> None:
        accepted: list[str] = []
        for text in tasks:
            try:
                key = self.gw.parse_key(text)
                await authorize_read(self.gw, self.principal, [key])
            except InputError as exc:
                await self.error(exc.code, exc.message, task=text[:300])
                continue
            name = str(key)
            if name not in self.feed.keys:
                try:
                    self.gw.check_task_count(len(self.feed) + 1, "connection")
                except TooManyTasks as exc:
                    await self.error(exc.code, exc.message, task=name)
                    continue
            last = since.get(text, since.get(name))
            if last is not None and not 0 <= last <= MAX_SEQ:
                await self.error("invalid_cursor", "since must be a seq (0 … 2^53)", task=name)
                continue
            async with self.lock:
                initial = await self.feed.add(key, last, may_poll=may_poll(self.principal))
                await self.send(encode_frame(Subscribed(tasks=[name])))
                for enc in initial:
                    await self.send(enc.text)
            accepted.append(name)

    async def serve(self, inbox: Inbox) -> None:
        """Frames and events on this one task, until the client leaves or the queue closes.

        The inbox wakes the queue's consumer when a frame arrives, so a
        wait for events ends for frames too; the inbox is looked at before
        every wait, so a frame that came meanwhile is not left waiting.
        """
        inbox.on_put = self.feed.queue.wake
        try:
            while True:
                while not inbox.empty():
                    message = await self.socket.receive()  # there: no wait
                    if message["type"] == "websocket.disconnect":
                        return
                    await self.on_frame(message)
                    del message
                if not await self.write_next():
                    return
        finally:
            inbox.on_put = None

    async def write(self, reader: asyncio.Task[None]) -> None:
        """Events until the queue closes or ``reader`` ends (it wakes the queue then)."""
        while not reader.done():
            if not await self.write_next():
                return

    async def write_next(self) -> bool:
        """Waits for events (or a wake-up) and writes them.

        ``False`` once the queue has closed: the socket is closed (or, after a
        failed write, dropped) and nothing more goes on it.
        """
        feed = self.feed
        try:
            batch = await feed.queue.get_batch()
        except QueueClosed as closed:
            if closed.reason is CloseReason.WRITE_FAILED:
                # A frame may be cut short: nothing more can go on this
                # connection, not even a close frame. The client resumes by seq.
                if self.direct is not None:
                    self.direct.abort()
                return False
            data = feed.closing_notice(closed.reason)
            async with self.lock:
                if data is not None:
                    await self.send(data)
            code = (
                CREDENTIALS_BASE + Unauthorized.status
                if closed.reason is CloseReason.TOKEN_EXPIRED
                else GOING_AWAY
            )
            await self.socket.close(code=code, reason=closed.reason.value)
            return False
        if batch:
            async with self.lock:
                for enc in batch:
                    if feed.accept(enc):
                        await self.send(enc.text)
                        self.forget_if_done(enc)
        return True

    def forget_if_done(self, enc: Encoded) -> None:
        """A terminal task frees its slot on the connection."""
        if enc.event.terminal:
            self.feed.remove([enc.event.task])


@websocket("/v1/ws")
async def ws_endpoint(socket: WebSocket[Any, Any, Any], state: State) -> None:
    gw = gateway_of(state)
    if gw.draining:
        await socket.close(code=TRY_AGAIN_LATER, reason="server draining")
        return
    try:
        principal = authenticator_of(state).resolve(socket)
        check_socket_origin(socket, gw.config.server.cors_origins)
    except (Unauthorized, Forbidden) as refused:
        await _refuse(socket, refused)
        return
    await socket.accept()
    conn = Connection(socket, gw, principal)
    # Its handshake headers are read (credentials, origin): not kept while it is open.
    forget_headers(socket.scope)
    try:
        if conn.direct is not None:  # the fast path: one task
            try:
                await conn.serve(conn.direct.inbox)
            except Exception as exc:
                if not _is_disconnect(exc):
                    raise
        else:
            await _read_and_write(conn)
    finally:
        conn.feed.queue.direct = None
        conn.feed.close()


async def _read_and_write(conn: Connection) -> None:
    """The plain path: the handler's own task writes, one more reads."""
    reader = asyncio.create_task(conn.read())
    reader.add_done_callback(lambda _: conn.feed.queue.wake())
    try:
        try:
            await conn.write(reader)
        except Exception as exc:
            if not _is_disconnect(exc):
                raise
        if reader.done() and not reader.cancelled():
            failed = reader.exception()
            if failed is not None and not _is_disconnect(failed):
                raise failed
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


async def _refuse(socket: WebSocket[Any, Any, Any], refused: InputError) -> None:
    """Accepted to be refused: a browser sees neither a handshake's status nor
    its body, but it does see this error frame and the close code (4401, 4403)."""
    frame = encode_frame(ErrorFrame(code=refused.code, message=refused.message))
    await socket.accept()
    await socket.send_text(frame.decode())
    await socket.close(code=CREDENTIALS_BASE + refused.status, reason=refused.code)


def _is_disconnect(exc: BaseException) -> bool:
    from litestar.exceptions import WebSocketDisconnect

    return isinstance(exc, WebSocketDisconnect | OSError)
