"""The simulator's state: task registry, statistics, tryon coins, the fault board."""

from __future__ import annotations

import random

import pytest

from gateway.exceptions import InputError
from gateway.sim import SimConfig, Simulator
from gateway.sim.faults import FaultBoard, FaultMode, FaultSpec
from gateway.sim.timeline import TaskExists, TaskSpec, UnknownTask
from tests.integration.sim_server import ManualClock


def test_tasks_get_generated_ids_and_refuse_duplicates() -> None:
    sim = Simulator(rng=random.Random(0))
    generated = sim.create_task(TaskSpec(provider="tryon"))
    assert generated.task_id.isdigit()
    sim.create_task(TaskSpec(provider="ailab", task_id="same"))
    sim.create_task(TaskSpec(provider="genpic", task_id="same"))  # other provider: fine
    with pytest.raises(TaskExists) as caught:
        sim.create_task(TaskSpec(provider="ailab", task_id="same"))
    assert caught.value.status == 409


def test_unknown_provider_and_negative_visibility_are_refused() -> None:
    sim = Simulator()
    with pytest.raises(InputError, match="unknown provider"):
        sim.create_task(TaskSpec(provider="nope"))
    with pytest.raises(InputError, match="visible_after_s"):
        sim.create_task(TaskSpec(provider="ailab", visible_after_s=-1))


def test_view_follows_the_injected_clock() -> None:
    clock = ManualClock()
    sim = Simulator(clock=clock)
    sim.create_task(TaskSpec(provider="ailab", task_id="t"))  # default timeline
    states = []
    for _ in range(3):
        view = sim.view("ailab", "t")
        assert view is not None
        states.append(str(view.state))
        clock.advance(1)
    assert states == ["queued", "running", "succeeded"]
    assert sim.view("ailab", "other") is None


def test_a_held_task_stands_still_while_others_go_on() -> None:
    clock = ManualClock()
    sim = Simulator(clock=clock)
    sim.create_task(TaskSpec(provider="ailab", task_id="held"))  # default timeline
    sim.create_task(TaskSpec(provider="ailab", task_id="free"))

    def state(task_id: str) -> str:
        view = sim.view("ailab", task_id)
        assert view is not None
        return str(view.state)

    clock.advance(0.5)
    assert sim.hold("ailab", "held").held_since == clock.now
    clock.advance(5)
    assert (state("held"), state("free")) == ("queued", "succeeded")
    sim.release("ailab", "held")
    clock.advance(0.5)
    assert state("held") == "running"  # 1 s of its timeline has gone by
    sim.create_task(TaskSpec(provider="ailab", task_id="late", held=True))
    clock.advance(30)
    assert state("late") == "queued"
    sim.release("ailab", "late")
    clock.advance(1)
    assert state("late") == "running"
    for change in (sim.hold, sim.release):
        with pytest.raises(UnknownTask) as caught:
            change("ailab", "nosuch")
        assert caught.value.status == 404


def test_stats_and_reset() -> None:
    now = [5.0]
    sim = Simulator(SimConfig(tryon_balance=1.0), clock=lambda: now[0])
    sim.create_task(TaskSpec(provider="ailab", task_id="t"))
    sim.record_request("aholo")
    sim.record_task_queries("aholo", ["A", "B"])
    now[0] = 6.5
    sim.record_request("aholo")
    sim.record_task_queries("aholo", ["A"])
    sim.record_fault("aholo")
    assert sim.charge_tryon()
    assert sim.stats() == {
        "requests": {"aholo": 2},
        "times": {"aholo": [5.0, 6.5]},
        "tasks": {"aholo:A": 2, "aholo:B": 1},
        "faults": {"aholo": 1},
        "coins_spent": {"tryon": 0.1},
        "balance": {"tryon": 0.9},
    }
    sim.arm_fault(FaultSpec(provider="ailab", mode=FaultMode.HTTP500))
    sim.reset()
    assert sim.stats()["requests"] == {}
    assert sim.stats()["balance"] == {"tryon": 1.0}
    assert sim.view("ailab", "t") is None
    assert sim.pick_fault("ailab") is None


def test_balance_never_drifts_over_many_charges() -> None:
    sim = Simulator(SimConfig(tryon_balance=100.0))
    charged = 0
    while sim.charge_tryon():
        charged += 1
    assert charged == 1000
    assert sim.stats()["balance"] == {"tryon": 0.0}
    assert sim.stats()["coins_spent"] == {"tryon": 100.0}


# --- fault board -----------------------------------------------------------------


def test_fault_applies_for_its_duration_then_lapses() -> None:
    board = FaultBoard()
    rng = random.Random(0)
    board.arm(FaultSpec(provider="ailab", mode=FaultMode.HTTP500, duration_s=10), now_mono=0.0)
    hit = board.pick("ailab", 9.9, rng)
    assert hit is not None
    assert hit.mode is FaultMode.HTTP500
    assert board.pick("aholo", 1.0, rng) is None  # other providers unaffected
    assert board.active(5.0)[0]["remaining_s"] == 5.0
    assert board.pick("ailab", 10.0, rng) is None
    assert board.active(10.0) == []


def test_fault_without_duration_lasts_until_cleared() -> None:
    board = FaultBoard()
    board.arm(FaultSpec(provider="ailab", mode=FaultMode.SLOW, duration_s=None), 0.0)
    assert board.pick("ailab", 1e9, random.Random(0)) is not None
    board.arm(FaultSpec(provider="ailab", mode=FaultMode.NONE), 0.0)
    assert board.pick("ailab", 1.0, random.Random(0)) is None


def test_fault_probability_is_honoured() -> None:
    board = FaultBoard()
    rng = random.Random(42)
    board.arm(FaultSpec(provider="ailab", mode=FaultMode.MALFORMED, probability=0.25), 0.0)
    hits = sum(board.pick("ailab", 1.0, rng) is not None for _ in range(2000))
    assert 400 < hits < 600
    board.arm(FaultSpec(provider="ailab", mode=FaultMode.MALFORMED, probability=0.0), 0.0)
    assert all(board.pick("ailab", 1.0, rng) is None for _ in range(100))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (FaultSpec(provider="ailab", mode=FaultMode.HTTP500, probability=1.5), "probability"),
        (FaultSpec(provider="ailab", mode=FaultMode.SLOW, delay_s=-1), "delay_s"),
        (FaultSpec(provider="nope", mode=FaultMode.SLOW), "provider"),
    ],
)
def test_bad_fault_specs_name_the_field(spec: FaultSpec, field: str) -> None:
    with pytest.raises(InputError) as caught:
        Simulator().arm_fault(spec)
    assert caught.value.field == field


def test_retry_after_header_is_whole_seconds_when_whole() -> None:
    assert FaultSpec(
        provider="a", mode=FaultMode.RATE_LIMIT, retry_after_s=2
    ).retry_after_header == ("2")
    assert (
        FaultSpec(provider="a", mode=FaultMode.RATE_LIMIT, retry_after_s=0.5).retry_after_header
        == "0.5"
    )
