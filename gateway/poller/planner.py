"""A provider lane's round as a pure planner: values in, values out, no I/O.

Like ``h11.Connection`` or ``websockets.protocol``, :class:`LanePlanner`
never opens a socket, never sleeps and never reads a clock. The async
driver (:class:`gateway.poller.engine.ProviderLane`) feeds it

* the entries the schedule handed out (:meth:`LanePlanner.plan`),
* each upstream reply or network fault (:meth:`LanePlanner.absorb`),
* the current snapshot of a task the gateway decides to end
  (:meth:`LanePlanner.conclude`),

always with the current time, and carries out what comes back as
:class:`Outputs`: requests to send (which ids together, not before when),
events to commit (each with the :class:`Entry` it belongs to, whose lease
fences the commit), notices, tasks to finish or end, and when each task is
due again.

Rules it owns:

* a task past its deadline ends as ``expired`` (``gateway_deadline``);
* a batch provider's due tasks share requests of at most ``batch_size`` ids;
* the request rate (:class:`TokenBucket`) and the cost budget
  (:class:`CostBudget`; one ``budget_limited`` notice per streak) — here, in
  :class:`~gateway.poller.limits.LocalLimits`, for a node alone; with
  ``shared_limits`` the driver asks the cluster's limiter before each request
  and reports back what it refused (:meth:`LanePlanner.admitted`);
* a ``Retry-After`` pauses the whole lane: it is about this client, not one task;
* backoff after faults: per task for single-task providers; for a batch
  provider one delay for the whole lane, jittered once, so a failing batch
  is retried as one batch instead of splintering into many small requests
  (which would poll an upstream in trouble *more*, not less);
* credentials refused too often end the task as ``failed`` (``upstream_auth``);
* a task some other node already finished is finished here too;
* ``upstream_slow`` / ``upstream_recovered`` notices.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.core import tracker
from gateway.core.eta import DurationModel, eta_at, position_bucket
from gateway.core.model import ErrorInfo, Event, Fault, FaultKind, Observation, State
from gateway.core.policy import Decision, PollState
from gateway.poller.limits import LocalLimits
from gateway.poller.provider import ProviderRuntime
from gateway.poller.schedule import Entry
from gateway.providers.base import UpstreamRequest, UpstreamResponse, fault_observations

__all__ = ["Commit", "End", "FaultReport", "LanePlanner", "Notice", "Outputs", "Request"]

DEADLINE = ErrorInfo("gateway_deadline", "the task did not finish before its deadline")


def task_id(task: str) -> str:
    """The upstream id of a scheduled task key (validated before it was scheduled)."""
    return task.partition(":")[2]


@dataclass(frozen=True, slots=True)
class Request:
    """One upstream request to send: whose ids go together, and from when.

    ``send_at`` is on the monotonic clock (the rate limit's slot); ``epoch``
    is the lane's backoff epoch when it was planned (see :meth:`LanePlanner.absorb`).
    """

    entries: tuple[Entry, ...]
    send_at: float
    epoch: int = 0

    @property
    def task_ids(self) -> list[str]:
        return [task_id(entry.task) for entry in self.entries]

    @property
    def tasks(self) -> list[str]:
        return [entry.task for entry in self.entries]


@dataclass(frozen=True, slots=True)
class Commit:
    """An event to store, with the schedule entry (and so the lease) it came from."""

    event: Event
    entry: Entry


@dataclass(frozen=True, slots=True)
class Notice:
    tasks: tuple[str, ...]
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class End:
    """A gateway-decided end: turn into an event with :meth:`LanePlanner.conclude`."""

    entry: Entry
    state: State
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class FaultReport:
    """What to log about one failed request."""

    tasks: tuple[str, ...]
    fault: Fault
    failures: int
    retry_in_s: float


@dataclass(slots=True)
class Outputs:
    """What the driver must do, in this order: notices, commits, ends, finishes, releases."""

    requests: list[Request] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    ends: list[End] = field(default_factory=list)
    finish: list[Entry] = field(default_factory=list)
    due: list[tuple[Entry, float]] = field(default_factory=list)  # (entry, wall time)
    faults: list[FaultReport] = field(default_factory=list)
    outcome: str | None = None  # of an absorbed reply: "ok" or the fault kind

    def merge(self, other: Outputs) -> None:
        """Add what ``other`` asks for (its requests, notices, ends and due times)."""
        self.requests += other.requests
        self.notices += other.notices
        self.commits += other.commits
        self.ends += other.ends
        self.finish += other.finish
        self.due += other.due
        self.faults += other.faults

    @property
    def events(self) -> list[Event]:
        return [commit.event for commit in self.commits]

    def leases(self) -> dict[str, str]:
        """Task → lease token of every commit (empty tokens left out)."""
        return {c.entry.task: c.entry.lease for c in self.commits if c.entry.lease}


class LanePlanner:
    """The decisions of one provider lane. Times: ``now`` wall clock, ``mono`` monotonic."""

    def __init__(
        self,
        runtime: ProviderRuntime,
        *,
        coalesce_s: float = 0.1,
        rng: random.Random,
        shared_limits: bool = False,
    ) -> None:
        self.rt = runtime
        self.policy = runtime.policy
        self.batch = runtime.batch_size > 1
        # Batch providers wait a moment after the first task falls due so that
        # tasks registered together share one request.
        self.window_s = coalesce_s if self.batch else 0.0
        self.rng = rng
        self.limits = LocalLimits.of(runtime)
        self.shared_limits = shared_limits  # the driver asks the cluster's limiter
        self.budget_limited = False  # inside a streak of budget-limited rounds
        self.paused_until = 0.0  # Retry-After (wall)
        # The lane's own backoff (batch providers): consecutive failed
        # requests, until when the lane waits, and an epoch that tells a
        # failure of a request sent before the current backoff (it joins
        # it) from one sent after (it extends it).
        self.failures = 0
        self.backoff_until = 0.0
        self.epoch = 0
        # How long this provider's tasks take, as this node saw them end: the
        # source of eta_s and of the predictive policy's due times.
        self.durations = DurationModel(runtime.typical_duration_s)

    # -- when --------------------------------------------------------------

    @property
    def held_until(self) -> float:
        """The lane sends nothing before this wall time (Retry-After, lane backoff)."""
        return max(self.paused_until, self.backoff_until)

    def round_at(self, first_due: float | None) -> float | None:
        """When the next round may start, given the earliest due time (``None``: none known)."""
        if first_due is None:
            return None
        return max(first_due + self.window_s, self.held_until)

    def horizon(self, now: float) -> float:
        """Claim every task due by this time.

        A batch round also takes every task due within half a base interval:
        polling those a little early puts all of the provider's tasks on one
        beat, so after one round a round costs ⌈tasks / batch_size⌉ requests
        however they arrived.
        """
        return now + self.policy.base_s / 2 if self.batch else now

    # -- a round -------------------------------------------------------------

    def plan(self, due: Sequence[Entry], *, now: float, mono: float) -> Outputs:
        """Decide what to do with claimed entries: end, send (grouped), or hand back."""
        out = Outputs()
        ready: list[Entry] = []
        for entry in due:
            if entry.deadline_at is not None and now >= entry.deadline_at:
                out.ends.append(End(entry, State.EXPIRED, DEADLINE))
            else:
                ready.append(entry)
        if not ready:
            return out
        if now < self.held_until:
            out.due += [(entry, self.held_until) for entry in ready]
            return out
        limited: list[Entry] = []
        size = self.rt.batch_size
        for i in range(0, len(ready), size):
            chunk = tuple(ready[i : i + size])
            if self.shared_limits:
                out.requests.append(Request(chunk, mono, self.epoch))
                continue
            admission = self.limits.admit(mono)
            if admission.limited is not None:
                limited += chunk
                continue
            out.requests.append(Request(chunk, mono + admission.wait_s, self.epoch))
        if not self.shared_limits:
            wait = self.limits.budget_wait(mono)
            out.merge(self.admitted(limited, wait_s=wait, now=now))
        return out

    def admitted(self, refused: Sequence[Entry], *, wait_s: float, now: float) -> Outputs:
        """A round's verdict from the limiter: ``refused`` found no budget, one more
        call fits in ``wait_s``. One ``budget_limited`` notice per streak of limited rounds."""
        out = Outputs()
        if not refused:
            self.budget_limited = False
            return out
        out.due += [(entry, now + wait_s) for entry in refused]
        if not self.budget_limited:
            self.budget_limited = True
            out.notices.append(
                Notice(
                    tuple(entry.task for entry in refused),
                    "budget_limited",
                    f"{self.rt.name}: cost budget of {self.rt.budget_per_hour} per hour "
                    f"reached; polling slowed for {wait_s:.0f} s",
                )
            )
        return out

    # -- a reply -------------------------------------------------------------

    def absorb(
        self,
        request: Request,
        sent: UpstreamRequest,
        reply: UpstreamResponse | Fault,
        snapshots: Mapping[str, Event | None],
        *,
        now: float,
        elapsed_s: float = 0.0,
    ) -> Outputs:
        """What a reply means for each entry of ``request``.

        Args:
            request: as planned.
            sent: the upstream request built for it (the adapter parses against it).
            reply: the response, or the network fault.
            snapshots: the current snapshot of every task in ``request`` (``None``:
                never seen); only needed when ``reply`` is a response.
            elapsed_s: how long the upstream took to answer.
        """
        rt = self.rt
        out = Outputs()
        if isinstance(reply, Fault):
            observations = fault_observations(request.task_ids, reply)
        else:
            observations = rt.adapter.parse(sent, reply)
        by_id = {obs.task_id: obs for obs in observations}
        slow = elapsed_s > rt.timeout_s / 2
        faulted: list[tuple[Entry, Fault]] = []
        slowed: list[str] = []
        recovered: list[str] = []
        answered = False
        for entry in request.entries:
            tid = task_id(entry.task)
            obs = by_id.get(tid) or Observation(
                task_id=tid,
                fault=Fault(FaultKind.MALFORMED, f"{rt.name} reply did not cover this task"),
            )
            if obs.fault is not None:
                faulted.append((entry, obs.fault))
                continue
            answered = True
            entry.faulted = False
            if slow and not entry.degraded:
                entry.degraded = True
                slowed.append(entry.task)
            elif entry.degraded and not slow:
                entry.degraded = False
                recovered.append(entry.task)
            previous = snapshots[entry.task]
            if previous is not None and previous.terminal:
                out.finish.append(entry)
                continue
            expected = self._expected(entry, obs, now)
            event = tracker.observe(previous, obs, task=entry.task, now=now, expected_s=expected)
            if event is None:
                decision = self.policy.after_no_change(entry.poll)
            else:
                out.commits.append(Commit(event, entry))
                decision = self.policy.after_change(entry.poll)
                if event.terminal and entry.since is not None:
                    # The end fell between the last poll that saw it running and
                    # this one: take the middle. Taking this poll's time would
                    # teach the model that tasks take as long as their detection
                    # (polls further apart, later detection, and so on); taking
                    # the last poll would make the model learn its own poll times.
                    last = entry.seen_at if entry.seen_at is not None else now
                    ended = (last + now) / 2
                    self.durations.record(ended - entry.since, entry.bucket)
            if not obs.state.terminal and entry.since is not None:
                entry.seen_at = now
            decision = self._predicted(entry, decision, event or previous, now, elapsed_s)
            entry.apply(decision.state)
            if event is None or not event.terminal:
                # A batch round starts ``window_s`` after its first due time, for
                # tasks falling due meanwhile; a task of this round is on the beat
                # already, so it is due that much sooner: the round comes every delay_s.
                out.due.append((entry, now + decision.delay_s - self.window_s))
        if slowed:
            out.notices.append(
                Notice(
                    tuple(slowed),
                    "upstream_slow",
                    f"{rt.name} took more than half its {rt.timeout_s:g} s timeout to answer",
                )
            )
        if recovered:
            out.notices.append(
                Notice(tuple(recovered), "upstream_recovered", f"{rt.name} answers again")
            )
        if answered:
            self.failures = 0
        fault = next((f for _, f in faulted), None)
        out.outcome = "ok" if fault is None else fault.kind.value
        if fault is not None:
            # A batch request that failed as a whole says the upstream is in
            # trouble; ids faulted within an answered reply are their own matter.
            self._back_off(request, faulted, now, out, lane_wide=self.batch and not answered)
        return out

    def _expected(self, entry: Entry, obs: Observation, now: float) -> float | None:
        """The model's median time left for ``entry`` (first sight recorded here)."""
        if entry.since is None and obs.state is not State.UNKNOWN:
            entry.since = now
            entry.bucket = position_bucket(obs.position)
        if entry.since is None:
            return None
        return self.durations.remaining(now - entry.since, 0.5, entry.bucket)

    def _predicted(
        self,
        entry: Entry,
        decision: Decision,
        current: Event | None,
        now: float,
        request_s: float,
    ) -> Decision:
        """The predictive policy's delay instead of the quiet interval, when it has one."""
        predictive = self.rt.predictive
        if predictive is None or entry.since is None or current is None:
            return decision
        delay = predictive.delay(
            self.durations,
            elapsed_s=now - entry.since,
            bucket=entry.bucket,
            eta_s=eta_at(current, now),
            request_s=request_s,
        )
        return Decision(decision.state, delay)

    def _back_off(
        self,
        request: Request,
        faulted: list[tuple[Entry, Fault]],
        now: float,
        out: Outputs,
        *,
        lane_wide: bool,
    ) -> None:
        policy = self.policy
        waits = [f.retry_after_s for _, f in faulted if f.retry_after_s is not None]
        if waits:
            # A 429 (or a 503 with Retry-After) is about this client as a
            # whole, not about one task (RFC 9110 §10.2.3).
            self.paused_until = max(self.paused_until, now + max(waits))
        lane_delay: float | None = None
        if lane_wide:
            if request.epoch == self.epoch:
                self.epoch += 1
                self.failures += 1
                delay = policy.backoff_delay(self.failures, faulted[0][1], self.rng)
                self.backoff_until = max(self.backoff_until, now + delay)
            # One due time for everything the lane is retrying: the batch stays whole.
            lane_delay = max(policy.min_delay_s, self.held_until - now)
        notices: dict[tuple[str, str], list[str]] = {}
        reports: dict[FaultKind, FaultReport] = {}
        for entry, fault in faulted:
            if lane_delay is None:
                decision = policy.after_fault(entry.poll, fault, self.rng)
                state, delay, give_up = decision.state, decision.delay_s, decision.give_up
            else:
                state = PollState(entry.interval_s, entry.failures + 1)
                delay, give_up = lane_delay, policy.gives_up(fault, state.failures)
            entry.apply(state)
            seen = reports.get(fault.kind)
            reports[fault.kind] = FaultReport(
                (*seen.tasks, entry.task) if seen else (entry.task,),
                fault,
                max(state.failures, seen.failures if seen else 0),
                max(delay, seen.retry_in_s if seen else 0.0),
            )
            if give_up:
                error = ErrorInfo(
                    "upstream_auth", f"{self.rt.name} refused the gateway's credentials"
                )
                out.ends.append(End(entry, State.FAILED, error))
                continue
            if not entry.faulted:  # slow before: failing is news, with its retry
                entry.degraded = entry.faulted = True
                key = (
                    f"upstream_{fault.kind.value}",
                    f"{fault.message}; retrying in {delay:.1f} s",
                )
                notices.setdefault(key, []).append(entry.task)
            out.due.append((entry, now + delay))
        out.faults += reports.values()
        out.notices += [Notice(tuple(tasks), code, msg) for (code, msg), tasks in notices.items()]

    @property
    def _refused(self) -> ErrorInfo:
        return ErrorInfo("upstream_auth", f"{self.rt.name} refused the gateway's credentials")

    # -- gateway-decided ends ---------------------------------------------------

    def conclude(self, end: End, previous: Event | None, *, now: float) -> Outputs:
        """The event that ends a task, given its current snapshot (or a finish, if
        it had already ended)."""
        out = Outputs()
        event = tracker.force_state(
            previous, task=end.entry.task, state=end.state, error=end.error, now=now
        )
        if event is not None:
            out.commits.append(Commit(event, end.entry))
        else:
            out.finish.append(end.entry)
        return out
