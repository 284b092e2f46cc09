"""The messages of pollcast's wire contract (docs/protocol.md), as typed values.

An event object's ``event`` field is the tag of a tagged union: each kind is
its own frozen ``msgspec.Struct`` (:class:`Snapshot`, :class:`StateChanged`,
:class:`ProgressUpdate`, :class:`Notice`), all subclasses of :class:`Event`,
so code can dispatch with ``match``::

    match event:
        case Notice(code=code):
            ...
        case Event(terminal=True):
            ...

``event.event`` still reads ``"snapshot" | "state" | "progress" | "notice"``,
as on the wire. WebSocket control frames (``subscribed``, ``unsubscribed``,
``pong``, ``error``) share the same tag, so one decoder built once reads every
server frame. Unknown fields are ignored (a newer gateway may add some); an
unknown ``event`` or ``state`` value is a decode error.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

import msgspec

__all__ = [
    "TERMINAL_STATES",
    "AnyEvent",
    "ErrorFrame",
    "ErrorInfo",
    "Event",
    "EventKind",
    "Notice",
    "Ping",
    "Pong",
    "ProgressUpdate",
    "Result",
    "ServerFrame",
    "Snapshot",
    "State",
    "StateChanged",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "decode_event",
    "decode_frame",
    "encode",
]


class State(StrEnum):
    """Normalized task state (docs/protocol.md, "Normalized state")."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {State.SUCCEEDED, State.FAILED, State.CANCELLED, State.EXPIRED, State.REJECTED}
)


class EventKind(StrEnum):
    SNAPSHOT = "snapshot"
    STATE = "state"
    PROGRESS = "progress"
    NOTICE = "notice"


class ErrorInfo(msgspec.Struct, frozen=True):
    code: str
    message: str


class Result(msgspec.Struct, frozen=True):
    """What a finished task produced: absolute URLs, named files, extra metadata."""

    urls: tuple[str, ...] = ()
    files: dict[str, str] = msgspec.field(default_factory=dict)
    meta: dict[str, Any] = msgspec.field(default_factory=dict)


class Event(msgspec.Struct, frozen=True, tag_field="event", omit_defaults=True):
    """The event object; never instantiated itself, only through its four kinds.

    Every field is always on the wire (``null`` included) except ``code``,
    which only notices carry, and ``eta_s``, which a gateway older than the
    field does not send (it then reads as ``None``). ``eta_s`` is the
    gateway's estimate of the seconds left as of ``observed_at``.

    ``seq`` grows by one per ``state``/``progress`` event of a task; a
    ``snapshot`` carries the seq of the state it shows; a ``notice`` repeats
    the current seq and carries a ``code`` (``history_gap``, ``resync``,
    ``server_draining``…) and a human ``message``.
    """

    kind: ClassVar[EventKind]

    task: str
    seq: int
    state: State
    terminal: bool
    progress: int | None
    position: int | None
    message: str | None
    result: Result | None
    error: ErrorInfo | None
    upstream: dict[str, Any] | None
    updated_at: datetime
    observed_at: datetime | None
    eta_s: float | None = None  # the gateway's estimate of the seconds left, as of observed_at
    code: str | None = None

    @property
    def event(self) -> EventKind:
        """The wire's ``event`` field."""
        return self.kind

    @property
    def counts_for_resume(self) -> bool:
        """Whether this event advances the resume point (notices do not: they carry no id)."""
        return self.kind is not EventKind.NOTICE


class Snapshot(Event, frozen=True, tag="snapshot"):
    """The current state: the first message after subscribing (or after a resync)."""

    kind = EventKind.SNAPSHOT


class StateChanged(Event, frozen=True, tag="state"):
    kind = EventKind.STATE


class ProgressUpdate(Event, frozen=True, tag="progress"):
    """Same state; progress, queue position, message, result or error changed."""

    kind = EventKind.PROGRESS


class Notice(Event, frozen=True, tag="notice"):
    """No state change: upstream degraded/recovered, a history gap, the server draining."""

    kind = EventKind.NOTICE


AnyEvent = Snapshot | StateChanged | ProgressUpdate | Notice


# -- WebSocket frames (docs/protocol.md, "WebSocket") --------------------------


class Subscribed(msgspec.Struct, frozen=True, tag_field="event", tag="subscribed"):
    tasks: list[str]


class Unsubscribed(msgspec.Struct, frozen=True, tag_field="event", tag="unsubscribed"):
    tasks: list[str]


class Pong(msgspec.Struct, frozen=True, tag_field="event", tag="pong"):
    pass


class ErrorFrame(msgspec.Struct, frozen=True, tag_field="event", tag="error"):
    """A request the server refused; ``task`` names the task when it concerns one."""

    code: str
    message: str
    task: str | None = None


ServerFrame = (
    Snapshot
    | StateChanged
    | ProgressUpdate
    | Notice
    | Subscribed
    | Unsubscribed
    | Pong
    | ErrorFrame
)


class Subscribe(msgspec.Struct, frozen=True, tag_field="op", tag="subscribe", omit_defaults=True):
    tasks: list[str]
    since: dict[str, int] = msgspec.field(default_factory=dict)


class Unsubscribe(msgspec.Struct, frozen=True, tag_field="op", tag="unsubscribe"):
    tasks: list[str]


class Ping(msgspec.Struct, frozen=True, tag_field="op", tag="ping"):
    pass


_event_decoder = msgspec.json.Decoder(AnyEvent)
_frame_decoder = msgspec.json.Decoder(ServerFrame)
_encoder = msgspec.json.Encoder()


def decode_event(data: bytes | str) -> AnyEvent:
    """One event object (an SSE ``data`` field, an NDJSON line).

    Raises:
        msgspec.DecodeError: if ``data`` is not an event object of the contract.
    """
    event: AnyEvent = _event_decoder.decode(data)
    return event


def decode_frame(data: bytes | str) -> ServerFrame:
    """One WebSocket text frame from the server: an event or a control frame.

    Raises:
        msgspec.DecodeError: if ``data`` is neither.
    """
    frame: ServerFrame = _frame_decoder.decode(data)
    return frame


def encode(message: Event | Subscribe | Unsubscribe | Ping) -> bytes:
    """JSON bytes of an event (for NDJSON output) or of a client WebSocket message."""
    return _encoder.encode(message)
