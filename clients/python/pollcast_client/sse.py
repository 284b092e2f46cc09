"""A pure, incremental Server-Sent Events decoder: bytes in, events out.

It implements the "Interpreting an event stream" rules of the WHATWG HTML
standard (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* the stream is UTF-8 (decoded with replacement); one leading BOM is dropped;
* lines end with CRLF, LF or CR — a CR at the end of one chunk may be the
  first half of a CRLF split across chunks;
* a line starting with ``:`` is a comment (heartbeats such as ``: ping``);
* ``data`` lines are joined with LF; a blank line dispatches the event, unless
  the data buffer is empty ("If the data buffer is an empty string, set the
  data buffer and the event type buffer to the empty string and return");
* ``id`` sets the last event ID unless it contains NUL, and it is *not* reset
  when an event is dispatched: a message without ``id`` keeps the previous one;
* ``retry`` sets the reconnection time if its value is all ASCII digits;
* an event not ended by a blank line when the stream closes is discarded.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["SSEDecoder", "ServerSentEvent"]

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event. ``id`` is the stream's last event ID at dispatch time."""

    data: str
    event: str = "message"
    id: str = ""


class SSEDecoder:
    """Feed it the body's bytes as they arrive; it returns the events completed so far.

    ``last_event_id`` and ``retry_ms`` reflect every field read so far, which
    is what a reconnecting client sends back (``Last-Event-ID``) and waits
    (the reconnection time).
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # the current line, not yet ended
        self._at_start = True  # a BOM is only stripped at the very start
        self._after_cr = False  # the previous chunk ended in CR: a leading LF completes it
        self._data: list[str] = []
        self._event = ""
        self._id_buffer = ""
        self.last_event_id = ""
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk`` (any split of the stream: mid-line, mid-character)."""
        return self.feed_text(self._utf8.decode(chunk))

    def feed_text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = False
        events: list[ServerSentEvent] = []
        start = 0
        for match in _LINE_END.finditer(text):
            line = self._partial + text[start : match.start()]
            self._partial = ""
            start = match.end()
            event = self._line(line)
            if event is not None:
                events.append(event)
        rest = text[start:]
        if not rest and text.endswith("\r"):
            self._after_cr = True
        self._partial += rest
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(
            data="\n".join(self._data), event=self._event or "message", id=self.last_event_id
        )
        self._data = []
        self._event = ""
        return event
