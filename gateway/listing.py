"""The followed tasks, cluster-wide: the task listing and the watcher counts behind it.

A task is *followed* while it is watched (``POST /v1/tasks``, not ended) or
has open subscriptions (SSE, NDJSON, WebSocket) on some node. The listing
walks them in key order (see :mod:`gateway.core.listing` for the cursor).

Watcher counts: each node counts its own subscribers in memory
(:class:`~gateway.hub.fanout.FanOut`). Where the hub is shared (Redis), a
:class:`WatcherBoard` publishes this node's counts — the changed ones every
``every_s``, all of them every ``heartbeat_s`` — with an expiry of
``ttl_s``, so a node that dies stops counting within ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable

import msgspec

from gateway.core.listing import CURSOR_VERSION, ListCursor, encode_list_cursor
from gateway.core.model import Event, State
from gateway.exceptions import BackendError
from gateway.hub.base import Hub

__all__ = ["TaskPage", "TaskSummary", "WatcherBoard", "list_tasks"]

log = logging.getLogger("pollcast.listing")

# Candidates looked at per request at most: a selective ``state`` filter
# answers a short page (with a cursor) rather than reading every snapshot.
MAX_SCAN = 5000


class TaskSummary(msgspec.Struct):
    """One followed task in ``GET /v1/tasks``."""

    task: str
    watched: bool
    watchers: int
    state: State
    terminal: bool
    progress: int | None
    position: int | None
    seq: int
    updated_at: str | None


class TaskPage(msgspec.Struct):
    tasks: list[TaskSummary]
    next_cursor: str | None


def summary(task: str, snapshot: Event | None, *, watched: bool, watchers: int) -> TaskSummary:
    if snapshot is None:
        return TaskSummary(
            task=task,
            watched=watched,
            watchers=watchers,
            state=State.UNKNOWN,
            terminal=False,
            progress=None,
            position=None,
            seq=0,
            updated_at=None,
        )
    return TaskSummary(
        task=task,
        watched=watched,
        watchers=watchers,
        state=snapshot.state,
        terminal=snapshot.terminal,
        progress=snapshot.progress,
        position=snapshot.position,
        seq=snapshot.seq,
        updated_at=snapshot.updated_at,
    )


async def list_tasks(
    hub: Hub,
    node: str,
    *,
    provider: str | None,
    state: State | None,
    after: str | None,
    limit: int,
    max_scan: int = MAX_SCAN,
) -> TaskPage:
    """One page of the followed tasks with keys above ``after``, in key order."""
    watched = {watch.task for watch in await hub.watches()}
    followed = watched | set(await hub.watched_tasks()) | set(hub.fanout.tasks())
    if provider is not None:
        followed = {task for task in followed if task.startswith(provider + ":")}
    candidates = sorted(followed)
    start = bisect.bisect_right(candidates, after) if after is not None else 0
    listed: list[TaskSummary] = []
    position = start
    scanned = 0
    last: str | None = None
    while position < len(candidates) and len(listed) < limit and scanned < max_scan:
        chunk = candidates[position : position + min(limit - len(listed), max_scan - scanned)]
        position += len(chunk)
        scanned += len(chunk)
        snapshots = await hub.snapshots(chunk)
        counts = await hub.watcher_counts(chunk, node)
        for task in chunk:
            last = task
            if task not in watched and counts[task] <= 0:
                continue  # its subscribers left since the index was read
            snapshot = snapshots[task]
            item = summary(task, snapshot, watched=task in watched, watchers=counts[task])
            if state is not None and item.state is not state:
                continue
            listed.append(item)
    cursor = None
    if position < len(candidates) and last is not None:
        state_name = state.value if state is not None else None
        cursor = encode_list_cursor(
            ListCursor(v=CURSOR_VERSION, after=last, provider=provider, state=state_name)
        )
    return TaskPage(tasks=listed, next_cursor=cursor)


class WatcherBoard:
    """Publishes this node's subscriber counts to a shared hub."""

    def __init__(
        self,
        hub: Hub,
        node: str,
        *,
        every_s: float = 1.0,
        heartbeat_s: float = 10.0,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self.node = node
        self.every_s = every_s
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.clock = clock
        self.published: dict[str, int] = {}  # task → the count the hub holds for this node
        self.beat_at: float | None = None

    def due(self, now: float) -> dict[str, int]:
        """What to publish now: changed counts (0 for tasks left), or every
        count once a heartbeat is due."""
        fanout = self.hub.fanout
        current = {task: fanout.subscriber_count(task) for task in fanout.tasks()}
        if self.beat_at is None or now - self.beat_at >= self.heartbeat_s:
            out = dict(current)
        else:
            out = {task: n for task, n in current.items() if self.published.get(task) != n}
        for task in self.published:
            if task not in current:
                out[task] = 0
        return out

    async def step(self) -> None:
        now = self.clock()
        beat = self.beat_at is None or now - self.beat_at >= self.heartbeat_s
        out = self.due(now)
        if out:
            await self.hub.publish_watchers(self.node, out, self.ttl_s)
        for task, count in out.items():
            if count > 0:
                self.published[task] = count
            else:
                self.published.pop(task, None)
        if beat:
            self.beat_at = now

    async def run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.step()
            except Exception as exc:  # a failing step must not end the board
                if not failing:  # once per outage; the next step retries what is due
                    log.warning(
                        "could not publish subscriber counts (%s)",
                        exc,
                        exc_info=not isinstance(exc, BackendError),
                    )
                failing = True
            else:
                if failing:
                    log.info("publishing subscriber counts again")
                failing = False

    async def withdraw(self) -> None:
        """Take this node's counts back (it is stopping); best effort."""
        if not self.published:
            return
        try:
            await self.hub.publish_watchers(self.node, dict.fromkeys(self.published, 0), self.ttl_s)
        except BackendError as exc:
            log.warning("could not withdraw subscriber counts (%s)", exc)
        self.published.clear()
