"""The poller: one upstream request per task per due time, whoever is watching.

One :class:`ProviderLane` per configured provider keeps a heap of due times.
When tasks fall due, a lane takes every task due within a short coalescing
window, splits them into requests of at most ``batch_size`` ids (batch
providers) or one id each, and sends them within the provider's concurrency
limit, request rate and cost budget. Observations go through the pure
tracker; changes are committed to the hub, which fans them out. The pure
:class:`~gateway.core.policy.IntervalPolicy` decides when each task is asked
about next.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from gateway.core import tracker
from gateway.core.model import (
    ErrorInfo,
    Event,
    Fault,
    FaultKind,
    Observation,
    State,
    TaskKey,
)
from gateway.core.policy import CostBudget, PollState, TokenBucket
from gateway.exceptions import BackendError, UnknownProvider
from gateway.hub.base import Hub, Watch
from gateway.poller.provider import ProviderRuntime
from gateway.providers.base import UpstreamRequest, UpstreamResponse, fault_observations

__all__ = ["Poller", "ProviderLane"]

log = logging.getLogger("pollcast.poller")


@dataclass(slots=True)
class Tracked:
    """What the poller knows about one task it is polling."""

    key: TaskKey
    name: str  # str(key), cached
    poll: PollState
    due: float = 0.0
    version: int = 0
    followers: int = 0
    watched: bool = False
    deadline_at: float | None = None  # wall clock
    idle_since: float | None = None  # monotonic; set while nobody follows it
    in_flight: bool = False
    degraded: bool = False
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class ProviderLane:
    """Schedules and performs the polls of one provider."""

    def __init__(self, poller: Poller, runtime: ProviderRuntime) -> None:
        self.poller = poller
        self.rt = runtime
        self.tasks: dict[str, Tracked] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(runtime.concurrency)
        self._rate = TokenBucket(runtime.rate_per_s)
        self._budget = (
            CostBudget(runtime.budget_per_hour, runtime.cost_per_call)
            if runtime.budget_per_hour is not None and runtime.cost_per_call > 0
            else None
        )
        self._budget_noticed = False
        self.paused_until = 0.0
        self._inflight: set[asyncio.Task[None]] = set()
        self.requests_sent = 0

    # -- scheduling ---------------------------------------------------------

    def schedule(self, rec: Tracked, delay_s: float) -> None:
        now = self.poller.monotonic()
        due = now + delay_s
        if rec.deadline_at is not None:
            due = min(due, now + max(0.0, rec.deadline_at - self.poller.wall()))
        rec.due = due
        rec.version += 1
        heapq.heappush(self._heap, (due, rec.version, rec.name))
        if self._heap[0][2] == rec.name:
            self._wake.set()

    def _pop_due(self, horizon: float) -> list[Tracked]:
        due: list[Tracked] = []
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            _, version, name = heapq.heappop(heap)
            rec = self.tasks.get(name)
            if rec is None or rec.version != version or rec.in_flight:
                continue
            due.append(rec)
        return due

    def _take(self, now: float) -> list[Tracked]:
        """The tasks to poll now.

        A batch provider's round also takes every task due within half a
        base interval: polling those a little early puts all of the
        provider's tasks on one beat, so after one round a round costs
        ⌈tasks / batch_size⌉ requests however the tasks arrived.
        """
        if self.rt.batch_size > 1:
            return self._pop_due(now + self.rt.policy.base_s / 2)
        return self._pop_due(now)

    async def run(self) -> None:
        window = self.poller.coalesce_s if self.rt.batch_size > 1 else 0.0
        while True:
            now = self.poller.monotonic()
            if self.paused_until > now:
                await asyncio.sleep(self.paused_until - now)
                continue
            # Batch providers wait a moment after the first task falls due so
            # that tasks registered together share one request.
            if self._heap and self._heap[0][0] + window <= now:
                due = self._take(now)
                if due:
                    await self._dispatch(due)
                continue
            self._wake.clear()
            timeout = self._heap[0][0] + window - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _dispatch(self, due: list[Tracked]) -> None:
        ready: list[Tracked] = []
        wall = self.poller.wall()
        for rec in due:
            if rec.deadline_at is not None and wall >= rec.deadline_at:
                await self._expire(rec)
            else:
                ready.append(rec)
        size = self.rt.batch_size
        for i in range(0, len(ready), size):
            chunk = ready[i : i + size]
            for rec in chunk:
                rec.in_flight = True
            await self._admit(chunk)
            await self._slots.acquire()
            task = asyncio.create_task(self._poll(chunk))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _admit(self, chunk: list[Tracked]) -> None:
        """Wait for the request rate and the cost budget to allow one more call."""
        wait = self._rate.reserve(self.poller.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        if self._budget is None:
            return
        wait = self._budget.wait_time(self.poller.monotonic())
        if wait > 0:
            if not self._budget_noticed:
                self._budget_noticed = True
                budget = self.rt.budget_per_hour
                await self.poller.notify(
                    [rec.name for rec in chunk],
                    "budget_limited",
                    f"{self.rt.name}: cost budget of {budget} per hour reached; "
                    f"polling slowed for {wait:.0f} s",
                )
            await asyncio.sleep(wait)
        else:
            self._budget_noticed = False
        self._budget.spend(self.poller.monotonic())

    # -- polling ------------------------------------------------------------

    async def _poll(self, chunk: list[Tracked]) -> None:
        try:
            started = self.poller.monotonic()
            observations = await self._request([rec.key.task_id for rec in chunk])
            slow = self.poller.monotonic() - started > self.rt.timeout_s / 2
            await self._absorb(chunk, observations, slow=slow)
        except Exception:
            log.exception("poll of %s failed unexpectedly", self.rt.name)
            for rec in chunk:
                rec.in_flight = False
                if rec.name in self.tasks:
                    self.schedule(rec, self.rt.policy.base_s)
        finally:
            self._slots.release()

    async def _request(self, task_ids: list[str]) -> list[Observation]:
        rt = self.rt
        request: UpstreamRequest = rt.adapter.build_request(
            task_ids, now_ms=int(self.poller.wall() * 1000), request_id=uuid.uuid4().hex
        )
        self.requests_sent += 1
        try:
            reply = await self.poller.http.request(
                request.method,
                request.url,
                params=request.params,
                headers=request.headers,
                content=request.body,
                timeout=rt.timeout_s,
            )
        except httpx.TimeoutException:
            fault = Fault(FaultKind.TIMEOUT, f"{rt.name} did not answer within {rt.timeout_s:g} s")
            return fault_observations(task_ids, fault)
        except httpx.HTTPError as exc:
            # The exception text can hold the URL, and some upstreams sign in the
            # query string: name the failure, never echo it.
            fault = Fault(FaultKind.NETWORK, f"{rt.name}: connection failed ({type(exc).__name__})")
            return fault_observations(task_ids, fault)
        response = UpstreamResponse(
            status_code=reply.status_code,
            headers={k.lower(): v for k, v in reply.headers.items()},
            body=reply.content,
        )
        return rt.adapter.parse(request, response)

    async def _absorb(
        self, chunk: list[Tracked], observations: list[Observation], *, slow: bool = False
    ) -> None:
        poller = self.poller
        rt = self.rt
        now = poller.wall()
        by_id = {obs.task_id: obs for obs in observations}
        changes: list[Event] = []
        for rec in chunk:
            rec.in_flight = False
            if self.tasks.get(rec.name) is not rec:
                continue  # forgotten while in flight
            obs = by_id.get(rec.key.task_id)
            if obs is None:
                obs = Observation(
                    task_id=rec.key.task_id,
                    fault=Fault(FaultKind.MALFORMED, f"{rt.name} reply did not cover this task"),
                )
            if obs.fault is not None:
                await self._fault(rec, obs.fault)
                continue
            previous = await poller.hub.snapshot(rec.name)
            event = tracker.observe(previous, obs, task=rec.name, now=now)
            if slow and not rec.degraded:
                rec.degraded = True
                await poller.notify(
                    [rec.name],
                    "upstream_slow",
                    f"{rt.name} took more than half its {rt.timeout_s:g} s timeout to answer",
                )
            elif rec.degraded and not slow:
                rec.degraded = False
                await poller.notify([rec.name], "upstream_recovered", f"{rt.name} answers again")
            if event is None:
                decision = rt.policy.after_no_change(rec.poll)
            else:
                changes.append(event)
                decision = rt.policy.after_change(rec.poll)
            rec.poll = decision.state
            self.schedule(rec, decision.delay_s)
        if changes:
            await poller.commit(changes, rt)
        for rec in chunk:
            poller.release_waiters(rec)

    async def _fault(self, rec: Tracked, fault: Fault) -> None:
        poller = self.poller
        rt = self.rt
        decision = rt.policy.after_fault(rec.poll, fault, poller.rng)
        rec.poll = decision.state
        log.warning(
            "upstream error",
            extra={
                "provider": rt.name,
                "task": rec.name,
                "fault": fault.kind.value,
                "detail": fault.message,
                "failures": decision.state.failures,
                "retry_in_s": round(decision.delay_s, 3),
            },
        )
        if fault.kind is FaultKind.RATE_LIMITED and fault.retry_after_s is not None:
            # A 429 is about this client as a whole, not about one task.
            self.paused_until = max(self.paused_until, poller.monotonic() + fault.retry_after_s)
        if decision.give_up:
            error = ErrorInfo("upstream_auth", f"{rt.name} refused the gateway's credentials")
            await self._end(rec, State.FAILED, error)
            return
        if not rec.degraded:
            rec.degraded = True
            await poller.notify(
                [rec.name],
                f"upstream_{fault.kind.value}",
                f"{fault.message}; retrying in {decision.delay_s:.1f} s",
            )
        self.schedule(rec, decision.delay_s)
        poller.release_waiters(rec)

    async def _expire(self, rec: Tracked) -> None:
        error = ErrorInfo("gateway_deadline", "the task did not finish before its deadline")
        await self._end(rec, State.EXPIRED, error)

    async def _end(self, rec: Tracked, state: State, error: ErrorInfo) -> None:
        poller = self.poller
        previous = await poller.hub.snapshot(rec.name)
        event = tracker.force_state(
            previous, task=rec.name, state=state, error=error, now=poller.wall()
        )
        if event is not None:
            await poller.commit([event], self.rt)
        else:
            poller.forget(rec)
        poller.release_waiters(rec)


class Poller:
    """Owns the lanes; the web layer talks to this, never to a lane."""

    def __init__(
        self,
        hub: Hub,
        providers: Mapping[str, ProviderRuntime],
        http: httpx.AsyncClient,
        *,
        grace_s: float = 30.0,
        coalesce_s: float = 0.1,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.hub = hub
        self.http = http
        self.grace_s = grace_s
        self.coalesce_s = coalesce_s
        self.monotonic = monotonic
        self.wall = wall
        self.rng = rng or random.Random()
        self.lanes = {name: ProviderLane(self, rt) for name, rt in providers.items()}
        self._runner: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        for watch in await self.hub.watches():
            try:
                key = TaskKey.parse(watch.task)
                lane = self.lane(key.provider)
            except Exception:
                log.warning("dropping a stored watch for an unknown provider: %s", watch.task)
                await self.hub.drop_watch(watch.task)
                continue
            rec = await self._track(lane, key)
            if rec is not None:
                rec.watched = True
                rec.idle_since = None
                rec.deadline_at = watch.deadline_at
        self._runner = asyncio.create_task(self._run(), name="pollcast-poller")

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for lane in self.lanes.values():
                group.create_task(lane.run())
            group.create_task(self._housekeeping())

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for lane in self.lanes.values():
            for task in list(lane._inflight):
                task.cancel()

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.monotonic()
            for lane in self.lanes.values():
                for rec in list(lane.tasks.values()):
                    if (
                        rec.idle_since is not None
                        and now - rec.idle_since >= self.grace_s
                        and not rec.in_flight
                    ):
                        self.forget(rec)
            try:
                await self.hub.purge(self.wall())
            except BackendError:
                log.warning("purge of expired tasks failed; will retry")

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
        rec = await self._track(self.lane(key.provider), key)
        if rec is not None:
            rec.followers += 1
            rec.idle_since = None

    def unfollow(self, key: TaskKey) -> None:
        rec = self.lanes[key.provider].tasks.get(str(key))
        if rec is None:
            return
        rec.followers = max(0, rec.followers - 1)
        if rec.followers == 0 and not rec.watched:
            rec.idle_since = self.monotonic()

    async def watch(self, key: TaskKey, deadline_s: float | None = None) -> None:
        lane = self.lane(key.provider)
        wall = self.wall()
        deadline_at = wall + (deadline_s or lane.rt.deadline_s)
        snapshot = await self.hub.snapshot(str(key))
        if snapshot is not None and snapshot.terminal:
            return
        await self.hub.put_watch(Watch(task=str(key), created_at=wall, deadline_at=deadline_at))
        rec = await self._track(lane, key)
        if rec is not None:
            rec.watched = True
            rec.idle_since = None
            rec.deadline_at = deadline_at

    async def unwatch(self, key: TaskKey) -> bool:
        existed = await self.hub.drop_watch(str(key))
        rec = self.lane(key.provider).tasks.get(str(key))
        if rec is not None and rec.watched:
            rec.watched = False
            if rec.followers == 0:
                rec.idle_since = self.monotonic()
        return existed

    async def observe_now(self, key: TaskKey, timeout_s: float | None = None) -> Event:
        """The snapshot; for a task never seen, after one (shared) upstream poll."""
        name = str(key)
        snapshot = await self.hub.snapshot(name)
        if snapshot is not None:
            return snapshot
        lane = self.lane(key.provider)
        rec = await self._track(lane, key)
        if rec is not None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            rec.waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout_s or lane.rt.timeout_s + 2.0)
        return await self.hub.snapshot(name) or tracker.initial_snapshot(name, self.wall())

    # -- shared by lanes ----------------------------------------------------

    async def _track(self, lane: ProviderLane, key: TaskKey) -> Tracked | None:
        """The task's record, creating and scheduling it now; ``None`` if terminal."""
        name = str(key)
        rec = lane.tasks.get(name)
        if rec is not None:
            return rec
        snapshot = await self.hub.snapshot(name)
        if snapshot is not None and snapshot.terminal:
            return None
        rec = lane.tasks.get(name)  # another caller may have won while we awaited
        if rec is not None:
            return rec
        rec = Tracked(
            key=key,
            name=name,
            poll=lane.rt.policy.start(),
            idle_since=self.monotonic(),
            deadline_at=self.wall() + lane.rt.deadline_s,
        )
        lane.tasks[name] = rec
        lane.schedule(rec, 0.0)
        return rec

    def forget(self, rec: Tracked) -> None:
        lane = self.lanes[rec.key.provider]
        if lane.tasks.get(rec.name) is rec:
            del lane.tasks[rec.name]
        rec.version += 1
        self.release_waiters(rec)

    @staticmethod
    def release_waiters(rec: Tracked) -> None:
        waiters, rec.waiters = rec.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def commit(self, events: list[Event], rt: ProviderRuntime) -> None:
        try:
            await self.hub.commit(events, terminal_ttl_s=rt.result_ttl_s)
        except BackendError:
            log.exception("could not store %d event(s) of %s", len(events), rt.name)
            return
        lane = self.lanes[rt.name]
        for event in events:
            if event.terminal:
                rec = lane.tasks.get(event.task)
                if rec is not None:
                    self.forget(rec)
                if rec is not None and rec.watched:
                    await self.hub.drop_watch(event.task)

    async def notify(self, tasks: Iterable[str], code: str, message: str) -> None:
        now = self.wall()
        for task in tasks:
            current = await self.hub.snapshot(task)
            await self.hub.announce(
                tracker.notice(current, task=task, code=code, message=message, now=now)
            )

    def tracked(self) -> dict[str, int]:
        """How many tasks each provider is polling."""
        return {name: len(lane.tasks) for name, lane in self.lanes.items()}
