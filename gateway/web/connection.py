"""The fast path's HTTP protocol: uvicorn's httptools protocol, guarded and slimmed.

:class:`GuardedHttpProtocol` is a subclass of uvicorn's ``HttpToolsProtocol``
(an internal: gateway/web/fastpaths.py checks every part of it used here at
start-up, and the gateway runs on the plain path when one differs). It adds
the connection limits (gateway/web/guard.py), for every head of a kept-alive
connection and for the head of a WebSocket upgrade alike:

* a request head (request line + headers) must be complete within
  ``server.handshake_timeout_s`` of the connection opening, or of the previous
  response on a kept-alive connection; otherwise ``408`` and close, or just
  close if not a byte of it came (so an idle kept-alive connection lasts at
  most that long too). Trickling bytes does not extend the deadline;
* a request line longer than ``server.max_header_bytes`` gets ``414``, a
  head larger than that or with more than 128 header fields ``431``, and close;
* one address may hold ``server.max_connections_per_ip`` open connections
  (HTTP, streams and WebSockets alike); one more gets ``429`` with
  ``Retry-After`` once it sends its request, and is closed.

The replies are ``application/problem+json`` like every other error. It also
swaps uvicorn's per-connection objects for the smaller ones of
gateway/web/lean.py and leaves each request's cycle in the scope for
:class:`DirectWriter`.

:class:`GuardedWebSocketProtocol` is the fast path's WebSocket protocol:
uvicorn's sans-I/O ``websockets`` protocol (ping/pong, the close handshake and
``ws_max_size`` are its own; the head was metered by the HTTP protocol above
before the upgrade), with a lean inbound queue and itself in the scope for
:class:`WebSocketDirectWriter`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from gateway.config import ServerConfig
from gateway.web.fastpaths import DIRECT_WRITE
from gateway.web.guard import (
    BUSY_RETRY_S,
    HeadLimits,
    HeadMeter,
    Refusal,
    refuse,
    too_busy,
)
from gateway.web.lean import Inbox, LeanFlowControl, Pipeline, Signal
from gateway.web.limits import AddressConnections

__all__ = [
    "DirectWriter",
    "GuardedHttpProtocol",
    "GuardedWebSocketProtocol",
    "WebSocketDirectWriter",
    "guarded_http_protocol",
]


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards above (settings on the subclass)."""

    # Slots, not instance attributes: uvicorn's own ~28 stay in a compact
    # shared-key dict (CPython keeps at most 30 keys that way); more made
    # every connection's dict a full one, ~1.5 KB per open stream.
    __slots__ = (
        "_address",
        "_admitted",
        "_armed_at_head",
        "_deadline",
        "_heads",
        "_in_body",
        "_lingering",
        "_meter",
    )

    address_connections: ClassVar[AddressConnections]
    limits: ClassVar[HeadLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # The same objects, smaller: every open stream keeps them (gateway/web/lean.py).
        self.flow = LeanFlowControl(transport)
        self.pipeline = Pipeline()  # type: ignore[assignment]  # deque's appendleft/pop
        self._address = self.client[0] if self.client else "unknown"
        self._admitted = self.address_connections.admit(self._address, transport)
        self._heads = 0  # request heads completed on this connection
        self._in_body = False  # the parser is between a head and the end of its message
        # The head being read; none while a response is written (an open stream
        # keeps no meter).
        self._meter: HeadMeter | None = None
        self._armed_at_head = 0  # ``_heads`` when the deadline was armed
        self._deadline: asyncio.TimerHandle | None = None
        self._lingering = False
        self._arm()

    # httptools parser callbacks (and uvicorn's end of a response), observed.

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_body = True
        self._meter = None
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a new request: its ASGI task has not run yet
            self.cycle.message_event = Signal()
            self.scope[DIRECT_WRITE] = self.cycle  # type: ignore[literal-required]

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._idle():
            self._arm()  # the next head on this kept-alive connection has its own deadline

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()
        # The WebSocket protocol owns the transport now and this object is done
        # with, but its parser refers back to it: a cycle that only the (rarely
        # run, see gateway/server.py: tune_gc) collector would free, with the
        # request's head in it, per open WebSocket. uvicorn's connection_lost
        # lets go of its parser the same way.
        self.parser = None  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self.address_connections.release(self._address, self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # refused: the rest of the request is read and dropped
        if not self._admitted:
            self._refuse(
                too_busy(self.address_connections.limit), {"retry-after": str(BUSY_RETRY_S)}
            )
            return
        if not self._in_body and self._ours():
            meter = self._meter
            if meter is None:
                meter = self._meter = HeadMeter(self.limits)
            refusal = meter.feed(data)
            if refusal is not None:
                self._refuse(refusal)
                return
        super().data_received(data)

    # -- internals ------------------------------------------------------------

    def _ours(self) -> bool:
        """Open, and not upgraded to a WebSocket (whose protocol then owns the transport)."""
        transport = self.transport
        return not transport.is_closing() and transport.get_protocol() is self

    def _idle(self) -> bool:
        """No response is being written: the connection waits for (the rest of) a request."""
        cycle = self.cycle
        return self._ours() and (cycle is None or bool(cycle.response_complete))

    def _arm(self) -> None:
        self._disarm()
        self._armed_at_head = self._heads
        self._deadline = self.loop.call_later(self.limits.timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timeout(self) -> None:
        self._deadline = None
        if not self._idle() or self._heads != self._armed_at_head:
            return  # a head arrived in time (or the connection is gone or upgraded)
        if self._meter is not None and self._meter.size:
            self._refuse(self.limits.too_slow())
        else:
            # Nothing of a head (or only the rest of a body the app already answered).
            self.transport.close()

    def _refuse(self, refusal: Refusal, headers: dict[str, str] | None = None) -> None:
        self._disarm()
        self._meter = None
        transport = self.transport
        if transport.is_closing() or self._lingering:
            return
        self._lingering = True
        refuse(transport, self.loop, refusal, headers)


def guarded_http_protocol(server: ServerConfig) -> type[GuardedHttpProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with ``server``'s limits.

    Each call makes a new class with its own connection counts, so two
    servers in one process (tests) do not share them.
    """

    class Protocol(GuardedHttpProtocol):
        address_connections = AddressConnections(server.max_connections_per_ip)
        limits = HeadLimits.of(server)

    return Protocol


class DirectWriter:
    """More of a started streaming response, written without going through ASGI ``send``.

    For a stream's live events: the fan-out hands each idle subscriber its
    bytes at once instead of waking its task to call ``send`` (at 10,000
    subscribers, the task steps and the ASGI call chain were about half the
    cost of a delivery, py-spy). ``ready`` holds the conditions uvicorn's
    ``send`` checks; when it is false the caller uses ``send``.
    """

    __slots__ = ("cycle", "wake")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle
        self.wake: Callable[[], None] | None = None

    @property
    def gone(self) -> bool:
        """The client has left (uvicorn's ``connection_lost``)."""
        return bool(self.cycle.disconnected)

    def watch(self, wake: Callable[[], None] | None) -> None:
        """Call ``wake`` whenever the cycle's message event is set: the client
        left, or sent body bytes, which no one reads here — they are dropped
        and reading resumes, as ``receive()`` would (it is not called).
        ``None``: stop.

        Instead of a task awaiting ``receive()`` per stream (its coroutine
        frames, future and task: about 1.4 KB per open stream, tracemalloc).
        """
        self.wake = wake
        event = self.cycle.message_event
        if not isinstance(event, Signal):  # GuardedHttpProtocol gives every cycle one
            raise TypeError(f"a fast-path request's message event is a {type(event).__name__}")
        event.on_set = None if wake is None else self._heard

    def _heard(self) -> None:
        cycle = self.cycle
        if cycle.body:
            cycle.body = bytearray()
            cycle.flow.resume_reading()
        if self.wake is not None:
            self.wake()

    @property
    def ready(self) -> bool:
        cycle = self.cycle
        return bool(
            cycle.response_started
            and cycle.chunked_encoding  # a body of known length: only send() keeps count
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.flow.write_paused
        )

    def write(self, body: bytes) -> None:
        """One more chunk; only when :attr:`ready`."""
        self.cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))

    def abort(self) -> None:
        """Drop the connection: a write failed, so the chunked body may be cut mid-chunk."""
        self.cycle.transport.abort()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with lean per-connection objects.

    uvicorn's ``asyncio.Queue`` (three deques and an event) and ``writable``
    event become an :class:`~gateway.web.lean.Inbox` and a
    :class:`~gateway.web.lean.Signal`; an accepted connection leaves itself
    in the scope for :class:`WebSocketDirectWriter`.
    """

    # uvicorn's own state, in slots: set by its code all the same (a slot on the
    # subclass wins over the instance dict), and the ~16 attributes left keep the
    # dict a compact shared-key one (CPython: at most 30 keys); uvicorn sets 37.
    __slots__ = (
        "close_sent",
        "close_timeout",
        "close_timer",
        "conn",
        "curr_msg_data_type",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "pending_ping_payload",
        "ping_sent_at",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "scope",
        "writable",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]  # put_nowait, get, empty
        self.writable = Signal(True)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # the scope exists, its ASGI task has not run
            self.scope[DIRECT_WRITE] = self  # type: ignore[literal-required]
        # The parsed request: its headers are in the scope already, and nothing reads
        # it again (websockets' parser keeps the object itself, so empty it too).
        event.headers.clear()
        self.request = None  # type: ignore[assignment]

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if self.handshake_complete and self.response is not None:
            # Sent (or refused): the handshake's response and its headers are not read again.
            self.response = None  # type: ignore[assignment]


class WebSocketDirectWriter:
    """Whole text frames written to an open WebSocket without going through ``send``.

    Each write is one complete frame (``Encoded.ws_frame``), so it never
    splits a frame of the protocol's own (pongs, pings, close): those are
    written whole, synchronously, too. ``ready`` holds what the protocol's
    ``send`` checks; when it is false the caller uses ``send``.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self.protocol = protocol

    @property
    def ready(self) -> bool:
        # Cheapest first: this runs for every subscriber of every event. Every
        # way a connection stops being open either sets ``close_sent`` (our
        # close, a refused handshake, a protocol error, a keepalive timeout) or
        # closes the transport (the peer's close, a lost connection).
        protocol = self.protocol
        return bool(
            protocol.handshake_complete
            and not protocol.close_sent
            and not protocol.disconnected
            and protocol.writable.is_set()
            and not protocol.transport.is_closing()
        )

    @property
    def inbox(self) -> Inbox:
        """Where the protocol puts the frames it receives (its ``queue``)."""
        queue = self.protocol.queue
        if not isinstance(queue, Inbox):  # GuardedWebSocketProtocol makes every one an Inbox
            raise TypeError(f"a fast-path WebSocket's queue is a {type(queue).__name__}")
        return queue

    def write(self, frame: bytes) -> None:
        """One complete frame; only when :attr:`ready`."""
        self.protocol.transport.write(frame)

    def abort(self) -> None:
        """Drop the connection: a write failed, so the last frame may be cut short."""
        self.protocol.transport.abort()
