"""The gateway as the streams see it: tasks, feeds, draining.

A :class:`Feed` is one subscriber's view of some tasks, shared by SSE,
NDJSON and WebSocket. It attaches to the hub *first*, then reads the
snapshot or the missed history, and afterwards accepts only events newer
than what it has delivered — so nothing falls between catch-up and live,
and nothing is delivered twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from typing import Literal

from gateway.aio import cancel_and_wait
from gateway.backends import build_backends
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import Config
from gateway.core import tracker
from gateway.core.model import Event, State, TaskKey
from gateway.core.sse import Encoded
from gateway.exceptions import BackendError, InputError, TooManyTasks, UnknownTask
from gateway.hub.base import HistoryPage, Hub, Watch
from gateway.hub.client import Client
from gateway.hub.queue import CloseReason, QueueStats, SubscriberQueue
from gateway.hub.redis import RedisHub
from gateway.listing import TaskPage, WatcherBoard, list_tasks
from gateway.metrics import Metrics
from gateway.poller.engine import Poller
from gateway.poller.redis_schedule import RedisSchedule
from gateway.poller.schedule import FOREVER
from gateway.poller.upstream import AiohttpUpstreamClient
from gateway.redaction import for_config
from gateway.webhooks.model import WebhookTarget
from gateway.webhooks.service import Webhooks

__all__ = ["Feed", "Gateway", "UnknownTask"]

log = logging.getLogger("pollcast.gateway")

TaskScope = Literal["stream", "token", "connection"]
"""What :meth:`Gateway.check_task_count` counts the tasks of."""


class Gateway:
    """Owns the hub, the poller and the set of open feeds."""

    def __init__(
        self, config: Config, *, hub: Hub | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.clock = clock
        self.runtimes = config.runtimes()
        self.node_id = uuid.uuid4().hex[:12]
        self.metrics = Metrics()
        # Every credential in every form, for what leaves the gateway as text.
        self.redactor = for_config(config)
        self.queue_stats = QueueStats()
        backends = build_backends(
            config,
            runtimes=self.runtimes,
            node_id=self.node_id,
            metrics=self.metrics,
            hub=hub,
            clock=clock,
        )
        schedule = backends.schedule
        self.redis: Client | None = backends.redis
        self.hub = backends.hub
        self.webhooks = (
            Webhooks(
                config.webhooks,
                backends.outbox,
                self.hub,
                wall=clock.wall,
                metrics=self.metrics,
            )
            if backends.outbox is not None
            else None
        )
        # One upstream client per provider, with as many connections as it may use at once.
        self.http = {
            name: AiohttpUpstreamClient(rt.http, concurrency=rt.concurrency)
            for name, rt in self.runtimes.items()
        }
        self.poller = Poller(
            self.hub,
            self.runtimes,
            self.http,
            schedule=schedule,
            metrics=self.metrics,
            grace_s=config.polling.grace_s,
            coalesce_s=config.polling.coalesce_s,
            tick_s=backends.tick_s,
            monotonic=clock.monotonic,
            wall=clock.wall,
            on_commit=self.webhooks.committed if self.webhooks is not None else None,
            limits=backends.limits,
        )
        self.feeds: set[Feed] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        # A shared hub learns this node's subscriber counts from it (watchers).
        self.watcher_board = (
            WatcherBoard(self.hub, self.node_id) if isinstance(self.hub, RedisHub) else None
        )
        self._board_task: asyncio.Task[None] | None = None
        self._snapshot_frames: dict[str, Encoded] = {}
        self.metrics.watch_queues(self.queue_stats)
        if isinstance(schedule, RedisSchedule):
            self.metrics.watch_takeovers(schedule.takeovers)
        if isinstance(self.hub, RedisHub):
            self.hub.on_reconnect = self.restore
            channels = self.hub.channels
            self.metrics.watch_channels(lambda: channels.received, channels.subscribed)
        self.draining = False

    async def start(self) -> None:
        await self.hub.start()
        if self.webhooks is not None:
            await self.webhooks.start()
        await self.poller.start()
        self._heartbeat = asyncio.create_task(self.heartbeat(), name="pollcast-heartbeat")
        if self.watcher_board is not None:
            self._board_task = asyncio.create_task(
                self.watcher_board.run(), name="pollcast-watcher-counts"
            )

    async def heartbeat(self) -> None:
        """Every ``heartbeat_s``, wake every idle stream so it sends a ping.

        One timer for the whole gateway instead of one per subscriber per
        wait: at 10,000 subscribers the per-wait timers and futures were the
        garbage collector's main work.
        """
        while True:
            await asyncio.sleep(self.config.server.heartbeat_s)
            for feed in list(self.feeds):
                feed.queue.wake()

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.poller.close()
        if self._board_task is not None:
            await cancel_and_wait(self._board_task)
        if self.watcher_board is not None:
            await self.watcher_board.withdraw()
        if self.webhooks is not None:
            await self.webhooks.close()
        for client in self.http.values():
            await client.aclose()
        await self.hub.close()

    async def restore(self) -> None:
        """After a reconnect to the store: schedule and watch again, from this node's
        own memory, every task it has subscribers or watches for, and end the
        backoff of the poller loops that failed while the store was away.

        A store restarted without persistence has lost its schedules and
        watches; nothing else would poll these tasks again. Adding is
        idempotent across nodes (``Schedule.add`` keeps what is there).
        """
        self._snapshot_frames.clear()  # a new epoch may reuse seqs
        poller = self.poller
        wall = self.clock.wall()
        watched = set(poller.watching)
        stored = {watch.task for watch in await self.hub.watches()} if watched else set()
        for task in [*poller.followers, *(watched - set(poller.followers))]:
            key = TaskKey.parse(task)
            lane = poller.lanes.get(key.provider)
            snapshot = await self.hub.snapshot(task)
            if lane is None or (snapshot is not None and snapshot.terminal):
                continue
            known = lane.tasks.get(task)
            deadline = known.deadline_at if known is not None else None
            keep = FOREVER if task in watched else wall + self.config.polling.grace_s
            if task in watched and task not in stored:
                await self.hub.put_watch(Watch(task=task, created_at=wall, deadline_at=deadline))
            if await poller.schedule.add(
                key.provider, lane.new_entry(task, deadline), keep_until=keep
            ):
                log.info("scheduled %s again after the store lost it", task)
                lane.wake()
        # The store answers again: loops that failed while it was away need not
        # sit out the rest of their backoff.
        poller.retry_now()

    async def ready(self) -> bool:
        return await self.readiness() is None

    async def readiness(self) -> str | None:
        """Why this node should not take traffic now (``/readyz``), or ``None``."""
        if self.draining:
            return "draining"
        problems = self.poller.problems()
        if problems:
            return "; ".join(problems)
        try:
            if await self.hub.ready():
                return None
        except BackendError:
            return "backend unavailable"
        # Only the hub's own description: a driver's error text may carry a URL.
        fault = self.hub.fault
        return f"backend unavailable: {fault}" if fault else "backend unavailable"

    def drain(self) -> None:
        """Stop taking streams; every open feed ends with a ``server_draining`` notice."""
        if self.draining:
            return
        self.draining = True
        log.info("draining %d open stream(s)", len(self.feeds))
        for feed in list(self.feeds):
            feed.queue.close(CloseReason.DRAINING)

    def key(self, provider: str, task_id: str) -> TaskKey:
        """Validate a task key against the wire rules and the provider's own.

        Raises:
            InvalidTaskKey, UnknownProvider: with a precise message.
        """
        key = TaskKey.of(provider, task_id)
        self.poller.check(key)
        return key

    def check_task_count(self, count: int, scope: TaskScope) -> None:
        """The one rule on how many tasks one stream, one subscriber token or one
        WebSocket connection may name (``server.max_tasks_per_stream``; for a
        connection, ``server.max_tasks_per_ws``).

        Raises:
            TooManyTasks: ``count`` is over the scope's limit.
        """
        server = self.config.server
        if scope == "connection":
            if count > server.max_tasks_per_ws:
                raise TooManyTasks(
                    f"this connection already follows {server.max_tasks_per_ws} tasks; "
                    "unsubscribe first",
                    field="tasks",
                )
            return
        limit = server.max_tasks_per_stream
        if count > limit:
            raise TooManyTasks(
                f"{count} tasks in one {scope}; the limit is {limit}",
                field="tasks" if scope == "stream" else None,
            )

    def parse_key(self, text: str) -> TaskKey:
        key = TaskKey.parse(text)
        self.poller.check(key)
        return key

    async def check_webhook(self, target: WebhookTarget) -> None:
        """Refuse a webhook this gateway will not deliver to.

        Raises:
            InputError: webhooks are off (no ``[webhooks] secret``).
            InvalidWebhook: the URL breaks the rules (scheme, allow-list, address).
        """
        if self.webhooks is None:
            raise InputError(
                "webhooks are not enabled on this gateway (its [webhooks] secret is not set)",
                field="webhook",
            )
        await self.webhooks.check(target)

    async def register_webhook(self, key: TaskKey, target: WebhookTarget) -> None:
        """Deliver ``key``'s events to ``target`` (checked with :meth:`check_webhook`)."""
        if self.webhooks is not None:
            await self.webhooks.register(str(key), target)

    async def drop_webhook(self, key: TaskKey) -> bool:
        return self.webhooks is not None and await self.webhooks.unregister(str(key))

    async def snapshot(self, key: TaskKey, *, may_poll: bool) -> Event:
        """The task's current snapshot.

        With ``may_poll``, a task never observed is polled once (shared) first;
        without it, the stored snapshot, or ``unknown`` when nothing is stored.
        """
        if may_poll:
            return await self.poller.observe_now(key)
        name = str(key)
        return await self.hub.snapshot(name) or tracker.initial_snapshot(name, self.clock.wall())

    async def history(self, key: TaskKey, after: int, limit: int) -> HistoryPage:
        """A page of ``key``'s kept events after seq ``after`` (the store only: no poll).

        Raises:
            UnknownTask: the store does not hold the task and nothing polls it.
        """
        name = str(key)
        page = await self.hub.history_page(name, after, limit)
        if page.known or name in self.poller.lane(key.provider).tasks:
            return page
        # Watched (perhaps through another node) but not observed yet: an empty page.
        if any(watch.task == name for watch in await self.hub.watches()):
            return page
        raise UnknownTask(f"{key} is not known to this gateway", field="task")

    async def watchers(self, task: str) -> int:
        """Open subscriptions to ``task``, cluster-wide where the hub is shared."""
        return (await self.hub.watcher_counts([task], self.node_id))[task]

    async def list_tasks(
        self,
        *,
        provider: str | None,
        state: State | None,
        after: str | None,
        limit: int,
    ) -> TaskPage:
        """A page of the tasks followed (watched, or with open subscriptions)."""
        if provider is not None:
            self.poller.lane(provider)  # UnknownProvider (404) for one not configured
        return await list_tasks(
            self.hub, self.node_id, provider=provider, state=state, after=after, limit=limit
        )

    def is_watched(self, task: str) -> bool:
        """Whether this node watches ``task`` (registered with ``POST /v1/tasks``, not ended)."""
        return task in self.poller.watching

    async def watch(
        self, key: TaskKey, *, deadline_s: float | None, webhook: WebhookTarget | None
    ) -> Event:
        """Follow ``key`` until it ends, subscribers or not; its snapshot after one
        (shared) poll.

        A webhook is registered before that first poll, so that the poll's
        events are delivered to it too.
        """
        if webhook is not None:
            await self.register_webhook(key, webhook)
        await self.poller.watch(key, deadline_s)
        return await self.poller.observe_now(key)

    async def unwatch(self, key: TaskKey) -> bool:
        """Stop following ``key`` (and drop its webhook); whether either was there."""
        had_webhook = await self.drop_webhook(key)
        return await self.poller.unwatch(key) or had_webhook

    async def is_known(self, key: TaskKey) -> bool:
        """Whether ``key`` is scheduled here or stored: reading it starts no polling."""
        name = str(key)
        return name in self.poller.lane(key.provider).tasks or (
            await self.hub.snapshot(name) is not None
        )

    def describe_providers(self) -> list[dict[str, object]]:
        """Each configured provider's policy, with how many tasks and requests it has."""
        tracked = self.poller.tracked()
        return [
            {
                **rt.describe(),
                "tasks_polled": tracked.get(name, 0),
                "requests_sent": self.poller.lane(name).requests_sent,
            }
            for name, rt in self.runtimes.items()
        ]

    async def watched_tasks(self) -> set[str]:
        """Every task the cluster watches (the stored watches)."""
        return {watch.task for watch in await self.hub.watches()}

    def open_feed(self, stream_kind: str) -> Feed:
        feed = Feed(self, self.config.server.queue_size, stream_kind)
        self.feeds.add(feed)
        return feed

    def snapshot_frame(self, snapshot: Event) -> Encoded:
        """The ``snapshot`` message for ``snapshot``, encoded once per task and seq
        however many subscribers join (a seq names exactly one state)."""
        cached = self._snapshot_frames.get(snapshot.task)
        if cached is not None and cached.event.seq == snapshot.seq and snapshot.seq > 0:
            return cached
        frame = Encoded(tracker.as_snapshot(snapshot))
        frames = self._snapshot_frames
        frames[snapshot.task] = frame
        if len(frames) > 4096:
            del frames[next(iter(frames))]
        return frame

    def notice(self, current: Event | None, task: str, code: str, message: str) -> Encoded:
        return Encoded(
            tracker.notice(current, task=task, code=code, message=message, now=self.clock.wall())
        )


# The last message of a stream whose queue was closed under it, by reason.
CLOSING_MESSAGES = {
    CloseReason.DRAINING: "this server is shutting down; reconnect to resume",
    CloseReason.OVERFLOW: "this stream fell too far behind; reconnect to resume",
    CloseReason.BACKEND_LOST: "the state backend is unavailable; reconnect to resume",
    CloseReason.TOKEN_EXPIRED: "the subscriber token expired",
    CloseReason.WRITE_FAILED: "writing to this connection failed; reconnect to resume",
}


class Feed:
    """One subscriber's tasks: catch-up then live, in seq order, without duplicates."""

    __slots__ = (
        "_expiry",
        "closed",
        "finished",
        "following",
        "gateway",
        "keys",
        "queue",
        "seqs",
        "stream_kind",
    )

    def __init__(self, gateway: Gateway, queue_size: int, stream_kind: str = "sse") -> None:
        self.gateway = gateway
        self.queue = SubscriberQueue(queue_size, stats=gateway.queue_stats)
        # "sse", "sse_multi", "ndjson" or "ws": the subscribers metric's ``transport`` label.
        self.stream_kind = stream_kind
        gateway.metrics.subscribers.labels(stream_kind).inc()
        self.seqs: dict[str, int] = {}  # task → last seq delivered
        self.keys: dict[str, TaskKey] = {}
        self.finished: set[str] = set()  # tasks whose terminal event was delivered
        self.following: set[str] = set()  # tasks this feed keeps polled (``may_poll``)
        self.closed = False
        self._expiry: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def done(self) -> bool:
        """Every task in the feed has delivered its terminal event."""
        return bool(self.keys) and len(self.finished) == len(self.keys)

    async def add(self, key: TaskKey, since: int | None = None, *, may_poll: bool) -> list[Encoded]:
        """Subscribe to ``key``; the events to send first (snapshot, or what was missed).

        ``since`` is the last seq the client holds (``Last-Event-ID``): the
        missed events are replayed; if history no longer reaches back, a
        ``history_gap`` notice and a snapshot take their place.

        ``may_poll`` (the principal's decision, :func:`gateway.web.auth.may_poll`):
        whether this subscription makes the poller poll the task and keeps it
        polled while open. Without it the feed reads only what is stored and
        the events that others' polling publishes.
        """
        gw = self.gateway
        name = str(key)
        if name in self.keys:
            return []
        self.keys[name] = key
        gw.hub.attach(self.queue, [name])
        try:
            await gw.hub.attached([name])
            if may_poll:
                self.following.add(name)
                await gw.poller.follow(key)
            current = await gw.hub.snapshot(name)
            items = await self._catch_up(name, current, since)
        except BaseException:
            self._drop(name)
            raise
        latest = max(
            [current.seq if current is not None else 0]
            + [enc.event.seq for enc in items if enc.counts_for_resume]
        )
        self.seqs[name] = latest
        if current is not None and current.terminal and latest >= current.seq:
            self.finished.add(name)
        return items

    async def _catch_up(self, name: str, current: Event | None, since: int | None) -> list[Encoded]:
        gw = self.gateway
        snapshot = current or tracker.initial_snapshot(name, gw.clock.wall())
        if since is None:
            return [gw.snapshot_frame(snapshot)]
        if since == snapshot.seq:
            return []
        if since > snapshot.seq:
            return [
                gw.notice(
                    current,
                    name,
                    "resync",
                    f"resume point {since} is ahead of this task's latest seq "
                    f"{snapshot.seq}; starting again from the current snapshot",
                ),
                gw.snapshot_frame(snapshot),
            ]
        missed = await gw.hub.history(name, since)
        if missed is None:
            return [
                gw.notice(
                    current,
                    name,
                    "history_gap",
                    f"events after seq {since} are no longer kept; here is the current snapshot",
                ),
                gw.snapshot_frame(snapshot),
            ]
        return missed

    def accept(self, enc: Encoded) -> bool:
        """Whether a live event is news to this subscriber (and note it as delivered)."""
        name = enc.event.task
        last = self.seqs.get(name)
        if last is None:
            return False
        if not enc.counts_for_resume:
            if enc.event.code == "resync":
                # A new epoch of the task's history (RedisHub): its seqs start over.
                self.seqs[name] = 0
                self.finished.discard(name)
                return True
            return name not in self.finished
        if enc.event.seq <= last:
            return False
        self.seqs[name] = enc.event.seq
        if enc.event.terminal:
            self.finished.add(name)
        return True

    def remove(self, names: Iterable[str]) -> list[str]:
        removed = [name for name in names if name in self.keys]
        for name in removed:
            self._drop(name)
        return removed

    def _drop(self, name: str) -> None:
        key = self.keys.pop(name, None)
        self.seqs.pop(name, None)
        self.finished.discard(name)
        self.gateway.hub.detach(self.queue, [name])
        if key is not None and name in self.following:
            self.following.discard(name)
            self.gateway.poller.unfollow(key)

    def close(self) -> None:
        """Synchronous on purpose: it runs while the stream is being cancelled."""
        if self.closed:
            return
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        for name in list(self.keys):
            self._drop(name)
        self.gateway.feeds.discard(self)
        self.gateway.metrics.subscribers.labels(self.stream_kind).dec()

    def expire_at(self, wall_s: float) -> None:
        """End the feed at ``wall_s`` (epoch s) with a last ``token_expired`` notice.

        Set from the subscriber token's ``exp``: a stream must not outlive
        the credential that opened it.
        """
        delay = max(0.0, wall_s - self.gateway.clock.wall())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, self.queue.close, CloseReason.TOKEN_EXPIRED
        )

    def closing_notice(self, reason: CloseReason) -> bytes | None:
        """The last message's JSON when the queue was closed under us."""
        task = next(iter(self.keys), "")
        if not task:
            return None
        return self.gateway.notice(None, task, reason.value, CLOSING_MESSAGES[reason]).json
