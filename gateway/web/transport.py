"""Connection guards under uvicorn's HTTP protocol: address cap, head deadline, head size.

uvicorn's httptools protocol arms no timer on a new connection (its
``timeout_keep_alive`` starts only once a response is complete) and bounds
neither the time nor the size of a request head. So a client could open
connections and send nothing, or one header byte a minute (slowloris), or
megabytes of headers, and hold them forever. An ASGI app never sees such a
connection, so the guard sits in the protocol:

* a request head (request line + headers) must be complete within
  ``server.handshake_timeout_s`` of the connection opening, or of the previous
  response on a kept-alive connection; otherwise ``408`` and close, or just
  close if not a byte of it came (so an idle kept-alive connection lasts at
  most that long too). Trickling bytes does not extend the deadline;
* a head larger than ``server.max_header_bytes`` gets ``431`` and close;
* one address may hold ``server.max_connections_per_ip`` open connections
  (HTTP, streams and WebSockets alike); one more gets ``429`` with
  ``Retry-After`` once it sends its request, and is closed.

The replies are ``application/problem+json`` like every other error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.config import ServerConfig
from gateway.web.lean import LeanFlowControl, Pipeline, Signal
from gateway.web.limits import AddressConnections

__all__ = ["DirectWriter", "GuardedHttpProtocol", "direct_writer", "guarded_http_protocol"]

# A refused connection frees nothing by waiting; the slot it wants frees when
# one of the address's own streams ends.
BUSY_RETRY_S = 5
# After a refusal, unread request bytes are drained this long before closing:
# closing a socket with unread input sends a RST, which can destroy the refusal
# before the client reads it (RFC 9112 §9.6, "tear-down").
LINGER_S = 2.0
# The scope key under which a request's uvicorn cycle is found (ours, not ASGI's).
DIRECT_WRITE = "pollcast.cycle"


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


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards above (settings on the subclass)."""

    # Slots, not instance attributes: uvicorn's own ~28 stay in a compact
    # shared-key dict (CPython keeps at most 30 keys that way); nine more made
    # every connection's dict a full one, ~1.5 KB per open stream.
    __slots__ = (
        "_address",
        "_admitted",
        "_armed_at_head",
        "_deadline",
        "_head_bytes",
        "_head_tail",
        "_heads",
        "_in_body",
        "_lingering",
    )

    address_connections: ClassVar[AddressConnections]
    head_timeout_s: ClassVar[float]
    max_head_bytes: ClassVar[int]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # The same objects, smaller: every open stream keeps them (gateway/web/lean.py).
        self.flow = LeanFlowControl(transport)
        self.pipeline = Pipeline()  # type: ignore[assignment]  # deque's appendleft/pop
        self._address = self.client[0] if self.client else "unknown"
        self._admitted = self.address_connections.admit(self._address, transport)
        self._heads = 0  # request heads completed on this connection
        self._in_body = False  # the parser is between a head and the end of its message
        self._head_bytes = 0  # of the head being read
        self._head_tail = b""  # the last bytes counted, to find a blank line split in two
        self._armed_at_head = 0  # ``_heads`` when the deadline was armed
        self._deadline: asyncio.TimerHandle | None = None
        self._lingering = False
        self._arm()

    # httptools parser callbacks (and uvicorn's end of a response), observed.

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_body = True
        self._head_bytes = 0
        self._head_tail = b""
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
                429,
                f"too many connections from this address "
                f"(limit {self.address_connections.limit}); retry later",
                "too_many_connections",
                {"retry-after": str(BUSY_RETRY_S)},
            )
            return
        if not self._in_body and self._ours():
            # Count only the head: it ends at the first blank line (a body may follow
            # in the same read), which may straddle two reads.
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
            self._head_tail = window[-3:]
            if self._head_bytes > self.max_head_bytes:
                self._refuse(
                    431,
                    f"the request line and headers exceed {self.max_head_bytes} bytes",
                    "header_too_large",
                )
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
        self._deadline = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timeout(self) -> None:
        self._deadline = None
        if not self._idle() or self._heads != self._armed_at_head:
            return  # a head arrived in time (or the connection is gone or upgraded)
        if self._head_bytes:
            self._refuse(
                408,
                f"the request head did not arrive within {self.head_timeout_s:g} s",
                "request_timeout",
            )
        else:
            # Nothing of a head (or only the rest of a body the app already answered).
            self.transport.close()

    def _refuse(
        self, status: int, detail: str, code: str, headers: dict[str, str] | None = None
    ) -> None:
        self._disarm()
        transport = self.transport
        if transport.is_closing() or self._lingering:
            return
        transport.write(raw_problem(status, detail, code, headers))
        if not transport.can_write_eof():
            transport.close()
            return
        # Half-close: the client reads the whole refusal, then hangs up (or is cut off).
        transport.write_eof()
        self._lingering = True
        self.loop.call_later(LINGER_S, transport.close)


def guarded_http_protocol(server: ServerConfig) -> type[GuardedHttpProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with ``server``'s limits.

    Each call makes a new class with its own connection counts, so two
    servers in one process (tests) do not share them.
    """

    class Protocol(GuardedHttpProtocol):
        address_connections = AddressConnections(server.max_connections_per_ip)
        head_timeout_s = server.handshake_timeout_s
        max_head_bytes = server.max_header_bytes

    return Protocol


class DirectWriter:
    """More of a started streaming response, written without going through ASGI ``send``.

    For a stream's live events: the fan-out hands each idle subscriber its
    bytes at once instead of waking its task to call ``send`` (at 10,000
    subscribers, the task steps and the ASGI call chain were about half the
    cost of a delivery, py-spy). ``ready`` holds the conditions uvicorn's
    ``send`` checks; when it is false the caller uses ``send``.
    """

    __slots__ = ("cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle

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


def direct_writer(scope: Mapping[str, Any]) -> DirectWriter | None:
    """The writer of a request served by :class:`GuardedHttpProtocol` (else ``None``)."""
    cycle: RequestResponseCycle | None = scope.get(DIRECT_WRITE)
    return DirectWriter(cycle) if cycle is not None else None
