"""The normalized task model shared by every layer.

Adapters turn upstream replies into :class:`Observation` values; the tracker
turns observations into :class:`Event` values; the hub stores and fans out
events. Everything here is an immutable ``msgspec.Struct`` so it can be
encoded once and shared between subscribers.

The wire shape of :class:`Event` is the contract in ``docs/protocol.md``
("Event object").
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec

from gateway.exceptions import InvalidTaskKey

__all__ = [
    "TERMINAL_STATES",
    "ErrorInfo",
    "Event",
    "EventKind",
    "Fault",
    "FaultKind",
    "Observation",
    "Result",
    "State",
    "TaskKey",
    "format_timestamp",
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


class FaultKind(StrEnum):
    """Why a poll taught us nothing about a task (the request itself failed)."""

    AUTH = "auth"  # credentials or signature refused: retrying will not help
    RATE_LIMITED = "rate_limited"  # 429 / upstream throttling; honour retry_after_s
    SERVER = "server"  # 5xx or an upstream API-level error that may pass
    MALFORMED = "malformed"  # the reply could not be understood
    TIMEOUT = "timeout"
    NETWORK = "network"  # connection refused / reset / dropped
    CLIENT = "client"  # the upstream says our request is wrong (4xx)


class ErrorInfo(msgspec.Struct, frozen=True):
    code: str
    message: str


class Result(msgspec.Struct, frozen=True):
    """What a finished task produced, made directly usable (absolute URLs)."""

    urls: tuple[str, ...] = ()
    files: dict[str, str] = msgspec.field(default_factory=dict)
    meta: dict[str, Any] = msgspec.field(default_factory=dict)


class Fault(msgspec.Struct, frozen=True):
    """A failed poll. ``retryable=False`` means: stop hammering, tell a human."""

    kind: FaultKind
    message: str
    retryable: bool = True
    retry_after_s: float | None = None


class Observation(msgspec.Struct, frozen=True):
    """One adapter reading of one task.

    When ``fault`` is set the poll failed and the other fields say nothing
    about the task. ``upstream`` holds the raw status fields worth showing
    (never anything that identifies the account).
    """

    task_id: str
    state: State = State.UNKNOWN
    progress: int | None = None
    position: int | None = None
    message: str | None = None
    result: Result | None = None
    error: ErrorInfo | None = None
    upstream: dict[str, Any] | None = None
    fault: Fault | None = None


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """The event object of the wire contract.

    Every field except ``code`` is always encoded (``null`` included);
    ``code`` only appears on ``notice`` events.

    ``eta_s`` is the gateway's estimate of the seconds left as of
    ``observed_at`` (``gateway/core/eta.py``), or ``None``. Its default is
    ``UNSET`` only so that an event stored before the field existed decodes
    (as ``None``) while ``None`` itself is still encoded as ``null``.
    """

    event: EventKind
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
    updated_at: str
    observed_at: str | None
    eta_s: float | None = msgspec.UNSET  # type: ignore[assignment]
    code: str | None = None

    def __post_init__(self) -> None:
        if self.eta_s is msgspec.UNSET:  # type: ignore[comparison-overlap]
            msgspec.structs.force_setattr(self, "eta_s", None)


_PROVIDER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_TASK_ID_LEN = 256


class TaskKey(msgspec.Struct, frozen=True, order=True):
    """``provider:task_id``; validated on construction via :meth:`parse`/:meth:`of`."""

    provider: str
    task_id: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.task_id}"

    @classmethod
    def of(cls, provider: str, task_id: str) -> TaskKey:
        """Validate both parts (docs/protocol.md, "Task keys").

        Raises:
            InvalidTaskKey: naming the part and the rule it breaks.
        """
        if not _PROVIDER_RE.fullmatch(provider):
            raise InvalidTaskKey(
                f"provider name {_clip(provider)!r} must match ^[a-z][a-z0-9_-]{{0,31}}$",
                field="provider",
            )
        validate_task_id(task_id)
        return cls(provider, task_id)

    @classmethod
    def parse(cls, text: str) -> TaskKey:
        """Parse ``"provider:task_id"``; the task id may itself contain ``:``."""
        provider, sep, task_id = text.partition(":")
        if not sep:
            raise InvalidTaskKey(
                f"task key {_clip(text)!r} must look like 'provider:task_id'", field="task"
            )
        return cls.of(provider, task_id)


def validate_task_id(task_id: str) -> None:
    """1–256 printable characters, no whitespace or control characters."""
    if not task_id:
        raise InvalidTaskKey("task id is empty", field="task_id")
    if len(task_id) > MAX_TASK_ID_LEN:
        raise InvalidTaskKey(
            f"task id is {len(task_id)} characters long; the limit is {MAX_TASK_ID_LEN}",
            field="task_id",
        )
    if not task_id.isprintable() or any(ch.isspace() for ch in task_id):
        raise InvalidTaskKey(
            "task id must not contain whitespace or control characters", field="task_id"
        )


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# The last whole second formatted, and its text (every event of a poll round shares it).
_last_second: tuple[int, str] = (-1, "")


def format_timestamp(epoch_s: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-21T10:00:05.120Z``.

    The same text as ``datetime.fromtimestamp(epoch_s, UTC)`` formatted (its
    rounding to microseconds included), with the date and time of day
    formatted once per second: they were most of an event's observation cost.
    """
    fraction, whole = math.modf(epoch_s)
    second = int(whole)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        second += 1
        micros -= 1_000_000
    elif micros < 0:
        second -= 1
        micros += 1_000_000
    global _last_second
    cached, text = _last_second
    if cached != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = (second, text)
    return f"{text}{micros // 1000:03d}Z"


def wall_clock() -> float:
    return time.time()
