"""The tracker: observation in, event out — only when something changed.

Pure functions over immutable values: the caller passes the last stored
snapshot (or ``None`` for a task never seen) and gets back the next event
with ``seq + 1``, or ``None``. The upstream docs' own advice is to "only
update the UI when the state changes" (videoproc-api-status.md, 轮询建议);
this is where that happens, once, for every subscriber.
"""

from __future__ import annotations

from msgspec.structs import replace

from gateway.core import eta
from gateway.core.model import (
    ErrorInfo,
    Event,
    EventKind,
    Observation,
    State,
    format_timestamp,
)

__all__ = ["as_snapshot", "force_state", "initial_snapshot", "notice", "observe"]


def initial_snapshot(task: str, now: float) -> Event:
    """The snapshot of a task nothing is known about yet (seq 0, ``unknown``)."""
    stamp = format_timestamp(now)
    return Event(
        event=EventKind.SNAPSHOT,
        task=task,
        seq=0,
        state=State.UNKNOWN,
        terminal=False,
        progress=None,
        position=None,
        message=None,
        result=None,
        error=None,
        upstream=None,
        updated_at=stamp,
        observed_at=None,
    )


def observe(
    previous: Event | None,
    obs: Observation,
    *,
    task: str,
    now: float,
    expected_s: float | None = None,
) -> Event | None:
    """The event ``obs`` causes after ``previous``, or ``None`` if nothing changed.

    ``expected_s`` is the duration model's expected time left for the task
    (``gateway/core/eta.py``); with the progress and queue movement since
    ``previous`` it gives the event's ``eta_s``. The estimate never makes
    an event by itself: it only rides on a real change.

    Rules:
      * a terminal task never changes again;
      * an ``unknown`` reading of a task already seen in a known state is no
        news (a batch reply that momentarily omits an id must not regress it);
      * a different state is a ``state`` event; same state with a different
        progress, position, message, result or error is a ``progress`` event.

    Raises:
        ValueError: if ``obs`` carries a fault (faults are not observations of
            the task; the poller handles them).
    """
    if obs.fault is not None:
        raise ValueError("a faulted poll is not an observation of the task")
    base = previous or initial_snapshot(task, now)
    if base.terminal:
        return None
    if obs.state is State.UNKNOWN and base.state is not State.UNKNOWN:
        return None
    if obs.state is not base.state:
        kind = EventKind.STATE
    elif (obs.progress, obs.position, obs.message, obs.result, obs.error) != (
        base.progress,
        base.position,
        base.message,
        base.result,
        base.error,
    ):
        kind = EventKind.PROGRESS
    else:
        return None
    stamp = format_timestamp(now)
    return Event(
        event=kind,
        task=task,
        seq=base.seq + 1,
        state=obs.state,
        terminal=obs.state.terminal,
        progress=obs.progress,
        position=obs.position,
        message=obs.message,
        result=obs.result,
        error=obs.error,
        upstream=obs.upstream,
        updated_at=stamp,
        observed_at=stamp,
        eta_s=eta.estimate(base, obs, now=now, expected_s=expected_s),
    )


def force_state(
    previous: Event | None, *, task: str, state: State, error: ErrorInfo, now: float
) -> Event | None:
    """A gateway-decided transition (deadline passed, credentials refused).

    Returns ``None`` if the task is already terminal.
    """
    base = previous or initial_snapshot(task, now)
    if base.terminal:
        return None
    return replace(
        base,
        event=EventKind.STATE,
        seq=base.seq + 1,
        state=state,
        terminal=state.terminal,
        position=None,
        message=error.message,
        result=None,
        error=error,
        updated_at=format_timestamp(now),
        eta_s=None,
    )


def notice(current: Event | None, *, task: str, code: str, message: str, now: float) -> Event:
    """A ``notice``: no state change, same seq; carries the current snapshot's fields."""
    base = current or initial_snapshot(task, now)
    return replace(base, event=EventKind.NOTICE, message=message, code=code)


def as_snapshot(event: Event) -> Event:
    """The same state, labelled as the first message a subscriber gets."""
    if event.event is EventKind.SNAPSHOT:
        return event
    return replace(event, event=EventKind.SNAPSHOT, code=None)
