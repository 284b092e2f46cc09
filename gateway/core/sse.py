"""Event encoding for the wire: encoded once, written to every subscriber.

SSE framing follows the WHATWG HTML "Server-sent events" section
(https://html.spec.whatwg.org/multipage/server-sent-events.html):
a message is ``field: value`` lines ended by a blank line; ``data`` may be
repeated (lines are joined with LF by the reader); ``id`` sets the stream's
last event ID, and a message *without* ``id`` leaves it unchanged — which is
why notices, which carry no new seq, are sent without one.
"""

from __future__ import annotations

import msgspec

from gateway.core.model import Event, EventKind
from gateway.exceptions import InvalidCursor

__all__ = [
    "MAX_SEQ",
    "PING",
    "Encoded",
    "decode_cursor",
    "encode_cursor",
    "parse_last_event_id",
    "retry_frame",
    "sse_message",
    "ws_text_frame",
]

_encoder = msgspec.json.Encoder()

#: A comment line keeps proxies from timing the stream out; browsers ignore it.
PING = b": ping\n\n"


def retry_frame(retry_ms: int) -> bytes:
    return b"retry: %d\n\n" % retry_ms


def sse_message(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE message. ``data`` must not contain CR or LF (JSON from msgspec never does)."""
    parts = []
    if id is not None:
        parts.append(b"id: " + id.encode() + b"\n")
    if event is not None:
        parts.append(b"event: " + event.encode() + b"\n")
    parts.append(b"data: " + data + b"\n\n")
    return b"".join(parts)


class Encoded:
    """An event with its bytes, computed once and shared by every subscriber.

    ``sse`` carries ``id: <seq>`` (omitted for notices); ``sse_tail`` is the
    same message without the ``id`` line, for streams whose id is a cursor.
    ``line`` (NDJSON), ``sse_tail`` and ``ws_frame`` (the JSON as one
    WebSocket text frame) are built on first use: most events only ever go
    out one way, and every event is encoded on the poll path.
    """

    __slots__ = ("_line", "_sse_tail", "_text", "_ws_frame", "event", "json", "sse")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.json = data = _encoder.encode(event)
        kind = event.event.value.encode()
        if event.event is EventKind.NOTICE:
            self.sse = b"event: %b\ndata: %b\n\n" % (kind, data)
        else:
            self.sse = b"id: %d\nevent: %b\ndata: %b\n\n" % (event.seq, kind, data)
        self._line: bytes | None = None
        self._sse_tail: bytes | None = None
        self._text: str | None = None
        self._ws_frame: bytes | None = None

    @property
    def line(self) -> bytes:
        """The JSON and a line feed: one NDJSON line."""
        line = self._line
        if line is None:
            line = self._line = self.json + b"\n"
        return line

    @property
    def sse_tail(self) -> bytes:
        """The SSE message without its ``id`` line."""
        tail = self._sse_tail
        if tail is None:
            tail = self._sse_tail = b"event: %b\ndata: %b\n\n" % (
                self.event.event.value.encode(),
                self.json,
            )
        return tail

    @property
    def ws_frame(self) -> bytes:
        """The JSON as one unfragmented WebSocket text frame from a server (built once).

        A server's frames are not masked (RFC 6455 §5.1), so the same bytes are
        valid on every connection: no per-connection state goes into them.
        Sent without compression, which permessage-deflate allows per message
        (RFC 7692 §6: RSV1 clear = not compressed).
        """
        frame = self._ws_frame
        if frame is None:
            frame = self._ws_frame = ws_text_frame(self.json)
        return frame

    @property
    def text(self) -> str:
        """The JSON as ``str``, for WebSocket text frames (decoded once, on first use)."""
        if self._text is None:
            self._text = self.json.decode()
        return self._text

    @property
    def counts_for_resume(self) -> bool:
        """Notices are not part of the seq history and are never replayed."""
        return self.event.event is not EventKind.NOTICE


def ws_text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame carrying ``payload`` (UTF-8), RFC 6455 §5.2."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


MAX_SEQ = 2**53


def parse_last_event_id(raw: str | None) -> int | None:
    """``Last-Event-ID`` / ``?last_event_id=`` of a single-task stream: a seq.

    Raises:
        InvalidCursor: on anything but a non-negative integer.
    """
    if raw is None or raw == "":
        return None
    if len(raw) > 20 or not raw.isdigit() or not raw.isascii():
        raise InvalidCursor(
            "Last-Event-ID must be the integer seq of the last event received",
            field="last_event_id",
        )
    value = int(raw)
    if value > MAX_SEQ:
        raise InvalidCursor("Last-Event-ID is out of range", field="last_event_id")
    return value


_CURSOR_PREFIX = "c1."


def encode_cursor(seqs: list[int]) -> str:
    """The multiplexed stream's ``id:``: seqs in the order of the ``tasks`` parameter."""
    return _CURSOR_PREFIX + ".".join(map(str, seqs))


def decode_cursor(raw: str, n_tasks: int) -> list[int]:
    """Inverse of :func:`encode_cursor`, checked against the stream's task count.

    Raises:
        InvalidCursor: naming what is wrong with it.
    """
    if not raw.startswith(_CURSOR_PREFIX) or len(raw) > 24 * n_tasks + 8:
        raise InvalidCursor(
            "cursor is not one this gateway issued (expected 'c1.<seq>.<seq>…')", field="cursor"
        )
    parts = raw[len(_CURSOR_PREFIX) :].split(".")
    if len(parts) != n_tasks:
        raise InvalidCursor(
            f"cursor covers {len(parts)} tasks but the stream has {n_tasks}", field="cursor"
        )
    seqs = []
    for part in parts:
        if not part.isdigit() or not part.isascii() or len(part) > 16 or int(part) > MAX_SEQ:
            raise InvalidCursor(f"cursor part {part[:20]!r} is not a seq", field="cursor")
        seqs.append(int(part))
    return seqs
