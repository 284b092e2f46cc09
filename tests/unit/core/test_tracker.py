"""The tracker: only real changes become events, with seq + 1."""

from __future__ import annotations

import pytest

from gateway.core.model import (
    ErrorInfo,
    Event,
    EventKind,
    Fault,
    FaultKind,
    Observation,
    Result,
    State,
)
from gateway.core.tracker import as_snapshot, force_state, initial_snapshot, notice, observe

TASK = "ailab:7f3c9e"
T0 = 0.12
T1 = 1.5
T0_TEXT = "1970-01-01T00:00:00.120Z"
T1_TEXT = "1970-01-01T00:00:01.500Z"


def _seen(state: State, **fields: object) -> Event:
    """The event after observing ``state`` on a fresh task at T0."""
    event = observe(None, Observation("7f3c9e", state, **fields), task=TASK, now=T0)  # type: ignore[arg-type]
    assert event is not None
    return event


def test_initial_snapshot_is_seq_zero_unknown() -> None:
    snap = initial_snapshot(TASK, T0)
    assert snap.event is EventKind.SNAPSHOT
    assert (snap.task, snap.seq, snap.state, snap.terminal) == (TASK, 0, State.UNKNOWN, False)
    assert (snap.progress, snap.position, snap.message, snap.result, snap.error) == (None,) * 5
    assert snap.upstream is None
    assert snap.updated_at == T0_TEXT
    assert snap.observed_at is None
    assert snap.code is None


def test_first_known_state_is_a_state_event_with_seq_one() -> None:
    event = observe(
        None,
        Observation("7f3c9e", State.QUEUED, position=3, upstream={"task_status": 0}),
        task=TASK,
        now=T0,
    )
    assert event is not None
    assert event.event is EventKind.STATE
    assert (event.task, event.seq, event.state, event.terminal) == (TASK, 1, State.QUEUED, False)
    assert event.position == 3
    assert event.upstream == {"task_status": 0}
    assert event.updated_at == event.observed_at == T0_TEXT


def test_unknown_observation_of_a_new_task_is_no_news() -> None:
    assert observe(None, Observation("7f3c9e"), task=TASK, now=T0) is None
    assert observe(initial_snapshot(TASK, T0), Observation("7f3c9e"), task=TASK, now=T1) is None


def test_state_change_increments_seq() -> None:
    queued = _seen(State.QUEUED)
    running = observe(queued, Observation("7f3c9e", State.RUNNING, progress=10), task=TASK, now=T1)
    assert running is not None
    assert running.event is EventKind.STATE
    assert (running.seq, running.state, running.progress) == (2, State.RUNNING, 10)
    assert running.updated_at == T1_TEXT


@pytest.mark.parametrize(
    "changed",
    [
        {"progress": 55},
        {"position": 1},
        {"message": "downloading"},
        {"result": Result(urls=("https://x/1.jpg",))},
        {"error": ErrorInfo("slow", "upstream is slow")},
    ],
)
def test_same_state_with_another_field_changed_is_progress(changed: dict[str, object]) -> None:
    running = _seen(State.RUNNING, progress=50)
    fields: dict[str, object] = {"progress": 50, **changed}
    event = observe(running, Observation("7f3c9e", State.RUNNING, **fields), task=TASK, now=T1)  # type: ignore[arg-type]
    assert event is not None
    assert event.event is EventKind.PROGRESS
    assert event.seq == running.seq + 1
    assert event.state is State.RUNNING
    for name, value in fields.items():
        assert getattr(event, name) == value


def test_no_change_is_none() -> None:
    running = _seen(State.RUNNING, progress=50, message="working")
    same = Observation("7f3c9e", State.RUNNING, progress=50, message="working")
    assert observe(running, same, task=TASK, now=T1) is None


def test_upstream_fields_alone_are_not_a_change() -> None:
    running = _seen(State.RUNNING, upstream={"status": "processing", "n": 1})
    other = Observation("7f3c9e", State.RUNNING, upstream={"status": "processing", "n": 2})
    assert observe(running, other, task=TASK, now=T1) is None


def test_terminal_event_is_marked_terminal() -> None:
    done = _seen(State.SUCCEEDED, result=Result(urls=("https://x/1.jpg",)))
    assert done.terminal is True
    assert done.event is EventKind.STATE


@pytest.mark.parametrize(
    "terminal", [State.SUCCEEDED, State.FAILED, State.CANCELLED, State.EXPIRED, State.REJECTED]
)
@pytest.mark.parametrize(
    "later",
    [State.QUEUED, State.RUNNING, State.SUCCEEDED, State.FAILED, State.UNKNOWN],
)
def test_terminal_task_never_changes_again(terminal: State, later: State) -> None:
    final = _seen(terminal)
    assert observe(final, Observation("7f3c9e", later, progress=99), task=TASK, now=T1) is None


def test_unknown_after_a_known_state_is_ignored() -> None:
    running = _seen(State.RUNNING, progress=40)
    assert observe(running, Observation("7f3c9e", State.UNKNOWN), task=TASK, now=T1) is None
    # ...even when it carries other fields (e.g. "not visible upstream yet").
    missing = Observation("7f3c9e", State.UNKNOWN, error=ErrorInfo("not_found", "gone"))
    assert observe(running, missing, task=TASK, now=T1) is None


def test_unknown_with_new_fields_on_an_unknown_task_is_progress() -> None:
    snap = initial_snapshot(TASK, T0)
    missing = Observation("7f3c9e", State.UNKNOWN, error=ErrorInfo("not_found", "unknown id"))
    event = observe(snap, missing, task=TASK, now=T1)
    assert event is not None
    assert event.event is EventKind.PROGRESS
    assert (event.seq, event.state) == (1, State.UNKNOWN)


def test_faulted_observation_raises_value_error() -> None:
    faulted = Observation("7f3c9e", fault=Fault(FaultKind.SERVER, "ailab answered HTTP 503"))
    with pytest.raises(ValueError, match="fault"):
        observe(_seen(State.RUNNING), faulted, task=TASK, now=T1)
    with pytest.raises(ValueError, match="fault"):
        observe(None, faulted, task=TASK, now=T1)


def test_seq_counts_every_state_and_progress_event() -> None:
    event: Event | None = None
    readings = [
        Observation("7f3c9e", State.QUEUED, position=2),
        Observation("7f3c9e", State.QUEUED, position=1),
        Observation("7f3c9e", State.QUEUED, position=1),  # no change
        Observation("7f3c9e", State.RUNNING, progress=0),
        Observation("7f3c9e", State.UNKNOWN),  # ignored
        Observation("7f3c9e", State.RUNNING, progress=50),
        Observation("7f3c9e", State.SUCCEEDED, progress=100),
        Observation("7f3c9e", State.FAILED),  # after terminal: ignored
    ]
    kinds = []
    for i, obs in enumerate(readings):
        nxt = observe(event, obs, task=TASK, now=float(i))
        if nxt is not None:
            assert nxt.seq == (event.seq if event else 0) + 1
            kinds.append(nxt.event)
            event = nxt
    assert event is not None
    assert event.seq == 5
    assert kinds == [
        EventKind.STATE,
        EventKind.PROGRESS,
        EventKind.STATE,
        EventKind.PROGRESS,
        EventKind.STATE,
    ]


# --- force_state -----------------------------------------------------------

DEADLINE = ErrorInfo("gateway_deadline", "no terminal state within 7200 s")


def test_force_state_expires_a_running_task() -> None:
    running = _seen(State.RUNNING, progress=40, position=None, message="working")
    expired = force_state(running, task=TASK, state=State.EXPIRED, error=DEADLINE, now=T1)
    assert expired is not None
    assert expired.event is EventKind.STATE
    assert (expired.seq, expired.state, expired.terminal) == (2, State.EXPIRED, True)
    assert expired.error == DEADLINE
    assert expired.message == DEADLINE.message
    assert expired.result is None
    assert expired.position is None
    assert expired.updated_at == T1_TEXT
    assert expired.progress == 40  # the last known progress is kept


def test_force_state_on_a_never_seen_task_starts_from_seq_zero() -> None:
    forced = force_state(None, task=TASK, state=State.EXPIRED, error=DEADLINE, now=T1)
    assert forced is not None
    assert (forced.task, forced.seq, forced.state, forced.event) == (
        TASK,
        1,
        State.EXPIRED,
        EventKind.STATE,
    )


def test_force_state_on_a_terminal_task_is_none() -> None:
    done = _seen(State.SUCCEEDED)
    assert force_state(done, task=TASK, state=State.EXPIRED, error=DEADLINE, now=T1) is None
    expired = force_state(None, task=TASK, state=State.EXPIRED, error=DEADLINE, now=T1)
    assert force_state(expired, task=TASK, state=State.FAILED, error=DEADLINE, now=T1) is None


def test_observe_after_force_state_expired_is_none() -> None:
    expired = force_state(
        _seen(State.RUNNING), task=TASK, state=State.EXPIRED, error=DEADLINE, now=T1
    )
    assert observe(expired, Observation("7f3c9e", State.SUCCEEDED), task=TASK, now=T1) is None


# --- notice / as_snapshot --------------------------------------------------


def test_notice_keeps_seq_and_state_and_carries_code() -> None:
    running = _seen(State.RUNNING, progress=40)
    note = notice(running, task=TASK, code="upstream_degraded", message="ailab answers 503", now=T1)
    assert note.event is EventKind.NOTICE
    assert note.code == "upstream_degraded"
    assert note.message == "ailab answers 503"
    assert (note.seq, note.state, note.progress, note.task) == (1, State.RUNNING, 40, TASK)
    assert note.updated_at == running.updated_at  # a notice is not an update


def test_notice_on_a_never_seen_task_has_seq_zero() -> None:
    note = notice(None, task=TASK, code="history_gap", message="events were lost", now=T0)
    assert (note.event, note.seq, note.state, note.code) == (
        EventKind.NOTICE,
        0,
        State.UNKNOWN,
        "history_gap",
    )


def test_as_snapshot_relabels_and_drops_the_code() -> None:
    running = _seen(State.RUNNING, progress=40)
    snap = as_snapshot(running)
    assert snap.event is EventKind.SNAPSHOT
    assert (snap.seq, snap.state, snap.progress, snap.updated_at) == (
        running.seq,
        running.state,
        running.progress,
        running.updated_at,
    )
    note = notice(running, task=TASK, code="budget", message="slowed", now=T1)
    assert as_snapshot(note).code is None
    assert as_snapshot(note).event is EventKind.SNAPSHOT


def test_as_snapshot_of_a_snapshot_is_itself() -> None:
    snap = initial_snapshot(TASK, T0)
    assert as_snapshot(snap) is snap
