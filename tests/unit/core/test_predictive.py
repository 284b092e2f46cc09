"""The predictive polling policy and its wiring into the lane planner (fake clock)."""

from __future__ import annotations

import random

import pytest

from gateway.config import ConfigError
from gateway.core.eta import DurationModel
from gateway.core.model import State
from gateway.core.policy import PredictivePolicy
from gateway.poller.planner import LanePlanner, Outputs, Request
from gateway.poller.schedule import Entry
from tests.unit.poller.fakes import START, runtime, videoproc_status


def _model(durations: list[float]) -> DurationModel:
    model = DurationModel(min_samples=5)
    for d in durations:
        model.record(d)
    return model


SIXTY = _model([50.0 + i for i in range(21)])  # 50 … 70 s


def test_far_from_the_end_polls_rarely_near_it_at_the_near_interval() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0)
    assert policy.near_s == pytest.approx(2.9)
    assert policy.delay(SIXTY, elapsed_s=0.0) == 30.0  # the ceiling
    assert policy.delay(SIXTY, elapsed_s=40.0) == pytest.approx(10.0)  # up to the earliest end
    assert policy.delay(SIXTY, elapsed_s=49.0) == pytest.approx(2.9)  # in the bulk
    assert policy.delay(SIXTY, elapsed_s=65.0) == pytest.approx(2.9)


def test_never_faster_than_the_base_interval_nor_slower_than_the_ceiling() -> None:
    policy = PredictivePolicy(base_s=5.0, ceiling_s=12.0, near_factor=1.0)
    rng = random.Random(3)
    for _ in range(500):
        delay = policy.delay(
            SIXTY, elapsed_s=rng.uniform(0, 200), eta_s=rng.choice([None, rng.uniform(0, 99)])
        )
        assert delay is None or 5.0 <= delay <= 12.0


def test_a_task_the_model_cannot_place_is_polled_at_the_base_interval() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0)
    assert policy.delay(DurationModel(), elapsed_s=10.0) == 2.0  # knows nothing: base
    assert policy.delay(SIXTY, elapsed_s=71.0) == 2.0  # outlived every sample


def test_the_tasks_own_eta_comes_first() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0, eta_margin=0.5)
    assert policy.delay(SIXTY, elapsed_s=0.0, eta_s=20.0) == pytest.approx(10.0)
    assert policy.delay(SIXTY, elapsed_s=0.0, eta_s=1.0) == pytest.approx(2.9)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        PredictivePolicy(base_s=5.0, ceiling_s=2.0)
    with pytest.raises(ValueError):
        PredictivePolicy(base_s=2.0, ceiling_s=5.0, near_factor=0.5)


# -- configuration ---------------------------------------------------------------


def test_polling_and_typical_duration_are_provider_settings() -> None:
    fixed = runtime("videoproc")
    assert fixed.predictive is None and fixed.typical_duration_s is None
    assert fixed.describe()["polling"] == "fixed"
    rt = runtime("videoproc", polling="predictive", typical_duration_s=60, max_interval_s=20)
    assert rt.predictive == PredictivePolicy(base_s=2.0, ceiling_s=20.0)
    assert rt.typical_duration_s == (30.0, 120.0)
    assert rt.describe()["polling"] == "predictive"
    assert rt.describe()["typical_duration_s"] == [30.0, 120.0]
    assert runtime("videoproc", typical_duration_s=[40, 90]).typical_duration_s == (40.0, 90.0)
    assert runtime("aholo").typical_duration_s == (120.0, 600.0)  # the documented default


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("polling", "sometimes"),
        ("typical_duration_s", [90, 40]),
        ("typical_duration_s", [0, 40]),
        ("typical_duration_s", -3),
    ],
)
def test_bad_polling_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        runtime("videoproc", **{key: value})
    assert key in str(caught.value)


# -- the planner -----------------------------------------------------------------


def _poll(
    p: LanePlanner, entry: Entry, now: float, status: str, snapshot: object
) -> tuple[Outputs, object]:
    request = Request((entry,), 0.0)
    sent = p.rt.adapter.build_request(request.task_ids, now_ms=int(now * 1000), request_id="r")
    reply = videoproc_status(entry.task.partition(":")[2], status, progress=0)
    out = p.absorb(request, sent, reply, {entry.task: snapshot}, now=now)  # type: ignore[dict-item]
    return out, (out.events[-1] if out.events else snapshot)


def test_planner_learns_durations_and_schedules_from_them() -> None:
    rt = runtime("videoproc", polling="predictive", max_interval_s=30)
    p = LanePlanner(rt, rng=random.Random(1))
    # Twelve tasks end between 59 s and 61 s: the model learns 60 s (the middle).
    for i in range(12):
        entry = Entry(task=f"videoproc:done{i}", interval_s=2.0)
        _, snap = _poll(p, entry, START, "processing", None)
        assert entry.since == START
        _, snap = _poll(p, entry, START + 59.0, "processing", snap)
        assert entry.seen_at == START + 59.0
        out, _ = _poll(p, entry, START + 61.0, "completed", snap)
        assert out.events[-1].terminal
    assert p.durations.samples() == 12
    entry = Entry(task="videoproc:new", interval_s=2.0)
    out, snap = _poll(p, entry, START, "processing", None)
    (event,) = out.events
    assert event.state is State.RUNNING and event.eta_s == 60.0  # the same model
    ((_, due),) = out.due
    assert due == START + 30.0  # far from the end: the ceiling
    out, _ = _poll(p, entry, START + 59.0, "processing", snap)
    ((_, due),) = out.due
    assert due == pytest.approx(START + 59.0 + 2.9)  # near it: the near interval


def test_fixed_polling_is_unchanged_and_still_carries_eta() -> None:
    rt = runtime("videoproc", typical_duration_s=[30, 120])
    p = LanePlanner(rt, rng=random.Random(1))
    entry = Entry(task="videoproc:x", interval_s=2.0)
    out, _ = _poll(p, entry, START, "processing", None)
    ((_, due),) = out.due
    assert due == START + 2.0
    assert out.events[0].eta_s == pytest.approx(60.0)


def test_a_forced_end_teaches_the_model_nothing() -> None:
    rt = runtime("videoproc", polling="predictive")
    p = LanePlanner(rt, rng=random.Random(1))
    entry = Entry(task="videoproc:x", interval_s=2.0, deadline_at=START + 1)
    _, snap = _poll(p, entry, START, "processing", None)
    out = p.plan([entry], now=START + 2, mono=0.0)
    (end,) = out.ends
    p.conclude(end, snap, now=START + 2)  # type: ignore[arg-type]
    assert p.durations.samples() == 0
