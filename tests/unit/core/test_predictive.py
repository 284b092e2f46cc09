"""The predictive polling policy and its wiring into the lane planner (fake clock)."""

from __future__ import annotations

import math
import random

import pytest

from gateway.config import ConfigError
from gateway.core.eta import DurationModel
from gateway.core.model import State
from gateway.core.policy import PredictivePolicy
from gateway.poller.planner import LanePlanner, Outputs, Request
from gateway.poller.schedule import Entry
from tests.unit.poller.fakes import START, response, runtime, videoproc_status


def _model(durations: list[float], prior: tuple[float, float] | None = None) -> DurationModel:
    model = DurationModel(prior, min_samples=5)
    for d in durations:
        model.record(d)
    return model


def _polls(
    policy: PredictivePolicy, model: DurationModel, until_s: float, **kw: float
) -> list[float]:
    """A task's poll times (seconds since first sight) while it runs, on a fake clock."""
    times = [0.0]
    while times[-1] < until_s:
        times.append(times[-1] + policy.delay(model, elapsed_s=times[-1], **kw))
    return [round(t, 3) for t in times]


PRIOR = (40.0, 90.0)  # 10th and 90th percentile: median 60 s, σ = ln(2.25) / 2.563 = 0.316
EARLIEST = 34.482  # its 4 % quantile: 60 · exp(0.316 · −1.751)


def test_long_gaps_until_the_earliest_end_then_every_bound_to_the_millisecond() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0)
    model = DurationModel(PRIOR)
    assert model.earliest_end(0.04) == pytest.approx(EARLIEST, abs=1e-3)
    assert policy.near_s == 3.0  # 1.5 base intervals
    # One ceiling gap, then one landing 3 s past the 4 % quantile, then every 3 s.
    assert _polls(policy, model, 50.0) == [
        0.0,
        30.0,
        37.482,
        40.482,
        43.482,
        46.482,
        49.482,
        52.482,
    ]
    # The request's own time comes off every gap, so the bound holds to the reply.
    assert _polls(policy, model, 46.0, request_s=0.25) == [
        0.0,
        30.0,
        37.232,
        39.982,
        42.732,
        45.482,
        48.232,
    ]


def test_a_lower_ceiling_takes_more_long_gaps_up_to_the_same_point() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=12.0)
    # 36 s is already within 3 s of the 4 % quantile: from there on every 3 s.
    assert _polls(policy, DurationModel(PRIOR), 40.0) == [0.0, 12.0, 24.0, 36.0, 39.0, 42.0]


def test_never_faster_than_the_base_interval_nor_slower_than_the_ceiling() -> None:
    rng = random.Random(3)
    models = [DurationModel(), DurationModel(PRIOR), _model([50.0 + i / 2 for i in range(60)])]
    for policy in (
        PredictivePolicy(base_s=5.0, ceiling_s=12.0, near_factor=1.0),
        PredictivePolicy(base_s=2.0, ceiling_s=30.0),
        PredictivePolicy(base_s=2.0, ceiling_s=2.5),
    ):
        for _ in range(2000):
            delay = policy.delay(
                rng.choice(models),
                elapsed_s=rng.uniform(0, 200),
                eta_s=rng.choice([None, rng.uniform(0, 99)]),
                request_s=rng.choice([0.0, rng.uniform(0, 20)]),
            )
            assert policy.base_s <= delay <= policy.ceiling_s


def test_a_task_the_model_cannot_place_is_polled_within_the_bound() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0)
    assert policy.delay(DurationModel(), elapsed_s=10.0) == 3.0  # knows nothing
    # 23 samples cannot place a 4 % quantile (the shortest of 23 is undercut 1 time in 24).
    few = _model([50.0 + i for i in range(23)])
    assert few.earliest_end(0.04) is None
    assert policy.delay(few, elapsed_s=0.0) == 3.0
    # The 24th can: the shortest.
    enough = _model([50.0 + i for i in range(24)])
    assert enough.earliest_end(0.04) == 50.0
    assert policy.delay(enough, elapsed_s=0.0) == 30.0
    assert policy.delay(enough, elapsed_s=40.0) == pytest.approx(13.0)
    assert policy.delay(enough, elapsed_s=73.5) == 2.0  # outlived every sample: base


def test_the_tasks_own_eta_brings_the_next_poll_sooner() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0, eta_margin=0.5)
    model = DurationModel(PRIOR)
    assert policy.delay(model, elapsed_s=0.0, eta_s=20.0) == pytest.approx(10.0)
    assert policy.delay(model, elapsed_s=0.0, eta_s=1.0) == 3.0  # never below the bound
    assert policy.delay(model, elapsed_s=0.0, eta_s=100.0) == 30.0  # never later than the model


def test_a_prior_contradicted_by_a_finished_task_is_dropped() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0)
    wrong = DurationModel((300.0, 900.0))
    assert policy.delay(wrong, elapsed_s=0.0) == 30.0
    wrong.record(45.0)  # far below anything (300, 900) allows
    assert not wrong.has_prior and wrong.earliest_end(0.04) is None
    assert wrong.remaining(0.0, 0.5) is None  # eta_s: none rather than wrong
    assert policy.delay(wrong, elapsed_s=0.0) == 3.0
    # Short tasks a right prior allows for keep it.
    right = DurationModel(PRIOR)
    for d in (30.0, 33.0, 36.0, 41.0, 44.0):
        right.record(d)
    assert right.has_prior and right.earliest_end(0.04) == pytest.approx(EARLIEST, abs=1e-3)


def _run(
    policy: PredictivePolicy,
    model: DurationModel,
    *,
    median_s: float,
    sigma: float,
    tasks: int,
    seed: int,
) -> tuple[float, float, list[float]]:
    """Tasks one after another on a fake clock, the model learning from each end as the
    planner does (the middle of the last two polls): the requests relative to a fixed
    poller at the base interval, the share seen later than ``near_s`` after their end,
    and the durations recorded."""
    rng = random.Random(seed)
    sent = fixed = late = 0
    recorded = []
    for _ in range(tasks):
        duration = rng.lognormvariate(math.log(median_s), sigma)
        fixed += math.ceil(duration / policy.base_s) + 1
        last, now = 0.0, 0.0
        sent += 1
        while now < duration:
            last, now = now, now + policy.delay(model, elapsed_s=now)
            sent += 1
        late += now - duration > policy.near_s
        recorded.append((last + now) / 2)
        model.record(recorded[-1])
    return sent / fixed, late / tasks, recorded


@pytest.mark.parametrize(
    ("prior", "sigma", "max_ratio"),
    [
        (PRIOR, 0.3, 0.4),
        (None, 0.3, 0.4),
        ((300.0, 900.0), 0.3, 0.4),  # dropped at the first end
        # A wider spread leaves a longer bulk to poll every 1.5 base intervals: the
        # best any schedule does at this late share is 0.46 (tests/bench/predictive.py).
        ((30.0, 120.0), 0.5, 0.52),
    ],
)
def test_late_share_stays_within_budget_at_a_fraction_of_the_requests(
    prior: tuple[float, float] | None, sigma: float, max_ratio: float
) -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0)
    ratio, late, _ = _run(
        policy, DurationModel(prior), median_s=60.0, sigma=sigma, tasks=2000, seed=11
    )
    assert late <= policy.tail_budget, late
    assert ratio <= max_ratio, ratio


def test_a_learning_model_converges_on_the_distribution() -> None:
    policy = PredictivePolicy(base_s=2.0, ceiling_s=30.0)
    model = DurationModel(window=200)
    _, _, recorded = _run(policy, model, median_s=60.0, sigma=0.3, tasks=600, seed=6)
    # The true 4 % quantile and median: 60 · exp(0.3 · −1.751) = 35.5 s, 60 s.
    assert model.earliest_end(0.04) == pytest.approx(35.5, rel=0.1)
    assert model.remaining(0.0, 0.5) == pytest.approx(60.0, rel=0.05)
    # What it learnt from the first 24 tasks is the schedule, to the millisecond.
    early = DurationModel()
    for d in recorded[:24]:
        early.record(d)
    assert min(recorded[:24]) == 34.5  # seen running at 33 s, done at 36 s
    assert _polls(policy, early, 40.0) == [0.0, 30.0, 37.5, 40.5]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        PredictivePolicy(base_s=5.0, ceiling_s=2.0)
    with pytest.raises(ValueError):
        PredictivePolicy(base_s=2.0, ceiling_s=5.0, near_factor=0.5)
    with pytest.raises(ValueError):
        PredictivePolicy(base_s=2.0, ceiling_s=5.0, tail_budget=0.0)
    with pytest.raises(ValueError):
        PredictivePolicy(base_s=2.0, ceiling_s=5.0, eta_margin=1.0)


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
    # 30 tasks seen running at 39 + i s and done 2 s later: it learns 40 … 69 s.
    for i in range(30):
        entry = Entry(task=f"videoproc:done{i}", interval_s=2.0)
        _, snap = _poll(p, entry, START, "processing", None)
        assert entry.since == START
        _, snap = _poll(p, entry, START + 39.0 + i, "processing", snap)
        assert entry.seen_at == START + 39.0 + i
        out, _ = _poll(p, entry, START + 41.0 + i, "completed", snap)
        assert out.events[-1].terminal
    assert p.durations.samples() == 30
    assert p.durations.earliest_end(0.04) == 40.0  # the shortest of 30
    entry = Entry(task="videoproc:new", interval_s=2.0)
    out, snap = _poll(p, entry, START, "processing", None)
    (event,) = out.events
    assert event.state is State.RUNNING and event.eta_s == 54.0  # the same model
    dues = [out.due[0][1]]
    for _ in range(3):
        out, snap = _poll(p, entry, dues[-1], "processing", snap)
        dues.append(out.due[0][1])
    # The ceiling, then 3 s past the earliest end, then every 3 s.
    assert [round(d - START, 3) for d in dues] == [30.0, 43.0, 46.0, 49.0]


def test_the_bound_counts_the_request_time_and_retry_after_still_holds() -> None:
    rt = runtime("videoproc", polling="predictive", max_interval_s=30)
    p = LanePlanner(rt, rng=random.Random(1))
    for i in range(30):
        p.durations.record(40.0 + i)
    entry = Entry(task="videoproc:x", interval_s=2.0)
    _, snap = _poll(p, entry, START, "processing", None)
    request = Request((entry,), 0.0)
    sent = rt.adapter.build_request(request.task_ids, now_ms=int(START * 1000), request_id="r")
    reply = videoproc_status("x", "processing", progress=0)
    out = p.absorb(request, sent, reply, {entry.task: snap}, now=START + 41.0, elapsed_s=0.4)
    assert out.due[0][1] == pytest.approx(START + 41.0 + 2.6)  # 3 s less the 0.4 s it took
    limited = response({"error": "slow down"}, 429, {"retry-after": "20"})
    out = p.absorb(request, sent, limited, {entry.task: snap}, now=START + 44.0)
    assert out.due[0][1] >= START + 64.0  # never sooner than Retry-After
    assert p.paused_until == START + 64.0


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
