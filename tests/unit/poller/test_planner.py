"""The lane planner, driven with a fake clock, a seeded random source and a fake upstream.

No sockets, no sleeps: every time below is exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from gateway.core.model import ErrorInfo, Fault, FaultKind, Observation, State
from gateway.core.tracker import force_state, initial_snapshot
from gateway.poller.planner import LanePlanner, Outputs, Request
from gateway.poller.provider import ProviderRuntime
from gateway.poller.schedule import Entry, LocalSchedule
from gateway.providers.aholo import AholoAdapter
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from tests.unit.poller.fakes import (
    START,
    FakeClock,
    aholo_listing,
    entries,
    response,
    runtime,
    server_error,
    videoproc_status,
)

MONO = 1000.0
DUMMY = ErrorInfo("ended", "ended elsewhere")


def planner(rt: ProviderRuntime, seed: int = 7, coalesce_s: float = 0.1) -> LanePlanner:
    return LanePlanner(rt, coalesce_s=coalesce_s, rng=random.Random(seed))


def build(p: LanePlanner, request: Request) -> UpstreamRequest:
    return p.rt.adapter.build_request(request.task_ids, now_ms=int(START * 1000), request_id="r")


def absorb(
    p: LanePlanner,
    request: Request,
    reply: UpstreamResponse | Fault,
    *,
    now: float = START,
    elapsed_s: float = 0.01,
) -> Outputs:
    snapshots = {task: None for task in request.tasks}
    return p.absorb(request, build(p, request), reply, snapshots, now=now, elapsed_s=elapsed_s)


# --- a round: deadlines and batches ----------------------------------------------


def test_a_batch_round_groups_due_tasks_into_requests_of_batch_size() -> None:
    p = planner(runtime("aholo"))
    out = p.plan(entries("aholo", 250), now=START, mono=MONO)
    assert [len(r.entries) for r in out.requests] == [100, 100, 50]
    ids = [i for r in out.requests for i in r.task_ids]
    assert ids == [f"T{i:04d}" for i in range(250)]
    assert out.due == [] and out.ends == [] and out.notices == []


def test_a_single_task_provider_sends_one_request_per_task() -> None:
    p = planner(runtime("videoproc"))
    out = p.plan(entries("videoproc", 3), now=START, mono=MONO)
    assert [r.task_ids for r in out.requests] == [["T0000"], ["T0001"], ["T0002"]]


def test_a_task_past_its_deadline_ends_expired_instead_of_being_polled() -> None:
    p = planner(runtime("aholo"))
    late, on_time = entries("aholo", 2)
    late.deadline_at = START - 0.001
    on_time.deadline_at = START + 0.001
    out = p.plan([late, on_time], now=START, mono=MONO)
    assert [e.entry.task for e in out.ends] == [late.task]
    assert out.ends[0].state is State.EXPIRED
    assert [r.tasks for r in out.requests] == [[on_time.task]]
    # The end becomes an event on top of the current snapshot...
    running = initial_snapshot(late.task, START)
    concluded = p.conclude(out.ends[0], running, now=START)
    (commit,) = concluded.commits
    assert commit.entry is late
    assert commit.event.state is State.EXPIRED and commit.event.terminal
    assert commit.event.error is not None and commit.event.error.code == "gateway_deadline"
    assert commit.event.seq == 1
    # ...or, if another node ended it first, it is just finished here.
    ended = force_state(running, task=late.task, state=State.SUCCEEDED, error=DUMMY, now=START)
    assert p.conclude(out.ends[0], ended, now=START).finish == [late]


def test_a_batch_round_waits_for_the_coalescing_window_and_claims_half_an_interval_ahead() -> None:
    p = planner(runtime("aholo", interval_s=4.0), coalesce_s=0.1)
    assert p.round_at(None) is None
    assert p.round_at(START) == START + 0.1
    assert p.horizon(START) == START + 2.0
    single = planner(runtime("videoproc", interval_s=4.0), coalesce_s=0.1)
    assert single.round_at(START) == START
    assert single.horizon(START) == START


def test_a_batch_lane_keeps_its_beat_the_window_does_not_add_to_each_round() -> None:
    """Rounds of tasks already on the beat come every interval (plus the reply's
    time), as a single-task lane's do: not every interval + coalescing window."""
    p = planner(runtime("aholo", interval_s=1.0, max_interval_s=1.0), coalesce_s=0.1)
    batch = entries("aholo", 3)
    at = p.round_at(START)
    assert at == START + 0.1  # the first round waits for stragglers
    rounds = []
    for _ in range(10):
        assert at is not None
        rounds.append(at)
        (request,) = p.plan(batch, now=at, mono=MONO).requests
        out = absorb(p, request, aholo_listing(request.task_ids, status=2), now=at + 0.05)
        batch = [e for e, _ in out.due]
        at = p.round_at(min(due for _, due in out.due))
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    assert gaps == [pytest.approx(1.05)] * 9


# --- replies: changes, quiet polls, terminal tasks, slowness ------------------------


def test_a_reply_commits_changes_with_their_entry_and_reschedules_at_the_base_interval() -> None:
    p = planner(runtime("aholo", interval_s=1.0, max_interval_s=8.0))
    batch = entries("aholo", 3)
    batch[1].lease = "lease-1"
    (request,) = p.plan(batch, now=START, mono=MONO).requests
    out = absorb(p, request, aholo_listing(request.task_ids, status=2), now=START + 0.25)
    assert out.outcome == "ok"
    assert [(c.entry, c.event.state, c.event.seq) for c in out.commits] == [
        (e, State.RUNNING, 1) for e in batch
    ]
    assert [e for e, _ in out.due] == batch
    # The next round at the base interval: due the coalescing window before it.
    assert [p.round_at(at) for _, at in out.due] == [pytest.approx(START + 1.25)] * 3
    assert out.leases() == {batch[1].task: "lease-1"}


def test_no_change_grows_the_interval_and_a_terminal_event_is_not_rescheduled() -> None:
    p = planner(runtime("aholo", interval_s=1.0, max_interval_s=8.0))
    quiet, done = entries("aholo", 2)
    (request,) = p.plan([quiet, done], now=START, mono=MONO).requests
    seen = {quiet.task: None, done.task: None}
    first = p.absorb(request, build(p, request), aholo_listing(request.task_ids), seen, now=START)
    running = {c.event.task: c.event for c in first.commits}
    reply = response(
        {
            "c": "0",
            "d": [{"taskId": "T0000", "status": 2}, {"taskId": "T0001", "status": 3}],
            "m": None,
            "f": "",
        }
    )
    (again,) = p.plan([quiet, done], now=START + 1, mono=MONO + 1).requests
    out = p.absorb(again, build(p, again), reply, running, now=START + 1)
    assert [c.event.state for c in out.commits] == [State.SUCCEEDED]
    assert [e for e, _ in out.due] == [quiet]  # done: never again
    assert p.round_at(out.due[0][1]) == pytest.approx(START + 1 + 1.25)  # 1.0 × growth 1.25


def test_a_task_already_terminal_in_the_store_is_finished_not_polled_again() -> None:
    p = planner(runtime("aholo"))
    (entry,) = entries("aholo", 1)
    (request,) = p.plan([entry], now=START, mono=MONO).requests
    ended = force_state(None, task=entry.task, state=State.CANCELLED, error=DUMMY, now=START)
    out = p.absorb(
        request, build(p, request), aholo_listing(["T0000"]), {entry.task: ended}, now=START
    )
    assert out.finish == [entry] and out.due == [] and out.commits == []


def test_a_slow_answer_is_noticed_once_and_its_recovery_once() -> None:
    rt = runtime("aholo", timeout_s=2.0)
    p = planner(rt)
    batch = entries("aholo", 2)
    codes: list[list[str]] = []
    for elapsed in (1.01, 1.5, 0.2, 0.2):
        (request,) = p.plan(batch, now=START, mono=MONO).requests
        out = absorb(p, request, aholo_listing(request.task_ids), elapsed_s=elapsed)
        codes.append([n.code for n in out.notices])
    assert codes == [["upstream_slow"], [], ["upstream_recovered"], []]
    assert out.notices == []


def test_a_fault_while_the_upstream_is_slow_is_noticed_with_its_retry() -> None:
    # Slow answers (a busy upstream), then errors, then fast answers: subscribers
    # hear of each, the error with when it is retried, and of the recovery once.
    rt = runtime("aholo", timeout_s=2.0, interval_s=1.0, max_interval_s=1.0)
    p = planner(rt)
    batch = entries("aholo", 2)
    said: list[list[tuple[str, str]]] = []
    now = START
    replies: list[tuple[UpstreamResponse | Fault | None, float]] = [
        (None, 1.5),  # slow
        (server_error(), 0.01),
        (server_error(), 0.01),
        (None, 1.5),  # answers again, still slow
        (server_error(), 0.01),
        (None, 0.2),
    ]
    for reply, elapsed in replies:
        now = max(now + 1.0, p.held_until)
        (request,) = p.plan(batch, now=now, mono=MONO).requests
        answer = aholo_listing(request.task_ids) if reply is None else reply
        out = absorb(p, request, answer, now=now, elapsed_s=elapsed)
        said.append([(n.code, n.message) for n in out.notices])
    assert [[code for code, _ in notices] for notices in said] == [
        ["upstream_slow"],
        ["upstream_server"],
        [],
        [],
        ["upstream_server"],
        ["upstream_recovered"],
    ]
    errors = [message for notices in said for code, message in notices if code == "upstream_server"]
    assert all(re.search(r"; retrying in \d+\.\d s$", message) for message in errors), errors


# --- faults: batch lanes back off as one -----------------------------------------


def test_a_failed_batch_is_retried_whole_after_one_jittered_delay() -> None:
    p = planner(runtime("aholo", interval_s=1.0, max_interval_s=1.0, backoff_max_s=60.0))
    batch = entries("aholo", 100)
    (request,) = p.plan(batch, now=START, mono=MONO).requests
    out = absorb(p, request, server_error(), now=START + 0.2)
    dues = {at for _, at in out.due}
    assert len(out.due) == 100 and len(dues) == 1  # one due time for the whole batch
    (at,) = dues
    expected = random.Random(7).uniform(0.0, 2.0)  # full jitter, ceiling base · 2¹
    assert at == pytest.approx(START + 0.2 + expected, abs=1e-6)
    assert p.held_until == at and p.failures == 1
    (report,) = out.faults
    assert len(report.tasks) == 100 and report.failures == 1
    assert all(e.failures == 1 for e in batch)
    (notice,) = out.notices  # one notice naming all 100, not 100 notices
    assert notice.code == "upstream_server" and len(notice.tasks) == 100
    assert notice.message.endswith(f"retrying in {expected:.1f} s")
    # Nothing goes out before the delay; then the batch goes out as one request.
    assert p.round_at(START) == at
    early = p.plan(batch[:10], now=at - 0.001, mono=MONO)
    assert early.requests == [] and early.due == [(e, at) for e in batch[:10]]
    (retry,) = p.plan(batch, now=at, mono=MONO + 5).requests
    assert len(retry.entries) == 100


class OneBadRecord(AholoAdapter):
    """aholo, except that the reply's record for T0001 cannot be read."""

    def parse(self, request: UpstreamRequest, response: UpstreamResponse) -> list[Observation]:
        bad = Fault(FaultKind.MALFORMED, "aholo reply: record T0001 unreadable")
        return [
            Observation(task_id=o.task_id, fault=bad) if o.task_id == "T0001" else o
            for o in super().parse(request, response)
        ]


def test_one_bad_record_in_an_answered_batch_does_not_hold_the_lane() -> None:
    rt = runtime("aholo", interval_s=1.0, max_interval_s=1.0)
    rt = dataclasses.replace(
        rt, adapter=OneBadRecord(rt.adapter.settings, batch_size=100, name="aholo")
    )
    p = planner(rt)
    batch = entries("aholo", 3)
    (request,) = p.plan(batch, now=START, mono=MONO).requests
    out = absorb(p, request, aholo_listing(request.task_ids), now=START)
    assert p.held_until == 0.0 and p.failures == 0
    due = {entry.task: at for entry, at in out.due}
    assert due[batch[0].task] == due[batch[2].task]
    assert p.round_at(due[batch[0].task]) == pytest.approx(START + 1.0)
    assert START < due[batch[1].task] <= START + 2.0  # its own jittered retry
    assert [n.code for n in out.notices] == ["upstream_malformed"]


def test_requests_of_one_round_failing_together_count_as_one_failure() -> None:
    p = planner(runtime("aholo"))
    first, second = p.plan(entries("aholo", 200), now=START, mono=MONO).requests
    a = absorb(p, first, server_error(), now=START + 0.1)
    b = absorb(p, second, server_error(), now=START + 0.3)
    assert p.failures == 1
    assert {at for _, at in a.due} == {at for _, at in b.due} == {p.held_until}
    # The retry round that fails again doubles the ceiling.
    retry = p.plan([e for e, _ in a.due + b.due], now=p.held_until, mono=MONO + 10).requests
    assert [len(r.entries) for r in retry] == [100, 100]
    absorb(p, retry[0], server_error(), now=p.held_until + 0.1)
    absorb(p, retry[1], server_error(), now=p.held_until + 0.1)
    assert p.failures == 2


def test_a_success_resets_the_lane_backoff() -> None:
    p = planner(runtime("aholo", interval_s=1.0, max_interval_s=1.0))
    batch = entries("aholo", 5)
    now = START
    for _ in range(4):
        (request,) = p.plan(batch, now=max(now, p.held_until), mono=MONO).requests
        now = max(now, p.held_until) + 0.1
        absorb(p, request, server_error(), now=now)
    assert p.failures == 4
    now = p.held_until
    (request,) = p.plan(batch, now=now, mono=MONO).requests
    out = absorb(p, request, aholo_listing(request.task_ids), now=now)
    assert p.failures == 0
    assert [p.round_at(at) for _, at in out.due] == [pytest.approx(now + 1.0)] * 5
    assert [n.code for n in out.notices] == ["upstream_recovered"]


def test_auth_refusals_end_the_tasks_after_max_auth_failures() -> None:
    p = planner(runtime("aholo"))
    batch = entries("aholo", 3)
    refused = Fault(FaultKind.AUTH, "aholo answered HTTP 401", retryable=False)
    ends: list[int] = []
    now = START
    for _ in range(3):
        (request,) = p.plan(batch, now=now, mono=MONO).requests
        out = absorb(p, request, refused, now=now)
        ends.append(len(out.ends))
        now = p.held_until
    assert ends == [0, 0, 3]
    assert {e.state for e in out.ends} == {State.FAILED}
    assert {e.error.code for e in out.ends} == {"upstream_auth"}
    assert out.due == []


def test_single_task_providers_back_off_per_task_with_their_own_jitter() -> None:
    p = planner(runtime("videoproc", interval_s=1.0, backoff_max_s=60.0), seed=3)
    batch = entries("videoproc", 3)
    rng = random.Random(3)
    expected = [rng.uniform(0.0, 2.0) for _ in batch]
    dues = []
    for request in p.plan(batch, now=START, mono=MONO).requests:
        dues += absorb(p, request, server_error(), now=START).due
    assert [at - START for _, at in dues] == pytest.approx(expected, abs=1e-6)
    assert p.held_until == 0.0  # no lane-wide hold for single-task providers


# --- Retry-After: the whole lane pauses ----------------------------------------


@pytest.mark.parametrize("kind", ["aholo", "videoproc"])
def test_retry_after_pauses_the_whole_lane_to_the_millisecond(kind: str) -> None:
    p = planner(runtime(kind, interval_s=0.2, backoff_max_s=0.5))
    limited, other = entries(kind, 2)
    request = p.plan([limited], now=START, mono=MONO).requests[0]
    reply = response({"error": "slow down"}, 429, {"retry-after": "2"})
    out = absorb(p, request, reply, now=START + 0.05)
    assert p.paused_until == START + 2.05
    assert out.due == [(limited, START + 2.05)]  # never sooner than Retry-After
    assert p.round_at(START + 0.1) == START + 2.05
    # A task claimed meanwhile is handed back for the end of the pause, unpolled.
    held = p.plan([other], now=START + 2.049, mono=MONO + 2)
    assert held.requests == [] and held.due == [(other, START + 2.05)]
    assert len(p.plan([other], now=START + 2.05, mono=MONO + 2).requests) == 1


def test_a_503_with_retry_after_pauses_the_lane_too() -> None:
    p = planner(runtime("videoproc", interval_s=0.2, backoff_max_s=0.5))
    (request,) = p.plan(entries("videoproc", 1), now=START, mono=MONO).requests
    absorb(p, request, server_error(retry_after="3"), now=START)
    assert p.paused_until == START + 3.0


# --- rate limit and cost budget ----------------------------------------------------


def test_the_rate_limit_spaces_requests_exactly() -> None:
    p = planner(runtime("videoproc", rate_per_s=2.0))
    out = p.plan(entries("videoproc", 5), now=START, mono=MONO)
    # A burst of one (rate 2/s → capacity 2), then one every 0.5 s.
    assert [r.send_at - MONO for r in out.requests] == [0.0, 0.0, 0.5, 1.0, 1.5]


def test_the_cost_budget_caps_calls_and_notices_once_per_streak() -> None:
    p = planner(runtime("tryon", budget_per_hour=0.5, rate_per_s=1000.0))
    tasks = entries("tryon", 7, prefix="1")
    out = p.plan(tasks, now=START, mono=MONO)
    assert len(out.requests) == 5  # 0.5 coins at 0.1 a call
    assert out.due == [(e, START + 3600.0) for e in tasks[5:]]
    (notice,) = out.notices
    assert notice.code == "budget_limited" and notice.tasks == tuple(e.task for e in tasks[5:])
    # Still limited a minute later: handed back again, no second notice in the streak.
    later = p.plan(tasks[5:], now=START + 60, mono=MONO + 60)
    assert later.requests == [] and later.notices == []
    assert later.due == [(e, START + 3600.0) for e in tasks[5:]]
    # When the window has moved on, calls go out again and the streak is over...
    free = p.plan(tasks[:5], now=START + 3600, mono=MONO + 3600)
    assert len(free.requests) == 5 and free.notices == []
    # ...so the next limit is told again.
    again = p.plan(tasks[5:], now=START + 3601, mono=MONO + 3601)
    assert [n.code for n in again.notices] == ["budget_limited"]


# --- over time: an outage polls less, not more -------------------------------------


@dataclass
class Traffic:
    requests: int = 0
    ids: list[int] = field(default_factory=list)


async def _drive(
    p: LanePlanner,
    tasks: list[Entry],
    answer: Answer,
    clock: FakeClock,
    *,
    until: float,
    latency_s: float = 0.05,
    windows: tuple[tuple[float, float], ...],
) -> list[Traffic]:
    """Run the lane's rounds against ``answer`` on a fake clock; traffic per window."""
    schedule = LocalSchedule()
    name = p.rt.name
    for entry in tasks:
        await schedule.add(name, entry, keep_until=float("inf"))
    store: dict[str, object] = {}
    traffic = [Traffic() for _ in windows]
    while clock.wall() < until:
        at = p.round_at(await schedule.next_due(name))
        assert at is not None
        if at > clock.wall():
            clock.advance(at - clock.wall())
            continue
        claimed = await schedule.claim(name, clock.wall(), p.horizon(clock.wall()))
        out = p.plan(claimed, now=clock.wall(), mono=clock.mono())
        await schedule.release(name, out.due)
        for request in out.requests:
            if request.send_at > clock.mono():
                clock.advance(request.send_at - clock.mono())
            sent = p.rt.adapter.build_request(
                request.task_ids, now_ms=int(clock.wall() * 1000), request_id="r"
            )
            for window, (start, end) in zip(traffic, windows, strict=True):
                if start <= clock.wall() < end:
                    window.requests += 1
                    window.ids.append(len(request.entries))
            reply = answer(sent, clock.wall())
            clock.advance(latency_s)
            snapshots = {t: store.get(t) for t in request.tasks}
            result = p.absorb(
                request, sent, reply, snapshots, now=clock.wall(), elapsed_s=latency_s
            )
            store.update({c.event.task: c.event for c in result.commits})
            await schedule.release(name, result.due)
    return traffic


Answer = Callable[[UpstreamRequest, float], UpstreamResponse]


def _outage(start: float, end: float, ok: Callable[[UpstreamRequest], UpstreamResponse]) -> Answer:
    def answer(request: UpstreamRequest, now: float) -> UpstreamResponse:
        return server_error() if start <= now < end else ok(request)

    return answer


@pytest.mark.parametrize("seed", range(5))
async def test_an_outage_halves_a_batch_lanes_requests_and_keeps_batches_whole(seed: int) -> None:
    clock = FakeClock()
    t0 = clock.wall()
    p = planner(runtime("aholo", interval_s=0.2, max_interval_s=0.2, backoff_max_s=2.0), seed)
    answer = _outage(t0 + 10, t0 + 20, lambda r: aholo_listing(r.task_ids))
    normal, outage, after = await _drive(
        p,
        entries("aholo", 100, interval_s=0.2),
        answer,
        clock,
        until=t0 + 30,
        windows=((t0, t0 + 10), (t0 + 10, t0 + 20), (t0 + 20, t0 + 30)),
    )
    assert normal.requests >= 25  # one round per 0.35 s: interval + coalescing + latency
    assert outage.requests < 0.5 * normal.requests, (normal.requests, outage.requests)
    assert set(normal.ids) == set(outage.ids) == {100}  # never splintered
    # Regrouped at once after recovery: the first request after the outage has them all.
    assert after.ids[0] == 100 and set(after.ids) == {100}
    assert p.failures == 0


@pytest.mark.parametrize("seed", range(5))
async def test_an_outage_halves_a_single_task_lanes_requests(seed: int) -> None:
    clock = FakeClock()
    t0 = clock.wall()
    p = planner(runtime("videoproc", interval_s=0.2, max_interval_s=0.2, backoff_max_s=2.0), seed)
    answer = _outage(t0 + 10, t0 + 20, lambda r: videoproc_status(r.task_ids[0]))
    normal, outage = await _drive(
        p,
        entries("videoproc", 10, interval_s=0.2),
        answer,
        clock,
        until=t0 + 20,
        latency_s=0.0,
        windows=((t0, t0 + 10), (t0 + 10, t0 + 20)),
    )
    assert outage.requests < 0.5 * normal.requests, (normal.requests, outage.requests)
