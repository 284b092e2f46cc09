"""An event builder the webhook unit tests share."""

from __future__ import annotations

from gateway.core.model import ErrorInfo, Event, EventKind, State

TASK = "ailab:7f3c"


def event(seq: int, state: State, kind: EventKind = EventKind.STATE, *, task: str = TASK) -> Event:
    return Event(
        event=kind,
        task=task,
        seq=seq,
        state=state,
        terminal=state.terminal,
        progress=None,
        position=None,
        message=None,
        result=None,
        error=ErrorInfo("upstream_failed", "x") if state is State.FAILED else None,
        upstream=None,
        updated_at="2026-11-21T10:00:05.120Z",
        observed_at="2026-11-21T10:00:05.118Z",
    )
