"""Request-head limits that need nothing but asyncio: the meter, the refusal, the plain guard.

uvicorn arms no timer on a new connection (its ``timeout_keep_alive`` starts
only once a response is complete) and its httptools protocol bounds neither
the size nor the time of a request head. An ASGI app never sees a head that
does not finish, so the limits sit under uvicorn's protocol:

* :class:`HeadMeter` counts one head as its bytes arrive (request line,
  header fields, total size) and says which limit it broke, if any; it keeps
  no clock and does no I/O;
* :func:`raw_problem` is the ``Connection: close`` answer written straight
  to the transport;
* :class:`PlainHeadGuard` puts the meter, the head deadline and the
  per-address cap in front of uvicorn's stock HTTP protocol, using only the
  :class:`asyncio.Protocol` interface. It is what runs when the fast paths
  (gateway/web/connection.py) are off; it guards the first head of each
  connection, which is also the only head of a WebSocket upgrade.

A WebSocket upgrade's head is read twice: by the HTTP protocol, then again by
``websockets`` from the copy uvicorn hands over (``handle_websocket_upgrade``
in uvicorn/protocols/http/httptools_impl.py and h11_impl.py). ``websockets``
refuses a line longer than ``websockets.http11.MAX_LINE_LENGTH`` (8192 by
default) or more than ``MAX_NUM_HEADERS`` fields with a 414/431 that
uvicorn's WebSocket protocol never writes out, so the connection would hang:
:func:`fit_websockets_limits` raises both to at least these limits, so every
head the meter lets through is one ``websockets`` accepts.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, cast

import msgspec

from gateway.config import ServerConfig
from gateway.web.limits import AddressConnections

__all__ = [
    "BUSY_RETRY_S",
    "LINGER_S",
    "MAX_HEADER_FIELDS",
    "HeadLimits",
    "HeadMeter",
    "PlainHeadGuard",
    "Refusal",
    "fit_websockets_limits",
    "plain_head_guard",
    "raw_problem",
]

# A refused connection frees nothing by waiting; the slot it wants frees when
# one of the address's own streams ends.
BUSY_RETRY_S = 5
# After a refusal, unread request bytes are drained this long before closing:
# closing a socket with unread input sends a RST, which can destroy the refusal
# before the client reads it (RFC 9112 §9.6, "tear-down").
LINGER_S = 2.0
# Header fields per head; websockets' own default (MAX_NUM_HEADERS), which a
# WebSocket handshake must stay within anyway.
MAX_HEADER_FIELDS = 128


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    detail: str
    code: str


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """What one request head may be (``server.max_header_bytes`` and friends)."""

    max_line: int  # the request line without its CRLF: 414 beyond
    max_head: int  # request line + header fields: 431 beyond
    max_fields: int  # header fields: 431 beyond
    timeout_s: float  # the whole head must arrive within this: 408 (or a silent close)

    @classmethod
    def of(cls, server: ServerConfig) -> HeadLimits:
        # The request line may use the whole head: a subscriber token for the most
        # tasks a WebSocket follows (MAX_TOKEN_CHARS in gateway/web/auth.py) rides
        # in ``?token=`` and must fit.
        return cls(
            max_line=server.max_header_bytes,
            max_head=server.max_header_bytes,
            max_fields=MAX_HEADER_FIELDS,
            timeout_s=server.handshake_timeout_s,
        )

    def too_long(self) -> Refusal:
        return Refusal(
            414, f"the request line exceeds {self.max_line} bytes", "request_line_too_long"
        )

    def too_large(self) -> Refusal:
        return Refusal(
            431, f"the request line and headers exceed {self.max_head} bytes", "header_too_large"
        )

    def too_many(self) -> Refusal:
        return Refusal(
            431, f"the request has more than {self.max_fields} header fields", "header_too_large"
        )

    def too_slow(self) -> Refusal:
        return Refusal(
            408, f"the request head did not arrive within {self.timeout_s:g} s", "request_timeout"
        )


class HeadMeter:
    """Counts one request head (RFC 9112 §2.1: request line, fields, blank line).

    :meth:`feed` takes the bytes of each read; a read may end the head and
    carry a body after it, and the blank line may be split across reads.
    """

    __slots__ = ("_crlfs", "_limits", "_tail", "done", "line", "size")

    def __init__(self, limits: HeadLimits) -> None:
        self._limits = limits
        self.size = 0  # head bytes so far
        self.line = -1  # the request line's length once its CRLF arrived
        self.done = False  # the blank line arrived
        self._crlfs = 0
        self._tail = b""  # the last three bytes counted

    def feed(self, data: bytes) -> Refusal | None:
        """Count ``data``; the limit the head broke, else ``None``."""
        if self.done:
            return None
        tail = self._tail
        window = tail + data
        end = window.find(b"\r\n\r\n")
        stop = len(window) if end < 0 else end + 4
        start = len(tail)
        before = self.size - start  # the stream position of window[0]
        self.size += max(0, stop - start)
        # A CRLF whose LF is new: one that starts on the tail's last byte counts.
        first = max(0, start - 1)
        if self.line < 0:
            eol = window.find(b"\r\n", first, stop)
            if eol >= 0:
                self.line = before + eol
        self._crlfs += window.count(b"\r\n", first, stop)
        self._tail = window[-3:]
        limits = self._limits
        if end >= 0:
            self.done = True
        # Still in the request line: a CR at the end may be its terminator's.
        pending = self.size - int(window.endswith(b"\r")) if self.line < 0 else self.line
        if pending > limits.max_line:
            return limits.too_long()
        if self.size > limits.max_head:
            return limits.too_large()
        # Every CRLF after the request line's ends a field, but the blank line's.
        if self._crlfs - 1 - int(self.done) > limits.max_fields:
            return limits.too_many()
        return None


def raw_problem(
    status: int, detail: str, code: str, headers: dict[str, str] | None = None
) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response carrying a problem document."""
    body = msgspec.json.encode(
        {
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "code": code,
        }
    )
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def refuse(
    transport: asyncio.Transport,
    loop: asyncio.AbstractEventLoop,
    refusal: Refusal,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer with ``refusal`` and half-close: the client reads it all, then hangs up
    (or is cut off after :data:`LINGER_S`)."""
    transport.write(raw_problem(refusal.status, refusal.detail, refusal.code, headers))
    if not transport.can_write_eof():
        transport.close()
        return
    transport.write_eof()
    loop.call_later(LINGER_S, transport.close)


def too_busy(limit: int) -> Refusal:
    return Refusal(
        429,
        f"too many connections from this address (limit {limit}); retry later",
        "too_many_connections",
    )


def fit_websockets_limits(limits: HeadLimits) -> list[str]:
    """Let ``websockets`` accept every head within ``limits``; what could not be set.

    ``WEBSOCKETS_MAX_LINE_LENGTH`` / ``WEBSOCKETS_MAX_NUM_HEADERS`` are the
    documented environment knobs; websockets reads them into these module
    globals at import, and ``parse_line`` / ``parse_headers`` read the globals
    at each call, so raising them at start-up has the same effect.
    """
    try:
        from websockets import http11
    except ImportError:  # no WebSocket support at all: nothing to fit
        return []
    missing = []
    for name, wanted in (
        ("MAX_LINE_LENGTH", limits.max_line),
        ("MAX_NUM_HEADERS", limits.max_fields),
    ):
        current = getattr(http11, name, None)
        if not isinstance(current, int):
            missing.append(f"websockets.http11.{name}")
        elif current < wanted:
            setattr(http11, name, wanted)
    return missing


class PlainHeadGuard(asyncio.Protocol):
    """uvicorn's stock HTTP protocol behind the head limits and the per-address cap.

    Composition, not a subclass: it builds the protocol uvicorn would
    (``inner``, with uvicorn's own constructor arguments), passes every
    :class:`asyncio.Protocol` call through, and meters each head on the way.
    It sees bytes only, not uvicorn's parser, so it follows the framing
    itself: a head, then ``Content-Length`` body bytes, then the next head.
    A chunked body or an upgrade ends the metering for that connection (a
    WebSocket upgrade moves the transport to uvicorn's WebSocket protocol,
    after which this guard is out of the path anyway). The first head's
    deadline runs from the connection opening; a later head's from its first
    byte, since only uvicorn knows when the previous response ended (it closes
    an idle kept-alive connection after ``timeout_keep_alive``).
    """

    inner_class: ClassVar[type[asyncio.Protocol]]
    limits: ClassVar[HeadLimits]
    address_connections: ClassVar[AddressConnections]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Whatever uvicorn's server passes (today config=, server_state=,
        # app_state=, _loop=) goes to the protocol it meant to build.
        self.inner = self.inner_class(*args, **kwargs)
        loop = kwargs.get("_loop")
        self.loop: asyncio.AbstractEventLoop = (
            loop if isinstance(loop, asyncio.AbstractEventLoop) else asyncio.get_running_loop()
        )
        self.transport: asyncio.Transport | None = None
        self.meter: HeadMeter | None = None  # the head being read
        self.head = bytearray()  # its bytes (for the body's framing)
        self.body_left = 0  # body bytes before the next head
        self.metering = True  # False after a chunked body or an upgrade
        self.address = "unknown"
        self.admitted = False
        self.refused = False
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        self.inner.connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self.admitted = self.address_connections.admit(self.address, transport)
        self._start_head()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # the rest of a refused request is read and dropped
        if not self.admitted:
            self._refuse(
                too_busy(self.address_connections.limit), {"retry-after": str(BUSY_RETRY_S)}
            )
            return
        if self.metering:
            refusal = self._meter(data)
            if refusal is not None:
                self._refuse(refusal)
                return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.admitted and self.transport is not None:
            self.address_connections.release(self.address, self.transport)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- internals ------------------------------------------------------------

    def _meter(self, data: bytes) -> Refusal | None:
        view = memoryview(data)
        while view and self.metering:
            if self.body_left:
                taken = min(self.body_left, len(view))
                self.body_left -= taken
                view = view[taken:]
                continue
            meter = self.meter
            if meter is None:
                meter = self._start_head()
            before = meter.size
            refusal = meter.feed(bytes(view))
            if refusal is not None:
                return refusal
            used = meter.size - before
            self.head += view[:used]
            view = view[used:]
            if not meter.done:
                break
            self._end_head()
        return None

    def _start_head(self) -> HeadMeter:
        self.meter = HeadMeter(self.limits)
        self.head = bytearray()
        if self.deadline is None:
            self.deadline = self.loop.call_later(self.limits.timeout_s, self._head_timeout)
        return self.meter

    def _end_head(self) -> None:
        self._disarm()
        length = body_length(bytes(self.head))
        self.meter = None
        self.head = bytearray()
        if length is None:
            self.metering = False
        else:
            self.body_left = length

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _head_timeout(self) -> None:
        self.deadline = None
        meter, transport = self.meter, self.transport
        if meter is None or transport is None or transport.is_closing() or not self.metering:
            return
        if transport.get_protocol() is not self:
            return  # upgraded: the WebSocket protocol owns the transport
        if meter.size:
            self._refuse(self.limits.too_slow())
        else:
            transport.close()  # not a byte of a head: nothing to answer

    def _refuse(self, refusal: Refusal, headers: dict[str, str] | None = None) -> None:
        self._disarm()
        self.metering = False
        transport = self.transport
        if self.refused or transport is None or transport.is_closing():
            return
        self.refused = True
        refuse(transport, self.loop, refusal, headers)


_FRAMING = re.compile(
    rb"^(content-length|transfer-encoding|upgrade)[ \t]*:[ \t]*(.*?)[ \t]*$", re.I | re.M
)


def body_length(head: bytes) -> int | None:
    """The body that follows ``head`` (RFC 9112 §6.3): its length, or ``None`` when
    it is chunked, an upgrade or not one clear ``Content-Length``."""
    lengths: set[bytes] = set()
    for name, value in _FRAMING.findall(head.replace(b"\r\n", b"\n")):
        if name.lower() != b"content-length":
            return None
        lengths.add(value)
    if not lengths:
        return 0
    if len(lengths) > 1:
        return None
    (value,) = lengths
    return int(value) if value.isdigit() else None


def plain_head_guard(server: ServerConfig, inner: type[asyncio.Protocol]) -> type[PlainHeadGuard]:
    """A protocol class for ``uvicorn.Config(http=...)`` guarding ``inner`` with
    ``server``'s limits (a new class per call: its own connection counts)."""

    class Protocol(PlainHeadGuard):
        inner_class = inner
        limits = HeadLimits.of(server)
        address_connections = AddressConnections(server.max_connections_per_ip)

    return Protocol
