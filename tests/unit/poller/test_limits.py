"""LocalLimits: one node's rate and budget, on a fake clock."""

from __future__ import annotations

import random

import pytest

from gateway.poller.limits import LocalLimits, budget_calls
from gateway.poller.planner import LanePlanner
from tests.unit.poller.fakes import START, entries, runtime

MONO = 1000.0


def test_budget_calls_counts_whole_calls() -> None:
    assert budget_calls(runtime("tryon", budget_per_hour=1.0)) == 10
    assert budget_calls(runtime("tryon", budget_per_hour=0.3)) == 3  # 0.1 * 3 > 0.3 in floats
    assert budget_calls(runtime("ailab")) is None  # free: no budget


def test_rate_books_slots_one_after_another() -> None:
    limits = LocalLimits.of(runtime("tryon", rate_per_s=2.0))  # burst 2
    waits = [limits.admit(MONO).wait_s for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.5, 1.0])
    assert limits.admit(MONO + 10).wait_s == 0.0  # refilled meanwhile


def test_budget_refuses_until_the_first_call_leaves_the_window() -> None:
    limits = LocalLimits.of(runtime("tryon", budget_per_hour=0.3, rate_per_s=100.0))
    granted = [limits.admit(MONO + i) for i in range(3)]
    assert [a.limited for a in granted] == [None, None, None]
    refused = limits.admit(MONO + 10)
    assert refused.limited == "budget"
    assert refused.wait_s == pytest.approx(3600.0 - 10)
    assert limits.admit(MONO + 3600.0).limited is None  # the first call is out of the window


def test_a_shared_planner_leaves_rate_and_budget_to_the_driver() -> None:
    rt = runtime("tryon", budget_per_hour=0.1, rate_per_s=1.0)
    planner = LanePlanner(rt, rng=random.Random(1), shared_limits=True)
    out = planner.plan(entries("tryon", 5), now=START, mono=MONO)
    # All five go out now: nothing is booked locally, the driver asks the cluster.
    assert [r.send_at for r in out.requests] == [MONO] * 5
    assert planner.limits.budget_wait(MONO) == 0.0


def test_refusals_give_one_budget_notice_per_streak() -> None:
    planner = LanePlanner(
        runtime("tryon", budget_per_hour=1.0), rng=random.Random(1), shared_limits=True
    )
    batch = entries("tryon", 2)
    first = planner.admitted(batch, wait_s=30.0, now=START)
    assert [n.code for n in first.notices] == ["budget_limited"]
    assert [at for _, at in first.due] == [START + 30.0] * 2
    again = planner.admitted(batch, wait_s=20.0, now=START + 10)
    assert again.notices == []  # the same streak
    assert [at for _, at in again.due] == [START + 30.0] * 2
    assert planner.admitted([], wait_s=0.0, now=START + 40).notices == []  # the streak ends
    assert [n.code for n in planner.admitted(batch, wait_s=5.0, now=START + 50).notices] == [
        "budget_limited"
    ]
