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
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from gateway.aio import cancel_and_wait, raise_if_cancelled
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
from gateway.core.policy import CostBudget, TokenBucket
from gateway.exceptions import BackendError, SeqConflict, UnknownProvider
from gateway.hub.base import Hub, Watch
from gateway.metrics import Metrics
from gateway.poller.provider import ProviderRuntime
from gateway.poller.schedule import FOREVER, Entry, LocalSchedule, Schedule
from gateway.poller.transport import send
from gateway.poller.upstream import UpstreamTransport
from gateway.providers.base import UpstreamRequest, fault_observations

__all__ = ["Poller", "ProviderLane"]

log = logging.getLogger("pollcast.poller")


def _task_id(task: str) -> str:
    """The upstream id of a scheduled task key (validated before it was scheduled)."""
    return task.partition(":")[2]


class ProviderLane:
    """Claims, performs and reschedules the polls of one provider."""

    def __init__(self, poller: Poller, runtime: ProviderRuntime) -> None:
        self.poller = poller
        self.rt = runtime
        self.schedule = poller.schedule
        http = poller.http
        self.http = http if isinstance(http, UpstreamTransport) else http[runtime.name]
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(runtime.concurrency)
        self._rate = TokenBucket(runtime.rate_per_s)
        self._budget = (
            CostBudget(runtime.budget_per_hour, runtime.cost_per_call)
            if runtime.budget_per_hour is not None and runtime.cost_per_call > 0
            else None
        )
        self._budget_noticed = False
        self.paused_until = 0.0  # wall clock
        self._inflight: set[asyncio.Task[None]] = set()
        self.requests_sent = 0

    @property
    def tasks(self) -> Mapping[str, Entry]:
        """The tasks this node knows are scheduled for this provider."""
        return self.schedule.known(self.rt.name)

    def wake(self) -> None:
        self._wake.set()

    def new_entry(self, task: str, deadline_at: float | None = None) -> Entry:
        wall = self.poller.wall()
        return Entry(
            task=task,
            interval_s=self.rt.policy.base_s,
            deadline_at=deadline_at if deadline_at is not None else wall + self.rt.deadline_s,
        )

    async def run(self) -> None:
        """Poll until cancelled; a failing schedule store is waited out, not fatal."""
        delay = 0.2
        while True:
            raise_if_cancelled()
            try:
                await self._run()
            except BackendError as exc:
                self.poller.metrics.backend_errors.inc()
                log.warning("%s: schedule unavailable (%s); retrying", self.rt.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        poller = self.poller
        batch = self.rt.batch_size > 1
        # Batch providers wait a moment after the first task falls due so that
        # tasks registered together share one request.
        window = poller.coalesce_s if batch else 0.0
        while True:
            raise_if_cancelled()  # the store may have swallowed a cancel (gateway/aio.py)
            now = poller.wall()
            if self.paused_until > now:
                await asyncio.sleep(self.paused_until - now)
                continue
            first = await self.schedule.next_due(self.rt.name)
            if first is not None and first + window <= now:
                # A batch round also takes every task due within half a base
                # interval: polling those a little early puts all of the
                # provider's tasks on one beat, so after one round a round
                # costs ⌈tasks / batch_size⌉ requests however they arrived.
                horizon = now + self.rt.policy.base_s / 2 if batch else now
                claimed = await self.schedule.claim(self.rt.name, now, horizon)
                if claimed:
                    await self._dispatch(claimed)
                continue
            self._wake.clear()
            wait = poller.tick_s
            if first is not None:
                wait = min(wait, max(0.0, first + window - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _dispatch(self, claimed: list[Entry]) -> None:
        ready: list[Entry] = []
        wall = self.poller.wall()
        for entry in claimed:
            if entry.deadline_at is not None and wall >= entry.deadline_at:
                error = ErrorInfo("gateway_deadline", "the task did not finish before its deadline")
                await self._end(entry, State.EXPIRED, error)
            else:
                ready.append(entry)
        size = self.rt.batch_size
        for i in range(0, len(ready), size):
            chunk = ready[i : i + size]
            await self._admit(chunk)
            await self._slots.acquire()
            task = asyncio.create_task(self._poll(chunk))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _admit(self, chunk: list[Entry]) -> None:
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
                    [entry.task for entry in chunk],
                    "budget_limited",
                    f"{self.rt.name}: cost budget of {budget} per hour reached; "
                    f"polling slowed for {wait:.0f} s",
                )
            await asyncio.sleep(wait)
        else:
            self._budget_noticed = False
        self._budget.spend(self.poller.monotonic())

    # -- polling ------------------------------------------------------------

    async def _keep_claims(self, tasks: list[str], every_s: float) -> None:
        """A slow poll keeps its claims: no other node may poll these meanwhile."""
        while True:
            raise_if_cancelled()
            await asyncio.sleep(every_s)
            with contextlib.suppress(BackendError):
                await self.schedule.renew(self.rt.name, tasks)

    async def _poll(self, chunk: list[Entry]) -> None:
        every = self.schedule.renew_every_s
        keeper = (
            asyncio.create_task(self._keep_claims([e.task for e in chunk], every))
            if every is not None
            else None
        )
        try:
            started = self.poller.monotonic()
            observations = await self._request([_task_id(e.task) for e in chunk])
            slow = self.poller.monotonic() - started > self.rt.timeout_s / 2
            await self._absorb(chunk, observations, slow=slow)
        except Exception:
            log.exception("poll of %s failed unexpectedly", self.rt.name)
            later = self.poller.wall() + self.rt.policy.base_s
            with contextlib.suppress(Exception):
                await self.schedule.release(self.rt.name, [(e, later) for e in chunk])
            self.wake()
        finally:
            if keeper is not None:
                keeper.cancel()
            self._slots.release()
            for entry in chunk:
                self.poller.release_waiters(entry.task)

    async def _request(self, task_ids: list[str]) -> list[Observation]:
        rt = self.rt
        request: UpstreamRequest = rt.adapter.build_request(
            task_ids, now_ms=int(self.poller.wall() * 1000), request_id=uuid.uuid4().hex
        )
        self.requests_sent += 1
        metrics = self.poller.metrics
        if rt.cost_per_call:
            metrics.budget_spent.labels(rt.name).inc(rt.cost_per_call)
        if len(task_ids) > 1:
            metrics.polls_saved.labels(rt.name).inc(len(task_ids) - 1)
        started = self.poller.monotonic()
        observations = await self._send(request, task_ids)
        metrics.upstream_latency.labels(rt.name).observe(self.poller.monotonic() - started)
        fault = next((o.fault for o in observations if o.fault is not None), None)
        outcome = "ok" if fault is None else fault.kind.value
        metrics.upstream_requests.labels(rt.name, outcome).inc()
        return observations

    async def _send(self, request: UpstreamRequest, task_ids: list[str]) -> list[Observation]:
        rt = self.rt
        reply = await send(self.http, request, name=rt.name, timeout_s=rt.timeout_s)
        if isinstance(reply, Fault):
            return fault_observations(task_ids, reply)
        return rt.adapter.parse(request, reply)

    async def _absorb(
        self, chunk: list[Entry], observations: list[Observation], *, slow: bool = False
    ) -> None:
        poller = self.poller
        rt = self.rt
        now = poller.wall()
        by_id = {obs.task_id: obs for obs in observations}
        changes: list[Event] = []
        again: list[tuple[Entry, float]] = []
        for entry in chunk:
            task_id = _task_id(entry.task)
            obs = by_id.get(task_id)
            if obs is None:
                obs = Observation(
                    task_id=task_id,
                    fault=Fault(FaultKind.MALFORMED, f"{rt.name} reply did not cover this task"),
                )
            if obs.fault is not None:
                delay = await self._fault(entry, obs.fault)
                if delay is not None:
                    again.append((entry, now + delay))
                continue
            followers = poller.followers.get(entry.task, 0)
            if followers > 1:
                poller.metrics.polls_saved.labels(rt.name).inc(followers - 1)
            previous = await poller.hub.snapshot(entry.task)
            event = tracker.observe(previous, obs, task=entry.task, now=now)
            if slow and not entry.degraded:
                entry.degraded = True
                await poller.notify(
                    [entry.task],
                    "upstream_slow",
                    f"{rt.name} took more than half its {rt.timeout_s:g} s timeout to answer",
                )
            elif entry.degraded and not slow:
                entry.degraded = False
                await poller.notify([entry.task], "upstream_recovered", f"{rt.name} answers again")
            if previous is not None and previous.terminal:
                await poller.finish([entry.task], rt)
                continue
            if event is None:
                decision = rt.policy.after_no_change(entry.poll)
            else:
                changes.append(event)
                decision = rt.policy.after_change(entry.poll)
            entry.apply(decision.state)
            if event is None or not event.terminal:
                again.append((entry, now + decision.delay_s))
        if changes and not await poller.commit(
            changes, rt, {e.task: e.lease for e in chunk if e.lease}
        ):
            # Not stored: poll these again (terminal ones too) and commit the same seqs.
            unstored = {event.task for event in changes}
            retry_at = now + rt.policy.base_s
            again = [(e, at) for e, at in again if e.task not in unstored]
            again += [(e, retry_at) for e in chunk if e.task in unstored]
        if again:
            await self.schedule.release(rt.name, again)
            self.wake()

    async def _fault(self, entry: Entry, fault: Fault) -> float | None:
        """Back off from a failed poll; the delay, or ``None`` if the task was ended."""
        poller = self.poller
        rt = self.rt
        decision = rt.policy.after_fault(entry.poll, fault, poller.rng)
        entry.apply(decision.state)
        log.warning(
            "upstream error",
            extra={
                "provider": rt.name,
                "task": entry.task,
                "fault": fault.kind.value,
                "detail": fault.message,
                "failures": decision.state.failures,
                "retry_in_s": round(decision.delay_s, 3),
            },
        )
        if fault.kind is FaultKind.RATE_LIMITED and fault.retry_after_s is not None:
            # A 429 is about this client as a whole, not about one task.
            self.paused_until = max(self.paused_until, poller.wall() + fault.retry_after_s)
        if decision.give_up:
            error = ErrorInfo("upstream_auth", f"{rt.name} refused the gateway's credentials")
            await self._end(entry, State.FAILED, error)
            return None
        if not entry.degraded:
            entry.degraded = True
            await poller.notify(
                [entry.task],
                f"upstream_{fault.kind.value}",
                f"{fault.message}; retrying in {decision.delay_s:.1f} s",
            )
        return decision.delay_s

    async def _end(self, entry: Entry, state: State, error: ErrorInfo) -> None:
        poller = self.poller
        previous = await poller.hub.snapshot(entry.task)
        event = tracker.force_state(
            previous, task=entry.task, state=state, error=error, now=poller.wall()
        )
        if event is not None:
            if not await poller.commit([event], self.rt):
                # Not stored: the deadline still holds; try to end it again soon.
                retry_at = poller.wall() + self.rt.policy.base_s
                await self.schedule.release(self.rt.name, [(entry, retry_at)])
                self.wake()
        else:
            await poller.finish([entry.task], self.rt)


class Poller:
    """Owns the lanes; the web layer talks to this, never to a lane."""

    def __init__(
        self,
        hub: Hub,
        providers: Mapping[str, ProviderRuntime],
        http: UpstreamTransport | Mapping[str, UpstreamTransport],
        *,
        schedule: Schedule | None = None,
        metrics: Metrics | None = None,
        grace_s: float = 30.0,
        coalesce_s: float = 0.1,
        tick_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_commit: Callable[[Sequence[Event]], Awaitable[None]] | None = None,
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
        self.monotonic = monotonic
        self.wall = wall
        self.rng = rng or random.Random()
        self.lanes = {name: ProviderLane(self, rt) for name, rt in providers.items()}
        self.followers: dict[str, int] = {}  # task → local subscribers
        self.watching: set[str] = set()  # tasks watched through this node
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._runner: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        await self.schedule.start()
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
        self._runner = asyncio.create_task(self._run(), name="pollcast-poller")

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for lane in self.lanes.values():
                group.create_task(lane.run())
            group.create_task(self._housekeeping())

    async def close(self) -> None:
        if self._runner is not None:
            await cancel_and_wait(self._runner)
            self._runner = None
        await cancel_and_wait(*(task for lane in self.lanes.values() for task in lane._inflight))
        await self.schedule.close()

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    async def _housekeeping(self) -> None:
        """Keep followed tasks wanted; purge expired results."""
        every = max(0.1, min(self.grace_s / 3, 5.0))
        purged_at = 0.0
        while True:
            raise_if_cancelled()
            await asyncio.sleep(every)
            until = self.wall() + self.grace_s
            by_provider: dict[str, list[str]] = {}
            for task in self.followers:
                by_provider.setdefault(task.partition(":")[0], []).append(task)
            for provider, tasks in by_provider.items():
                try:
                    await self.schedule.keep(provider, tasks, until)
                except BackendError:
                    log.warning("could not refresh interest in %d task(s)", len(tasks))
            if self.monotonic() - purged_at > 10:
                purged_at = self.monotonic()
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
        self, events: list[Event], rt: ProviderRuntime, leases: Mapping[str, str] | None = None
    ) -> bool:
        """Store and fan out; ``False`` if the store refused them (poll them again).

        ``leases``: task → the token of the claim the events come from (fencing).
        """
        try:
            stored = await self.hub.commit(events, terminal_ttl_s=rt.result_ttl_s, leases=leases)
        except SeqConflict:
            log.info("another node already recorded a newer state of %s", events[0].task)
            return True
        except BackendError as exc:
            self.metrics.backend_errors.inc()
            log.warning("could not store %d event(s) of %s: %s", len(events), rt.name, exc)
            return False
        if len(stored) < len(events):  # a lapsed claim's: the task is another node's now
            self.metrics.commits_refused.inc(len(events) - len(stored))
            events = [enc.event for enc in stored]
        self.metrics.events_published.inc(len(events))
        for event in events:
            self.metrics.task_state(event.task, None if event.terminal else event.state.value)
        if self.on_commit is not None:
            await self.on_commit(events)
        done = [event.task for event in events if event.terminal]
        if done:
            await self.finish(done, rt)
        return True

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
