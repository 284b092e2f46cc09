"""The lane driver over a fake upstream and a fake clock: what goes on the wire, and when."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import ClassVar

import pytest

from gateway.core.model import ErrorInfo, Event, State, TaskKey
from gateway.core.sse import Encoded
from gateway.core.tracker import force_state
from gateway.exceptions import BackendError, SeqConflict
from gateway.hub.local import LocalHub
from gateway.metrics import Metrics
from gateway.poller.engine import Poller, ProviderLane
from gateway.poller.limits import Admission
from gateway.poller.provider import ProviderRuntime
from gateway.poller.schedule import Entry, LocalSchedule
from gateway.providers.base import UpstreamResponse
from tests.unit.poller.fakes import (
    Call,
    FakeClock,
    FakeUpstream,
    aholo_listing,
    response,
    runtime,
    server_error,
)

ENDED = ErrorInfo("done", "done")


@pytest.fixture
async def hub() -> AsyncIterator[LocalHub]:
    hub = LocalHub(":memory:")
    await hub.start()
    yield hub
    await hub.close()


def make_poller(
    hub: LocalHub, clock: FakeClock, handler: Callable[[Call], UpstreamResponse], **policy: object
) -> tuple[Poller, ProviderLane, FakeUpstream]:
    upstream = FakeUpstream(handler, clock=clock, latency_s=0.05)
    poller = Poller(
        hub,
        {"aholo": runtime("aholo", **policy)},
        {"aholo": upstream},  # type: ignore[dict-item]
        metrics=Metrics(),
        wall=clock.wall,
        monotonic=clock.mono,
        sleep=clock.sleep,
        rng=random.Random(11),
    )
    return poller, poller.lane("aholo"), upstream


async def run_for(lane: ProviderLane, clock: FakeClock, seconds: float) -> None:
    """Turn the lane's crank on fake time: each round, its replies, then the wait it asks for."""
    end = clock.wall() + seconds
    while clock.wall() < end:
        wait = await lane.turn()
        await lane.drain()
        clock.advance(wait)


def ids_of(call: Call) -> list[str]:
    ids: list[str] = call.json
    return ids


async def test_a_failing_batch_goes_out_whole_and_less_often_then_recovers(hub: LocalHub) -> None:
    clock = FakeClock()
    failing = [True]

    def handler(call: Call) -> UpstreamResponse:
        return server_error() if failing[0] else aholo_listing(ids_of(call))

    poller, lane, upstream = make_poller(
        hub, clock, handler, interval_s=0.2, max_interval_s=0.2, backoff_max_s=2.0
    )
    for i in range(100):
        await poller.watch(TaskKey("aholo", f"A{i:03d}"))
    await run_for(lane, clock, 10.0)
    during = len(upstream.calls)
    assert all(len(ids_of(c)) == 100 for c in upstream.calls)
    gaps = [b - a for a, b in zip(upstream.times, upstream.times[1:], strict=False)]
    # Each retry waited out one lane-wide backoff: never sooner than the minimum delay.
    assert all(gap >= 0.05 for gap in gaps), gaps
    assert during < 0.5 * 10.0 / 0.35  # a healthy round every ~0.35 s
    failures = poller.metrics.upstream_requests.labels("aholo", "server")._value.get()
    assert failures == during
    failing[0] = False
    await run_for(lane, clock, 3.0)
    recovered = upstream.calls[during:]
    assert recovered and all(len(ids_of(c)) == 100 for c in recovered)
    snapshot = await hub.snapshot("aholo:A000")
    assert snapshot is not None and snapshot.state is State.RUNNING
    assert lane.planner.failures == 0


async def test_retry_after_holds_the_lane_to_the_millisecond(hub: LocalHub) -> None:
    clock = FakeClock()
    answers = [response({"error": "slow down"}, 429, {"retry-after": "2"})]

    def handler(call: Call) -> UpstreamResponse:
        return answers.pop(0) if answers else aholo_listing(ids_of(call))

    poller, lane, upstream = make_poller(hub, clock, handler, interval_s=0.2, max_interval_s=0.2)
    await poller.watch(TaskKey("aholo", "A1"))
    t0 = clock.wall()
    await run_for(lane, clock, 2.5)
    first, second = upstream.times[:2]
    assert first == t0  # a new task is due at once
    # The 429 arrived 50 ms later; nothing was sent for the next 2 s, then the
    # retry waited the batch coalescing window (0.1 s) like any due task.
    assert second == pytest.approx(first + 0.05 + 2.0 + 0.1, abs=1e-6)


async def test_a_deadline_ends_the_task_expired_without_polling_it(hub: LocalHub) -> None:
    clock = FakeClock()
    poller, lane, upstream = make_poller(
        hub, clock, lambda call: aholo_listing(ids_of(call)), interval_s=1.0, max_interval_s=1.0
    )
    clock_start = clock.wall()
    await poller.watch(TaskKey("aholo", "D1"), deadline_s=2.5)
    await run_for(lane, clock, 5.0)
    snapshot = await hub.snapshot("aholo:D1")
    assert snapshot is not None and snapshot.state is State.EXPIRED
    assert snapshot.error is not None and snapshot.error.code == "gateway_deadline"
    polled = len(upstream.calls)
    assert polled >= 2 and all(t < clock_start + 2.5 for t in upstream.times)
    assert "aholo:D1" not in poller.watching and lane.tasks == {}
    await run_for(lane, clock, 5.0)
    assert len(upstream.calls) == polled


class LeasingSchedule(LocalSchedule):
    """A local schedule that hands out a lease token with every claim, as a fenced one does."""

    async def claim(self, provider: str, now: float, horizon: float) -> list[Entry]:
        claimed = await super().claim(provider, now, horizon)
        for entry in claimed:
            entry.lease = f"lease-of-{entry.task}"
        return claimed


class RecordingPoller(Poller):
    stores: ClassVar[list[tuple[list[str], dict[str, str] | None]]] = []

    async def _store(
        self, events: list[Event], rt: ProviderRuntime, leases: Mapping[str, str] | None
    ) -> list[Event]:
        RecordingPoller.stores.append(([e.task for e in events], dict(leases or {})))
        return await super()._store(events, rt, leases)


async def test_each_commit_carries_the_lease_its_observation_was_made_under(
    hub: LocalHub,
) -> None:
    clock = FakeClock()
    poller = RecordingPoller(
        hub,
        {"aholo": runtime("aholo")},
        {"aholo": FakeUpstream(lambda call: aholo_listing(ids_of(call)), clock=clock)},  # type: ignore[dict-item]
        schedule=LeasingSchedule(),
        wall=clock.wall,
        monotonic=clock.mono,
        sleep=clock.sleep,
    )
    for name in ("L1", "L2"):
        await poller.watch(TaskKey("aholo", name))
    await run_for(poller.lane("aholo"), clock, 0.5)
    assert RecordingPoller.stores == [
        (
            ["aholo:L1", "aholo:L2"],
            {"aholo:L1": "lease-of-aholo:L1", "aholo:L2": "lease-of-aholo:L2"},
        )
    ]


class RefusingHub(LocalHub):
    """Refuses (does not store, leaves out of the result) every event of ``refused``."""

    refused = "aholo:R1"

    async def commit(
        self,
        events: Sequence[Event],
        *,
        terminal_ttl_s: float,
        leases: Mapping[str, str] | None = None,
    ) -> list[Encoded]:
        return await super().commit(
            [e for e in events if e.task != self.refused], terminal_ttl_s=terminal_ttl_s
        )


async def test_only_what_the_hub_stored_is_published_and_finished() -> None:
    hub = RefusingHub(":memory:")
    await hub.start()
    told: list[str] = []

    async def on_commit(events: Sequence[Event]) -> None:
        told.extend(e.task for e in events)

    metrics = Metrics()
    upstream = {"aholo": FakeUpstream(lambda call: aholo_listing(ids_of(call)))}
    poller = Poller(
        hub,
        {"aholo": runtime("aholo")},
        upstream,  # type: ignore[arg-type]
        metrics=metrics,
        on_commit=on_commit,
    )
    try:
        for name in ("R1", "R2"):
            await poller.watch(TaskKey("aholo", name))
        done = [
            force_state(None, task=f"aholo:{n}", state=State.SUCCEEDED, error=ENDED, now=1.0)
            for n in ("R1", "R2")
        ]
        await poller.commit([e for e in done if e is not None], poller.runtime("aholo"))
    finally:
        await hub.close()
    assert told == ["aholo:R2"]
    assert metrics.events_published._value.get() == 1
    # The refused terminal event did not end R1: it is still watched and scheduled.
    assert poller.watching == {"aholo:R1"}
    assert set(poller.lane("aholo").tasks) == {"aholo:R1"}


class DivergedHub(LocalHub):
    """The first commit finds the store holding another state than the poll
    started from (a write lost, or a failover's replica behind): SeqConflict."""

    conflicts = 1

    async def commit(
        self,
        events: Sequence[Event],
        *,
        terminal_ttl_s: float,
        leases: Mapping[str, str] | None = None,
    ) -> list[Encoded]:
        if self.conflicts:
            self.conflicts -= 1
            raise SeqConflict(f"{events[0].task}: seq {events[0].seq} does not follow 7")
        return await super().commit(events, terminal_ttl_s=terminal_ttl_s)


async def test_a_terminal_commit_the_store_refuses_as_out_of_seq_is_polled_again() -> None:
    """Nothing was stored, so the end is not known to anyone yet: the task is
    polled again at the base interval (its seq from a fresh read), not dropped."""
    hub = DivergedHub(":memory:")
    await hub.start()
    clock = FakeClock()
    try:
        poller, lane, upstream = make_poller(
            hub,
            clock,
            lambda call: aholo_listing(ids_of(call), status=3),
            interval_s=0.2,
            max_interval_s=0.2,
        )
        await poller.watch(TaskKey("aholo", "A1"))
        await run_for(lane, clock, 1.0)
        stored = await hub.snapshot("aholo:A1")
    finally:
        await hub.close()
    assert len(upstream.calls) == 2  # the refused end, then the one that was stored
    # Again one base interval after the reply, plus the batch coalescing window.
    assert upstream.times[1] == pytest.approx(upstream.times[0] + 0.05 + 0.2 + 0.1, abs=1e-6)
    assert stored is not None and stored.state is State.SUCCEEDED and stored.seq == 1
    assert poller.watching == set()  # ended once the end was stored


class FlakySchedule(LocalSchedule):
    """Hand-backs fail while ``down``: the store went away under a poll."""

    down = False

    async def release(self, provider: str, due: Sequence[tuple[Entry, float]]) -> None:
        if self.down:
            raise BackendError("redis: release failed (ConnectionError)")
        await super().release(provider, due)


async def test_claims_a_failed_poll_could_not_hand_back_are_handed_back_at_the_next_turn(
    hub: LocalHub,
) -> None:
    """Not left claimed until a lease runs out (in a cluster: ``lease_s`` without
    polls), nor forever (one process): due at once when the store answers again."""
    clock = FakeClock()
    schedule = FlakySchedule()
    upstream = FakeUpstream(lambda call: aholo_listing(ids_of(call)), clock=clock, latency_s=0.05)
    poller = Poller(
        hub,
        {"aholo": runtime("aholo", interval_s=0.2, max_interval_s=0.2)},
        {"aholo": upstream},  # type: ignore[dict-item]
        schedule=schedule,
        metrics=Metrics(),
        wall=clock.wall,
        monotonic=clock.mono,
        sleep=clock.sleep,
        rng=random.Random(11),
    )
    lane = poller.lane("aholo")
    await poller.watch(TaskKey("aholo", "A1"))
    schedule.down = True
    clock.advance(await lane.turn())  # claims A1 and polls it
    await lane.drain()  # the reply is stored, but neither its release nor the hand-back is
    assert len(upstream.calls) == 1
    schedule.down = False
    back = clock.wall()
    await run_for(lane, clock, 1.0)
    assert len(upstream.calls) >= 4  # polled again, then every round
    assert upstream.times[1] == pytest.approx(back + 0.1, abs=1e-6)  # at once (+ the window)


async def test_a_followed_task_is_polled_until_its_grace_period_after_the_last_subscriber(
    hub: LocalHub,
) -> None:
    clock = FakeClock()
    upstream = FakeUpstream(lambda call: aholo_listing(ids_of(call)), clock=clock)
    poller = Poller(
        hub,
        {"aholo": runtime("aholo", interval_s=1.0, max_interval_s=1.0)},
        {"aholo": upstream},  # type: ignore[dict-item]
        grace_s=3.0,
        wall=clock.wall,
        monotonic=clock.mono,
        sleep=clock.sleep,
    )
    lane = poller.lane("aholo")
    key = TaskKey("aholo", "G1")
    t0 = clock.wall()
    await poller.follow(key)
    for _ in range(4):  # followed: the housekeeper keeps extending its interest
        await run_for(lane, clock, 1.0)
        await poller.housekeep()  # one pass: 1 s on the fake clock, then keep
    followed = len(upstream.calls)
    assert followed >= 4 and upstream.times[-1] > t0 + 3.0  # well past one grace period
    poller.unfollow(key)
    left_at = clock.wall()
    await run_for(lane, clock, 6.0)
    await poller.housekeep()
    # Polled during the grace period only, then dropped from the schedule.
    assert all(t <= left_at + 3.0 for t in upstream.times[followed:])
    assert len(upstream.calls) > followed
    assert lane.tasks == {}


class ScriptedLimits:
    """A cluster limiter that answers from a script: what the lane does with each answer."""

    def __init__(self, admissions: list[Admission], permits: int = 1) -> None:
        self.admissions = admissions
        self.free = permits
        self.asked = 0
        self.released: list[str] = []

    async def admit(self) -> Admission:
        self.asked += 1
        return self.admissions.pop(0) if self.admissions else Admission()

    async def acquire(self) -> str | None:
        if self.free == 0:
            return None
        self.free -= 1
        return f"permit-{self.asked}"

    async def release(self, token: str) -> None:
        self.free += 1
        self.released.append(token)

    async def heartbeat(self) -> None:
        pass


def shared_poller(
    hub: LocalHub, clock: FakeClock, limits: ScriptedLimits, **policy: object
) -> tuple[Poller, ProviderLane, FakeUpstream, list[str]]:
    upstream = FakeUpstream(lambda call: aholo_listing(ids_of(call)), clock=clock, latency_s=0.05)
    poller = Poller(
        hub,
        {"aholo": runtime("aholo", **policy)},
        {"aholo": upstream},  # type: ignore[dict-item]
        metrics=Metrics(),
        wall=clock.wall,
        monotonic=clock.mono,
        sleep=clock.sleep,
        rng=random.Random(11),
        limits={"aholo": limits},
    )
    notices: list[str] = []
    original = poller.notify

    async def notify(tasks: Sequence[str], code: str, message: str) -> None:
        notices.append(code)
        await original(tasks, code, message)

    poller.notify = notify  # type: ignore[method-assign]
    return poller, poller.lane("aholo"), upstream, notices


async def test_a_shared_budget_refusal_hands_the_round_back_with_one_notice(
    hub: LocalHub,
) -> None:
    clock = FakeClock()
    refused = [Admission(30.0, "budget")] * 2
    limits = ScriptedLimits([*refused])
    poller, lane, upstream, notices = shared_poller(
        hub, clock, limits, interval_s=0.2, max_interval_s=0.2, batch_size=2
    )
    for name in ("A1", "A2"):
        await poller.watch(TaskKey("aholo", name))
    await run_for(lane, clock, 10.0)
    assert upstream.calls == []  # nothing spent while the cluster's budget is gone
    assert limits.asked == 1  # one refused round: handed back for the 30 s it said
    assert notices == ["budget_limited"]  # one notice (to both tasks) for the streak
    await run_for(lane, clock, 25.0)
    assert limits.asked == 2 and upstream.calls == []  # asked again after 30 s: refused
    assert notices == ["budget_limited"]  # the same streak: no second notice
    await run_for(lane, clock, 31.0)  # the budget fits again
    assert upstream.calls and lane.planner.budget_limited is False
    assert limits.free == 1 and limits.released  # every permit went back


async def test_the_lane_waits_for_its_shared_rate_slot_and_a_permit(hub: LocalHub) -> None:
    clock = FakeClock()
    limits = ScriptedLimits([Admission(0.4), Admission(0.0, "rate")], permits=0)
    poller, lane, upstream, _ = shared_poller(hub, clock, limits, interval_s=0.2, batch_size=1)
    await poller.watch(TaskKey("aholo", "A1"))
    await poller.watch(TaskKey("aholo", "A2"))
    start = clock.wall()
    await lane.turn()
    # The first slot was 0.4 s away: the lane slept for it; then no permit came
    # free within the provider's timeout, so both claims went back unsent.
    assert clock.slept[0] == pytest.approx(0.4)
    assert upstream.calls == []
    assert clock.wall() - start >= lane.rt.timeout_s
    limits.free = 1
    await run_for(lane, clock, 2.0)
    assert {ids_of(c)[0] for c in upstream.calls} == {"A1", "A2"}
