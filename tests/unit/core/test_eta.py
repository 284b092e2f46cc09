"""``eta_s``: the duration model and the per-event estimate (pure, clock passed in)."""

from __future__ import annotations

import random

import pytest

from gateway.core.eta import (
    ETA_SLIP_FRACTION,
    ETA_SLIP_MIN_S,
    DurationModel,
    estimate,
    position_bucket,
)
from gateway.core.model import Event, Observation, State
from gateway.core.tracker import initial_snapshot, observe

TASK = "videoproc:v1"


def _obs(state: State = State.RUNNING, **fields: object) -> Observation:
    return Observation("v1", state, **fields)  # type: ignore[arg-type]


def _run(steps: list[tuple[float, Observation]], expected_s: float | None = None) -> list[Event]:
    """Feed observations through the tracker; the events that came out."""
    events: list[Event] = []
    current: Event | None = None
    for now, obs in steps:
        event = observe(current, obs, task=TASK, now=now, expected_s=expected_s)
        if event is not None:
            events.append(event)
            current = event
    return events


# -- the duration model --------------------------------------------------------


def test_model_without_prior_or_samples_knows_nothing() -> None:
    model = DurationModel()
    assert not model.known
    assert model.remaining(0.0, 0.5) is None


def test_prior_is_read_as_the_10th_and_90th_percentile() -> None:
    model = DurationModel((30.0, 120.0))
    assert model.known
    assert model.remaining(0.0, 0.1) == pytest.approx(30.0, rel=1e-6)
    assert model.remaining(0.0, 0.9) == pytest.approx(120.0, rel=1e-6)
    assert model.remaining(0.0, 0.5) == pytest.approx(60.0, rel=1e-6)


def test_prior_remaining_is_conditional_on_having_run_so_far() -> None:
    model = DurationModel((30.0, 120.0))
    left = model.remaining(100.0, 0.5)
    assert left is not None and 0 < left < model.remaining(0.0, 0.5)  # type: ignore[operator]
    # A task far past the prior's bulk still gets an answer that ends after now.
    late = model.remaining(1000.0, 0.5)
    assert late is not None and late > 0


def test_samples_replace_the_prior_once_there_are_enough() -> None:
    model = DurationModel((30.0, 120.0), min_samples=5)
    for d in (25.0, 27.0, 29.0, 31.0):
        model.record(d)
    assert model.remaining(0.0, 0.5) == pytest.approx(60.0, rel=1e-6)  # still the prior
    model.record(33.0)
    assert model.remaining(0.0, 0.5) == 29.0
    assert model.remaining(29.5, 0.0) == pytest.approx(1.5)  # the next one up: 31
    assert model.remaining(33.0, 0.5) is None  # outlived every sample


def test_a_prior_the_samples_contradict_is_dropped() -> None:
    model = DurationModel((30.0, 120.0), min_samples=5)
    model.record(25.0)  # short, but the prior allows it (its 5th percentile)
    assert model.has_prior
    model.record(8.0)  # two ends drawn from the prior hold one this short 1 time in 5,000
    assert not model.has_prior and not model.known
    assert model.remaining(0.0, 0.5) is None and model.earliest_end(0.04) is None


def test_earliest_end_needs_enough_samples_to_place_the_quantile() -> None:
    model = DurationModel(min_samples=5)
    for d in range(1, 24):
        model.record(float(d))
    assert model.earliest_end(0.04) is None  # ⌊0.04 · 24⌋ = 0
    model.record(24.0)
    assert model.earliest_end(0.04) == 1.0  # ⌊0.04 · 25⌋ = 1: the shortest
    for d in range(25, 50):
        model.record(float(d))
    assert model.earliest_end(0.04) == 2.0  # ⌊0.04 · 50⌋ = 2
    assert DurationModel((30.0, 120.0)).earliest_end(0.1) == pytest.approx(30.0)


def test_window_is_bounded_and_follows_drift() -> None:
    model = DurationModel(window=10, min_samples=5)
    for _ in range(10):
        model.record(100.0)
    for _ in range(10):
        model.record(20.0)
    assert model.samples() == 10
    assert model.remaining(0.0, 0.99) == 20.0


def test_bad_durations_are_ignored() -> None:
    model = DurationModel(min_samples=1)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        model.record(bad)
    assert model.samples() == 0


def test_position_buckets_fall_back_to_bucket_zero() -> None:
    model = DurationModel(min_samples=3)
    for d in (50.0, 60.0, 70.0):
        model.record(d)  # bucket 0
    assert model.remaining(0.0, 0.5, bucket=position_bucket(9)) == 60.0
    for d in (200.0, 210.0, 220.0):
        model.record(d, bucket=position_bucket(9))
    assert model.remaining(0.0, 0.5, bucket=position_bucket(9)) == 210.0
    assert [position_bucket(p) for p in (None, 0, 1, 2, 3, 4, 1000)] == [0, 0, 1, 2, 2, 3, 6]


# -- eta_s on events -----------------------------------------------------------


def test_no_estimate_from_one_sample() -> None:
    (first,) = _run([(100.0, _obs(progress=10))])
    assert first.eta_s is None


def test_steady_progress_gives_the_real_remaining_time_and_counts_down() -> None:
    # 1 % per second from t=100: the end is at t=200.
    events = _run([(100.0 + i * 2, _obs(progress=i * 2)) for i in range(0, 40)])
    etas = [(e.observed_at, e.eta_s) for e in events[1:]]
    assert all(eta is not None for _, eta in etas)
    for event in events[1:]:
        progress = event.progress
        assert progress is not None
        assert event.eta_s == pytest.approx(100 - progress, abs=0.2)
    remaining = [e.eta_s for e in events[1:]]
    assert remaining == sorted(remaining, reverse=True)  # type: ignore[type-var]


def test_terminal_and_unknown_have_no_eta() -> None:
    events = _run(
        [(0.0, _obs(progress=10)), (10.0, _obs(progress=20)), (20.0, _obs(State.SUCCEEDED))],
        expected_s=30.0,
    )
    assert events[1].eta_s is not None
    assert events[-1].terminal and events[-1].eta_s is None
    fresh = initial_snapshot(TASK, 0.0)
    assert estimate(fresh, _obs(State.UNKNOWN), now=1.0, expected_s=5.0) is None


def test_state_change_uses_the_model_and_none_without_one() -> None:
    (queued, running) = _run([(0.0, _obs(State.QUEUED)), (5.0, _obs(State.RUNNING))], 42.0)
    assert (queued.eta_s, running.eta_s) == (42.0, 42.0)
    (_, running) = _run([(0.0, _obs(State.QUEUED)), (5.0, _obs(State.RUNNING))])
    assert running.eta_s is None


def test_slowdown_moves_the_end_later_by_at_most_the_tolerance() -> None:
    # 2 %/s, then the pace drops to 0.1 %/s.
    events = _run([(0.0, _obs(progress=0)), (10.0, _obs(progress=20)), (20.0, _obs(progress=40))])
    before = events[-1]
    assert before.eta_s == pytest.approx(30.0, abs=0.2)
    after = observe(before, _obs(progress=41), task=TASK, now=30.0)
    assert after is not None and after.eta_s is not None
    prior_end = 20.0 + before.eta_s
    slip = max(ETA_SLIP_MIN_S, ETA_SLIP_FRACTION * before.eta_s)
    assert 30.0 + after.eta_s <= prior_end + slip
    assert 30.0 + after.eta_s > prior_end  # it did move later: the pace really dropped


@pytest.mark.parametrize("now", [30.01, 30.03, 30.049, 30.05, 30.07, 31.26])
def test_the_tolerance_holds_after_rounding_to_a_tenth(now: float) -> None:
    """``eta_s`` is given to 0.1 s: rounded up it would push the end past the slip."""
    events = _run([(0.0, _obs(progress=0)), (10.0, _obs(progress=20)), (20.0, _obs(progress=40))])
    before = events[-1]
    assert before.eta_s is not None
    after = observe(before, _obs(progress=41), task=TASK, now=now)
    assert after is not None and after.eta_s is not None
    slip = max(ETA_SLIP_MIN_S, ETA_SLIP_FRACTION * before.eta_s)
    assert now + after.eta_s <= 20.0 + before.eta_s + slip
    assert now + after.eta_s > 20.0 + before.eta_s + slip - 0.1  # clamped, not dropped


def test_progress_going_back_starts_again_without_the_tolerance() -> None:
    events = _run([(0.0, _obs(progress=0)), (10.0, _obs(progress=50))])
    assert events[-1].eta_s == pytest.approx(10.0, abs=0.2)
    back = observe(events[-1], _obs(progress=5), task=TASK, now=12.0, expected_s=300.0)
    assert back is not None and back.eta_s == 300.0  # a new phase: the model, unclamped


def test_overdue_beyond_the_tolerance_is_none_not_zero() -> None:
    events = _run([(0.0, _obs(progress=0)), (10.0, _obs(progress=50))])
    assert events[-1].eta_s == pytest.approx(10.0, abs=0.2)
    late = observe(events[-1], _obs(progress=50, message="still"), task=TASK, now=60.0)
    assert late is not None and late.eta_s is None


def test_message_change_keeps_counting_down_the_same_end() -> None:
    events = _run([(0.0, _obs(progress=0)), (10.0, _obs(progress=50))])
    later = observe(events[-1], _obs(progress=50, message="encoding"), task=TASK, now=14.0)
    assert later is not None and later.eta_s == pytest.approx(6.0, abs=0.2)


def test_queue_movement_is_a_lower_bound_on_the_model() -> None:
    q = State.QUEUED
    first = observe(None, _obs(q, position=10), task=TASK, now=0.0, expected_s=100.0)
    assert first is not None and first.eta_s == 100.0
    moved = observe(first, _obs(q, position=8), task=TASK, now=10.0, expected_s=20.0)
    assert moved is not None and moved.eta_s == 40.0  # max(wait 40, model 20), end earlier
    fresh = initial_snapshot(TASK, 0.0)
    queued = observe(fresh, _obs(q, position=10), task=TASK, now=0.0)
    assert queued is not None and queued.eta_s is None
    moved = observe(queued, _obs(q, position=8), task=TASK, now=10.0, expected_s=5.0)
    assert moved is not None and moved.eta_s == 40.0  # 8 places at 0.2 places/s
    events = _run([(0.0, _obs(q, position=10)), (10.0, _obs(q, position=8))])
    assert events[-1].eta_s is None  # no model: the queue wait alone is not an ETA


def test_eta_alone_never_makes_an_event() -> None:
    first = observe(None, _obs(progress=10), task=TASK, now=0.0, expected_s=100.0)
    assert first is not None
    assert observe(first, _obs(progress=10), task=TASK, now=50.0, expected_s=1.0) is None


def test_estimates_are_deterministic_and_never_negative() -> None:
    rng = random.Random(7)
    steps: list[tuple[float, Observation]] = []
    now, progress = 0.0, 0
    for _ in range(300):
        now += rng.uniform(0.1, 5.0)
        progress = max(0, min(99, progress + rng.randint(-3, 8)))
        steps.append((now, _obs(progress=progress, message=str(rng.random()))))
    a, b = _run(steps, expected_s=30.0), _run(steps, expected_s=30.0)
    assert a == b
    assert all(e.eta_s is None or e.eta_s >= 0 for e in a)
