"""The poller: one upstream request per task per due time, whoever is watching.

One :class:`ProviderLane` per configured provider is a thin async driver
around a pure :class:`~gateway.poller.planner.LanePlanner`: it claims the
due tasks from the schedule, lets the planner decide (deadlines, batches,
rate, budget, backoff), sends the planned requests within the provider's
concurrency, feeds each reply back, and carries out what comes back —
commit events to the hub (which fans them out), notify, finish, and hand
the tasks back to the schedule with their next due time.

Every long-running loop (each lane, the housekeeper) is supervised: a
failure is logged once per streak, counted in
``pollcast_loop_failures_total{loop}`` and retried with backoff, and a loop
that is failing or has stopped makes ``/readyz`` answer 503 with its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway import tracing
from gateway.aio import cancel_and_wait, raise_if_cancelled
from gateway.core import tracker
from gateway.core.model import Event, Fault, TaskKey
from gateway.core.policy import RetryDelay
from gateway.exceptions import BackendError, SeqConflict, UnknownProvider
from gateway.hub.base import Hub, Watch
from gateway.metrics import Metrics
from gateway.poller.exchange import send
from gateway.poller.limits import PERMIT_POLL_S, Limits
from gateway.poller.planner import LanePlanner, Outputs, Request
from gateway.poller.provider import ProviderRuntime
from gateway.poller.schedule import FOREVER, Entry, LocalSchedule, Schedule
from gateway.poller.upstream import UpstreamClient

__all__ = ["LoopHealth", "Poller", "ProviderLane"]

log = logging.getLogger("pollcast.poller")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class LoopHealth:
    """How one supervised loop is doing."""

    name: str
    failures: int = 0  # consecutive, in the current streak
    total_failures: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = None
    # Set to end the wait after a failure early (the store answers again).
    retry_now: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def stopped(self) -> bool:
        return self.task is not None and self.task.done()

    @property
    def failing(self) -> bool:
        return self.failures > 0

    @property
    def problem(self) -> str | None:
        """Why this loop is not doing its job right now (``None``: it is)."""
        if self.stopped:
            return f"poller loop {self.name} stopped"
        if self.failing:
            return f"poller loop {self.name} failing ({self.last_error})"
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def supervise(
    health: LoopHealth,
    step: Callable[[], Awaitable[None]],
    *,
    metrics: Metrics,
    sleep: Sleep = asyncio.sleep,
    delays: RetryDelay | None = None,
) -> None:
    """Run ``step`` over and over until cancelled; a failure never ends the loop.

    A failure is counted (``pollcast_loop_failures_total{loop}``), logged
    once per streak of consecutive failures, and retried after a delay that
    doubles while the streak lasts and starts again after a success, or at
    once when ``health.retry_now`` is set (see :meth:`Poller.retry_now`).
    """
    delays = delays or RetryDelay()
    while True:
        raise_if_cancelled()  # the store may have swallowed a cancel (gateway/aio.py)
        # A nudge given while this step runs still counts if the step fails: the
        # store may have come back while the step was waiting on the old link.
        health.retry_now.clear()
        try:
            await step()
        except Exception as exc:
            health.failures += 1
            health.total_failures += 1
            health.last_error = _describe(exc)
            metrics.loop_failures.labels(health.name).inc()
            if isinstance(exc, BackendError):
                metrics.backend_errors.inc()
            delay = delays.next_delay()
            if health.failures == 1:
                # A known backend failure is one line; anything else keeps its traceback.
                log.warning(
                    "poller loop %s failed (%s); retrying in %.1f s",
                    health.name,
                    health.last_error,
                    delay,
                    exc_info=not isinstance(exc, BackendError),
                )
            await _wait(sleep, delay, health.retry_now)
        else:
            if health.failures:
                log.info(
                    "poller loop %s works again after %d failure(s)", health.name, health.failures
                )
                health.failures = 0
                health.last_error = None
            delays.reset()


async def _wait(sleep: Sleep, delay: float, nudge: asyncio.Event) -> None:
    """Until ``sleep(delay)`` is over or ``nudge`` is set, whichever comes first."""
    if nudge.is_set():
        return
    current = asyncio.current_task()
    name = f"{current.get_name()}-backoff" if current is not None else None
    sleeping = asyncio.create_task(_sleep(sleep, delay), name=name)
    tasks = {sleeping, asyncio.ensure_future(nudge.wait())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*tasks)


async def _sleep(sleep: Sleep, delay: float) -> None:
    await sleep(delay)


class ProviderLane:
    """Claims, performs and reschedules the polls of one provider (the I/O half)."""

    def __init__(self, poller: Poller, runtime: ProviderRuntime) -> None:
        self.poller = poller
        self.rt = runtime
        self.schedule = poller.schedule
        http = poller.http
        self.http = http[runtime.name] if isinstance(http, Mapping) else http
        # Shared by the cluster (Redis); else the planner's own, for this node alone.
        self.limits: Limits | None = poller.limits.get(runtime.name)
        self.planner = LanePlanner(
            runtime,
            coalesce_s=poller.coalesce_s,
            rng=poller.rng,
            shared_limits=self.limits is not None,
        )
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(runtime.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        # Claims a failed poll could not hand back (the store was unreachable):
        # handed back at the next turn, not left to lapse with their leases.
        self._stranded: list[Entry] = []
        self.requests_sent = 0

    @property
    def tasks(self) -> Mapping[str, Entry]:
        """The tasks this node knows are scheduled for this provider."""
        return self.schedule.known(self.rt.name)

    @property
    def paused_until(self) -> float:
        """Wall time before which this lane sends nothing (Retry-After, lane backoff)."""
        return self.planner.held_until

    @property
    def loop_name(self) -> str:
        return f"lane:{self.rt.name}"

    def wake(self) -> None:
        self._wake.set()

    def new_entry(self, task: str, deadline_at: float | None = None) -> Entry:
        wall = self.poller.wall()
        return Entry(
            task=task,
            interval_s=self.rt.policy.base_s,
            deadline_at=deadline_at if deadline_at is not None else wall + self.rt.deadline_s,
        )

    async def step(self) -> None:
        """One supervised turn: a round if one is due, else wait for news."""
        wait = await self.turn()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def turn(self) -> float:
        """Look at the schedule and run a round if one is due; seconds until the next look."""
        poller = self.poller
        self._wake.clear()
        now = poller.wall()
        if self._stranded:
            stranded, self._stranded = self._stranded, []
            try:
                await self.schedule.release(self.rt.name, [(entry, now) for entry in stranded])
            except BaseException:
                self._stranded = stranded + self._stranded
                raise
        at = self.planner.round_at(await self.schedule.next_due(self.rt.name))
        if at is not None and at <= now:
            claimed = await self.schedule.claim(self.rt.name, now, self.planner.horizon(now))
            if claimed:
                await self._round(claimed)
            return 0.0
        return poller.tick_s if at is None else min(poller.tick_s, at - now)

    async def _round(self, claimed: list[Entry]) -> None:
        with tracing.span(
            "pollcast.poll_round",
            {"pollcast.provider": self.rt.name, "pollcast.tasks": len(claimed)},
        ) as span:
            await self._planned_round(claimed, span)

    async def _planned_round(self, claimed: list[Entry], span: tracing.SpanLike) -> None:
        poller = self.poller
        out = self.planner.plan(claimed, now=poller.wall(), mono=poller.monotonic())
        span.set_attribute("pollcast.requests", len(out.requests))
        spawned: set[int] = set()
        try:
            await self._apply(out)
            refused: list[Request] = []
            for i, request in enumerate(out.requests):
                permit: str | None = None
                if self.limits is not None:
                    admission = await self.limits.admit()
                    if admission.limited is not None:
                        refused = out.requests[i:]
                        await self._refused(refused, admission.wait_s, admission.limited)
                        spawned.update(id(e) for r in refused for e in r.entries)
                        break
                    if admission.wait_s > 0:
                        await poller.sleep(admission.wait_s)
                else:
                    wait = request.send_at - poller.monotonic()
                    if wait > 0:
                        await poller.sleep(wait)
                await self._slots.acquire()
                if self.limits is not None:
                    permit = await self._permit()
                    if permit is None:
                        self._slots.release()
                        refused = out.requests[i:]
                        await self._refused(refused, self.rt.policy.min_delay_s, "rate")
                        spawned.update(id(e) for r in refused for e in r.entries)
                        break
                task = asyncio.create_task(self._poll(request, permit))
                spawned.update(id(entry) for entry in request.entries)
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if self.limits is not None and not refused:
                await self._apply(self.planner.admitted([], wait_s=0.0, now=poller.wall()))
        except BaseException:
            # Whatever failed, no claimed task may be left out of the schedule
            # (handing back one already handed back or finished is a no-op).
            later = poller.wall() + self.rt.policy.base_s
            left = [(entry, later) for entry in claimed if id(entry) not in spawned]
            await self._hand_back(left)
            raise

    async def _hand_back(self, due: list[tuple[Entry, float]]) -> None:
        """Give claims back after a failure; what the store cannot take now waits
        for the next turn (which needs the store too)."""
        try:
            await self.schedule.release(self.rt.name, due)
        except Exception:
            self._stranded += [entry for entry, _ in due]

    async def _refused(self, requests: list[Request], wait_s: float, why: str) -> None:
        """The shared limiter said not now: hand these back (a notice if the budget is spent)."""
        entries = [entry for request in requests for entry in request.entries]
        now = self.poller.wall()
        if why == "budget":
            await self._apply(self.planner.admitted(entries, wait_s=wait_s, now=now))
        else:
            await self._apply(Outputs(due=[(entry, now + wait_s) for entry in entries]))

    async def _permit(self) -> str | None:
        """A cluster-wide concurrency permit, waiting a little while all are taken
        (``None``: none came free soon enough; the claims are handed back)."""
        assert self.limits is not None
        poller = self.poller
        # Not longer than the claims keep without renewal: a lapsed claim is another node's.
        patience = self.schedule.renew_every_s or self.rt.timeout_s
        give_up = poller.monotonic() + min(patience, self.rt.timeout_s)
        while True:
            token = await self.limits.acquire()
            if token is not None or poller.monotonic() >= give_up:
                return token
            await poller.sleep(PERMIT_POLL_S)

    async def drain(self) -> None:
        """Wait until every request in flight has been absorbed (tests, shutdown)."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    # -- polling ------------------------------------------------------------

    async def _keep_claims(self, tasks: list[str], every_s: float) -> None:
        """A slow poll keeps its claims: no other node may poll these meanwhile."""
        while True:
            raise_if_cancelled()
            await asyncio.sleep(every_s)
            with contextlib.suppress(BackendError):
                await self.schedule.renew(self.rt.name, tasks)

    async def _poll(self, request: Request, permit: str | None = None) -> None:
        every = self.schedule.renew_every_s
        keeper = (
            asyncio.create_task(self._keep_claims(request.tasks, every))
            if every is not None
            else None
        )
        try:
            await self._exchange(request)
        except Exception:
            log.exception("poll of %s failed unexpectedly", self.rt.name)
            later = self.poller.wall() + self.rt.policy.base_s
            await self._hand_back([(e, later) for e in request.entries])
            self.wake()
        finally:
            if keeper is not None:
                keeper.cancel()
            self._slots.release()
            if permit is not None and self.limits is not None:
                await self.limits.release(permit)
            for task in request.tasks:
                self.poller.release_waiters(task)

    async def _exchange(self, request: Request) -> None:
        """Send one planned request, feed the reply to the planner, carry out the result."""
        attributes: dict[str, tracing.Attribute] = {
            "pollcast.provider": self.rt.name,
            "pollcast.batch_size": len(request.entries),
        }
        with tracing.span("pollcast.upstream_request", attributes) as span:
            await self._exchange_in(request, span)

    async def _exchange_in(self, request: Request, span: tracing.SpanLike) -> None:
        poller = self.poller
        rt = self.rt
        metrics = poller.metrics
        task_ids = request.task_ids
        sent = rt.adapter.build_request(
            task_ids, now_ms=int(poller.wall() * 1000), request_id=uuid.uuid4().hex
        )
        self.requests_sent += 1
        if rt.cost_per_call:
            metrics.budget_spent.labels(rt.name).inc(rt.cost_per_call)
        started = poller.monotonic()
        reply = await send(self.http, sent, name=rt.name, timeout_s=rt.timeout_s)
        elapsed = poller.monotonic() - started
        metrics.upstream_latency.labels(rt.name).observe(elapsed)
        snapshots: dict[str, Event | None] = {}
        if not isinstance(reply, Fault):
            tasks = request.tasks
            if len(tasks) == 1:
                snapshots[tasks[0]] = await poller.hub.snapshot(tasks[0])
            else:  # a batch: a Redis hub reads them in one pipeline
                snapshots = await poller.hub.snapshots(tasks)
        out = self.planner.absorb(
            request, sent, reply, snapshots, now=poller.wall(), elapsed_s=elapsed
        )
        metrics.upstream_requests.labels(rt.name, out.outcome or "ok").inc()
        if len(task_ids) > 1:  # counted with the request's outcome, never one without the other
            metrics.polls_saved.labels(rt.name).inc(len(task_ids) - 1)
        span.set_attribute("pollcast.outcome", out.outcome or "ok")
        if out.outcome == "ok":
            followers = poller.followers
            saved = sum(max(0, followers.get(task, 0) - 1) for task in request.tasks)
            if saved:
                metrics.polls_saved.labels(rt.name).inc(saved)
        for report in out.faults:
            log.warning(
                "upstream error",
                extra={
                    "provider": rt.name,
                    "task": report.tasks[0],
                    "tasks": len(report.tasks),
                    "fault": report.fault.kind.value,
                    "detail": report.fault.message,
                    "failures": report.failures,
                    "retry_in_s": round(report.retry_in_s, 3),
                },
            )
        await self._apply(out)

    async def _apply(self, out: Outputs) -> None:
        """Carry out the planner's outputs: notices, commits, ends, finishes, releases."""
        poller = self.poller
        rt = self.rt
        for notice in out.notices:
            await poller.notify(notice.tasks, notice.code, notice.message)
        if out.commits and not await poller.commit(out.events, rt, leases=out.leases()):
            # Not stored (the store refused the write, or held another state than
            # the poll started from): nothing of it reached memory or subscribers,
            # so these tasks are polled again soon, terminal ones too, and the
            # change is committed after the stored state that poll reads.
            unstored = {commit.entry.task for commit in out.commits}
            retry_at = poller.wall() + rt.policy.base_s
            out.due = [(e, at) for e, at in out.due if e.task not in unstored]
            out.due += [(c.entry, retry_at) for c in out.commits]
            out.finish = [e for e in out.finish if e.task not in unstored]
        for end in out.ends:
            previous = await poller.hub.snapshot(end.entry.task)
            await self._apply(self.planner.conclude(end, previous, now=poller.wall()))
        if out.finish:
            await poller.finish([entry.task for entry in out.finish], rt)
        if out.due:
            await self.schedule.release(rt.name, out.due)
            self.wake()


class Poller:
    """Owns the lanes; the web layer talks to this, never to a lane."""

    def __init__(
        self,
        hub: Hub,
        providers: Mapping[str, ProviderRuntime],
        http: UpstreamClient | Mapping[str, UpstreamClient],
        *,
        schedule: Schedule | None = None,
        metrics: Metrics | None = None,
        grace_s: float = 30.0,
        coalesce_s: float = 0.1,
        tick_s: float = 1.0,
        purge_every_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_commit: Callable[[Sequence[Event]], Awaitable[None]] | None = None,
        limits: Mapping[str, Limits] | None = None,
    ) -> None:
        self.hub = hub
        self.http = http
        # Told about every batch of events once the hub has stored it (webhooks).
        self.on_commit = on_commit
        self.schedule = schedule or LocalSchedule()
        self.metrics = metrics or Metrics()
        self.grace_s = grace_s
        self.coalesce_s = coalesce_s
        # How long a lane sleeps without news; a shared schedule is re-read this often.
        self.tick_s = tick_s
        self.purge_every_s = purge_every_s
        self.monotonic = monotonic
        self.wall = wall
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.limits: Mapping[str, Limits] = limits or {}
        self.lanes = {name: ProviderLane(self, rt) for name, rt in providers.items()}
        self.followers: dict[str, int] = {}  # task → local subscribers
        self.watching: set[str] = set()  # tasks watched through this node
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.loops: dict[str, LoopHealth] = {}
        self._purged_at: float | None = None

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        await self.schedule.start()
        for limits in self.limits.values():
            await limits.heartbeat()
        for watch in await self.hub.watches():
            try:
                key = TaskKey.parse(watch.task)
                lane = self.lane(key.provider)
            except Exception:
                log.warning("dropping a stored watch for an unknown provider: %s", watch.task)
                await self.hub.drop_watch(watch.task)
                continue
            await self._schedule(lane, key, keep_until=FOREVER, deadline_at=watch.deadline_at)
            self.watching.add(watch.task)
        steps: dict[str, Callable[[], Awaitable[None]]] = {
            lane.loop_name: lane.step for lane in self.lanes.values()
        }
        steps["housekeeping"] = self.housekeep
        for name, step in steps.items():
            health = self.loops[name] = LoopHealth(name)
            health.task = asyncio.create_task(
                supervise(health, step, metrics=self.metrics, sleep=self.sleep),
                name=f"pollcast-{name}",
            )

    async def close(self) -> None:
        loops = [h.task for h in self.loops.values() if h.task is not None]
        await cancel_and_wait(*loops)
        self.loops.clear()
        await cancel_and_wait(*(task for lane in self.lanes.values() for task in lane._inflight))
        await self.schedule.close()

    def retry_now(self) -> None:
        """The store answers again: a loop waiting out its backoff tries at once, and
        one whose step is under way tries again at once if that step fails."""
        for health in self.loops.values():
            health.retry_now.set()

    def problems(self) -> list[str]:
        """Why polling is not fully working: each loop that stopped or is failing."""
        if not self.loops:
            return ["poller not running"]
        return [p for p in (h.problem for h in self.loops.values()) if p is not None]

    @property
    def running(self) -> bool:
        """Started, and every loop is alive and not failing right now."""
        return not self.problems()

    async def housekeep(self) -> None:
        """One housekeeping pass: keep followed tasks wanted; purge expired results.

        Raises whatever the schedule or the hub raise (the supervisor retries).
        """
        await self.sleep(max(0.1, min(self.grace_s / 3, 5.0)))
        for limits in self.limits.values():
            await limits.heartbeat()
        until = self.wall() + self.grace_s
        by_provider: dict[str, list[str]] = {}
        for task in self.followers:
            by_provider.setdefault(task.partition(":")[0], []).append(task)
        for provider, tasks in by_provider.items():
            await self.schedule.keep(provider, tasks, until)
        mono = self.monotonic()
        if self._purged_at is None or mono - self._purged_at >= self.purge_every_s:
            await self.hub.purge(self.wall())
            self._purged_at = mono

    # -- what the web layer calls ---------------------------------------------

    def lane(self, provider: str) -> ProviderLane:
        lane = self.lanes.get(provider)
        if lane is None:
            raise UnknownProvider(
                f"no provider named {provider!r} is configured "
                f"(configured: {', '.join(sorted(self.lanes)) or 'none'})",
                field="provider",
            )
        return lane

    def runtime(self, provider: str) -> ProviderRuntime:
        return self.lane(provider).rt

    def check(self, key: TaskKey) -> None:
        """Raise the precise 4xx error for a task key this gateway cannot poll."""
        self.lane(key.provider).rt.adapter.check_task_id(key.task_id)

    async def follow(self, key: TaskKey) -> None:
        """A subscriber wants this task: make sure it is being polled."""
        name = str(key)
        self.followers[name] = self.followers.get(name, 0) + 1
        await self._schedule(self.lane(key.provider), key, keep_until=self.wall() + self.grace_s)

    def unfollow(self, key: TaskKey) -> None:
        """The last subscriber leaving starts the grace period (the housekeeper
        stops extending the task's interest)."""
        name = str(key)
        left = self.followers.get(name, 0) - 1
        if left > 0:
            self.followers[name] = left
        else:
            self.followers.pop(name, None)

    async def watch(self, key: TaskKey, deadline_s: float | None = None) -> None:
        lane = self.lane(key.provider)
        wall = self.wall()
        deadline_at = wall + (deadline_s or lane.rt.deadline_s)
        name = str(key)
        snapshot = await self.hub.snapshot(name)
        if snapshot is not None and snapshot.terminal:
            return
        await self.hub.put_watch(Watch(task=name, created_at=wall, deadline_at=deadline_at))
        self.watching.add(name)
        await self._schedule(lane, key, keep_until=FOREVER, deadline_at=deadline_at)
        await self.schedule.keep(key.provider, [name], FOREVER)
        await self.schedule.set_deadline(key.provider, name, deadline_at)

    async def unwatch(self, key: TaskKey) -> bool:
        self.lane(key.provider)
        existed = await self.hub.drop_watch(str(key))
        self.watching.discard(str(key))
        if existed:
            await self.schedule.lapse(key.provider, str(key), self.wall() + self.grace_s)
        return existed

    async def observe_now(self, key: TaskKey, timeout_s: float | None = None) -> Event:
        """The snapshot; for a task never seen, after one (shared) upstream poll."""
        name = str(key)
        snapshot = await self.hub.snapshot(name)
        if snapshot is not None:
            return snapshot
        lane = self.lane(key.provider)
        await self._schedule(lane, key, keep_until=self.wall() + self.grace_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(waiter)
        deadline = self.monotonic() + (timeout_s or lane.rt.timeout_s + 2.0)
        # Another node may poll it: look at the store now and then as well.
        while not waiter.done() and self.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.2, self.tick_s)):
                    await asyncio.shield(waiter)
            if await self.hub.snapshot(name) is not None:
                break
        if not waiter.done():
            waiter.cancel()
        return await self.hub.snapshot(name) or tracker.initial_snapshot(name, self.wall())

    # -- shared by lanes ----------------------------------------------------

    async def _schedule(
        self,
        lane: ProviderLane,
        key: TaskKey,
        *,
        keep_until: float,
        deadline_at: float | None = None,
    ) -> None:
        """Schedule ``key`` (unless terminal); keep it wanted until ``keep_until``."""
        name = str(key)
        snapshot = await self.hub.snapshot(name)
        if snapshot is not None and snapshot.terminal:
            return
        entry = lane.new_entry(name, deadline_at)
        if await self.schedule.add(lane.rt.name, entry, keep_until=keep_until):
            lane.wake()

    def release_waiters(self, task: str) -> None:
        for waiter in self._waiters.pop(task, []):
            if not waiter.done():
                waiter.set_result(None)

    async def commit(
        self,
        events: list[Event],
        rt: ProviderRuntime,
        *,
        leases: Mapping[str, str] | None = None,
    ) -> bool:
        """Store ``events``, then publish what was stored (metrics, webhooks, finish).

        ``leases`` maps a task to the schedule lease its event was observed
        under; a fenced hub refuses an event whose lease is no longer held
        (counted, and left to the node that holds the lease now).

        Returns:
            ``False`` if the store refused the write: poll these tasks again.
        """
        with tracing.span(
            "pollcast.commit", {"pollcast.provider": rt.name, "pollcast.events": len(events)}
        ) as span:
            return await self._commit(events, rt, leases, span)

    async def _commit(
        self,
        events: list[Event],
        rt: ProviderRuntime,
        leases: Mapping[str, str] | None,
        span: tracing.SpanLike,
    ) -> bool:
        try:
            stored = await self._store(events, rt, leases)
        except SeqConflict as exc:
            # The store holds another state than this poll started from (a write
            # lost, a replica promoted behind): what stored and what not is not
            # known, so these tasks are polled again and their seqs read afresh.
            self.metrics.backend_errors.inc()
            log.warning("the store refused %d event(s) of %s: %s", len(events), rt.name, exc)
            return False
        except BackendError as exc:
            self.metrics.backend_errors.inc()
            log.warning("could not store %d event(s) of %s: %s", len(events), rt.name, exc)
            return False
        span.set_attribute("pollcast.stored", len(stored))
        if len(stored) < len(events):  # a lapsed claim's: the task is another node's now
            self.metrics.commits_refused.inc(len(events) - len(stored))
        if not stored:
            return True
        self.metrics.events_published.inc(len(stored))
        for event in stored:
            self.metrics.task_state(event.task, None if event.terminal else event.state.value)
        if self.on_commit is not None:
            await self.on_commit(stored)
        done = [event.task for event in stored if event.terminal]
        if done:
            await self.finish(done, rt)
        return True

    async def _store(
        self, events: list[Event], rt: ProviderRuntime, leases: Mapping[str, str] | None
    ) -> list[Event]:
        """The one call that stores events; the events actually stored come back."""
        encoded = await self.hub.commit(events, terminal_ttl_s=rt.result_ttl_s, leases=leases)
        return [enc.event for enc in encoded]

    async def finish(self, tasks: list[str], rt: ProviderRuntime) -> None:
        """Terminal: never polled again, no longer watched."""
        await self.schedule.remove(rt.name, tasks)
        for task in tasks:
            await self.hub.drop_watch(task)
            self.watching.discard(task)
            self.release_waiters(task)

    async def notify(self, tasks: Iterable[str], code: str, message: str) -> None:
        now = self.wall()
        for task in tasks:
            self.metrics.notices.labels(code).inc()
            current = await self.hub.snapshot(task)
            await self.hub.announce(
                tracker.notice(current, task=task, code=code, message=message, now=now)
            )

    def tracked(self) -> dict[str, int]:
        """How many tasks each provider is polling (as this node knows it)."""
        return {name: len(lane.tasks) for name, lane in self.lanes.items()}
