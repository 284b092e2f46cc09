"""The pure timeline model: which step is in force when, validation, generated ids."""

from __future__ import annotations

import random
import re
import uuid

import msgspec
import pytest

from gateway.core.model import State
from gateway.exceptions import InputError, InvalidTaskKey
from gateway.sim.timeline import SimTask, Step, TaskSpec, Timeline, check_task_id, new_task_id


def steps(*specs: tuple[float, str]) -> tuple[Step, ...]:
    return tuple(Step(at=at, state=State(state)) for at, state in specs)


THREE_STEPS = steps((0, "queued"), (2, "running"), (6, "succeeded"))


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (0.0, State.QUEUED),
        (1.999, State.QUEUED),
        (2.0, State.RUNNING),  # a step starts exactly at its "at"
        (5.9, State.RUNNING),
        (6.0, State.SUCCEEDED),
        (10_000.0, State.SUCCEEDED),
    ],
)
def test_step_at_is_the_last_step_started(elapsed: float, expected: State) -> None:
    assert Timeline.of(THREE_STEPS, "ailab").step_at(elapsed).state is expected


def test_steps_at_the_same_instant_resolve_to_the_later_one() -> None:
    timeline = Timeline.of(steps((0, "queued"), (1, "running"), (1, "failed")), "ailab")
    assert timeline.step_at(1.0).state is State.FAILED


def test_a_timeline_starting_late_is_queued_until_its_first_step() -> None:
    timeline = Timeline.of(steps((3, "running")), "ailab")
    assert timeline.step_at(0.0) == Step(at=0.0, state=State.QUEUED)
    assert timeline.step_at(3.0).state is State.RUNNING


def test_steps_keep_their_details() -> None:
    step = Step(at=0, state=State.QUEUED, position=3, message="hi", native=1)
    assert Timeline.of((step,), "aholo").step_at(0.5) is step


def test_timeline_decodes_from_the_admin_json() -> None:
    spec = msgspec.json.decode(
        b'{"provider": "aholo", "timeline": [{"at": 0, "state": "queued", "position": 3},'
        b' {"at": 2, "state": "running", "progress": 10, "native": 8},'
        b' {"at": 6, "state": "succeeded", "result": ["http://x/a.ply"]}]}',
        type=TaskSpec,
    )
    assert spec.timeline is not None
    assert [s.state for s in spec.timeline] == [State.QUEUED, State.RUNNING, State.SUCCEEDED]
    assert spec.timeline[1].native == 8
    assert spec.timeline[2].result == ("http://x/a.ply",)


@pytest.mark.parametrize(
    ("bad_steps", "provider", "fragment"),
    [
        ((), "ailab", "at least one step"),
        (steps((2, "queued"), (1, "running")), "ailab", "time order"),
        (steps((0, "succeeded"), (1, "running")), "ailab", "follows the terminal step"),
        (steps((0, "unknown")), "ailab", "cannot be simulated"),
        ((Step(at=-1, state=State.QUEUED),), "ailab", ">= 0"),
        ((Step(at=float("nan"), state=State.QUEUED),), "ailab", "finite"),
        ((Step(at=0, state=State.RUNNING, progress=101),), "ailab", "0..100"),
        ((Step(at=0, state=State.QUEUED, position=-1),), "tryon", "position"),
        ((Step(at=0, state=State.QUEUED, native="Waiting"),), "aholo", "an integer"),
        ((Step(at=0, state=State.QUEUED, native=3),), "genpic", "a string"),
    ],
)
def test_invalid_timelines_are_refused_naming_the_step(
    bad_steps: tuple[Step, ...], provider: str, fragment: str
) -> None:
    with pytest.raises(InputError) as caught:
        Timeline.of(bad_steps, provider)
    assert fragment in caught.value.message


def three_step_task(provider: str, task_id: str, visible_after_s: float = 0.0) -> SimTask:
    """:data:`THREE_STEPS`, made at 100.0 on the monotonic clock and 1.7e9 on the wall."""
    return SimTask(
        provider=provider,
        task_id=task_id,
        timeline=Timeline.of(THREE_STEPS, provider),
        created_mono=100.0,
        created_wall=1_700_000_000.0,
        visible_after_s=visible_after_s,
    )


def test_task_view_is_hidden_until_visible_and_dates_its_step() -> None:
    task = three_step_task("aholo", "3FO4K4WBNNYV", visible_after_s=1.5)
    assert task.view(101.0) is None
    view = task.view(102.5)
    assert view is not None
    assert view.state is State.RUNNING
    assert view.step_wall == 1_700_000_002.0
    assert task.key == "aholo:3FO4K4WBNNYV"


def test_generated_ids_look_like_the_upstreams_own() -> None:
    rng = random.Random(7)
    assert new_task_id("tryon", rng, ()).isdigit()
    for provider in ("aholo", "genpic"):
        assert re.fullmatch(r"[A-Z0-9]{12}", new_task_id(provider, rng, ()))
    for provider in ("ailab", "videoproc"):
        assert uuid.UUID(new_task_id(provider, rng, ())).version == 4


def test_generated_ids_are_reproducible_and_avoid_taken_ones() -> None:
    first = new_task_id("genpic", random.Random(1), ())
    assert new_task_id("genpic", random.Random(1), ()) == first
    assert new_task_id("genpic", random.Random(1), {first}) != first


def test_tryon_ids_must_be_integers() -> None:
    check_task_id("tryon", "2880")
    with pytest.raises(InvalidTaskKey, match="integers"):
        check_task_id("tryon", "abc")
    with pytest.raises(InvalidTaskKey):
        check_task_id("ailab", "has space")


def test_a_held_task_stands_still_and_goes_on_from_where_it_stopped() -> None:
    task = three_step_task("ailab", "t")
    held = task.held(100.5)
    assert held.held(130.0) is held  # holding again changes nothing
    assert held.elapsed(130.0) == 0.5
    view = held.view(130.0)
    assert view is not None
    assert view.state is State.QUEUED
    released = held.released(140.0)  # held for 39.5 s
    assert released.released(150.0) is released
    assert released.elapsed(141.5) == 2.0
    view = released.view(141.5)
    assert view is not None
    assert view.state is State.RUNNING
    # The step began 2 s into the timeline, 39.5 s of hold later on the wall.
    assert view.step_wall == 1_700_000_041.5
    again = released.held(142.0).released(152.0)  # a second hold adds to the first
    assert again.elapsed(152.0) == 2.5
