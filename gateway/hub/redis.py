"""The ``redis`` hub: state, history and fan-out shared by every gateway node.

Keys (``P`` is the configured prefix; ``{…}`` is a Redis Cluster hash tag, so
all of a task's keys live in one slot)::

    P:{<task>}:snap   hash   seq, body — the latest state/progress event
    P:{<task>}:hist   stream one entry per event, entry id ``0-<seq>`` (capped)
    P:{<task>}:lease  string fencing token of the claim being polled (RedisSchedule)
    P:watches         hash   task → watch
    P:incarnation     string id of this store's contents, set once (SET NX)
    P:events          channel every committed event and every notice

A commit is one Lua script per event: it checks that the seq follows the
stored one (so two nodes can never both publish seq N) and, when the poller
passes the claim's token, that the task's lease key still holds it (so a
node that was paused past its lease cannot write an old reply over newer
state); then it stores the snapshot, appends to the stream, sets the
retention TTL once terminal, and publishes — all atomically, so every node
receives a task's events in seq order.

Each node listens on ``P:events`` and fans out to its local subscribers. A
gap in a task's seqs (a message lost while the connection to Redis was
down) is filled from the stream before anything newer is delivered.

Epochs. A Redis restarted without persistence (or with the last second of
an ``everysec`` AOF lost) forgets tasks, or their latest events, while the
nodes still remember seqs they delivered; new events then start again from
a lower seq. The listener notices — the incarnation id changed, or a task's
stored seq is behind what this node delivered — and begins a new epoch for
those tasks: local subscribers get a ``resync`` notice (their feeds forget
the old seqs) and the stored snapshot, and ``on_reconnect`` lets the
gateway schedule again what its subscribers and watches need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.aio import cancel_and_wait, raise_if_cancelled
from gateway.core import tracker
from gateway.core.model import Event, EventKind
from gateway.core.sse import Encoded
from gateway.exceptions import BackendError, SeqConflict
from gateway.hub.base import HistoryPage, Hub, Watch, page_of
from gateway.hub.fanout import FanOut
from gateway.hub.queue import CloseReason
from gateway.hub.redis_watchers import WATCHERS_SET, WATCHERS_SUM, AsyncScript

__all__ = ["RedisHub", "connect", "task_key"]

log = logging.getLogger("pollcast.hub.redis")

_event_decoder = msgspec.json.Decoder(Event)
_watch_decoder = msgspec.json.Decoder(Watch)
_encoder = msgspec.json.Encoder()

# How often the listener checks, while idle, that the store is still the one it knew.
INCARNATION_CHECK_S = 2.0

# KEYS: snap, hist, lease   ARGV: seq, body, ttl_s (0: keep), maxlen, channel, token
# -1: committed; -2: refused, the claim's token no longer holds the lease; else the stored seq
_COMMIT = """
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[6] then
  return -2
end
local current = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local seq = tonumber(ARGV[1])
if current ~= seq - 1 then
  return current
end
redis.call('HSET', KEYS[1], 'seq', seq, 'body', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '0-' .. seq, 'b', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', ARGV[5], ARGV[2])
return -1
"""


# How long a call waits for a free pooled connection before it fails (503).
POOL_WAIT_S = 2.0


def connect(url: str, *, max_connections: int = 1000) -> aioredis.Redis:
    """A client whose calls are bounded in time: a slow or dead Redis fails a
    call, it never stalls the event loop's other work.

    The pool blocks for at most :data:`POOL_WAIT_S` when all of its
    ``max_connections`` are in use: redis-py's default asyncio pool raises
    ``MaxConnectionsError`` at once instead, so a burst of reconnecting
    streams beyond its size would fail rather than wait a moment.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_timeout=3.0,
        socket_connect_timeout=2.0,
        health_check_interval=5,
        retry_on_timeout=False,
    )
    return aioredis.Redis.from_pool(pool)


def task_key(prefix: str, task: str, what: str) -> str:
    """A key of ``task``: all of them share the task's hash tag, hence one cluster slot."""
    return f"{prefix}:{{{task}}}:{what}"


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """redis-py errors become :class:`BackendError` at this boundary."""
    try:
        yield
    except RedisError as exc:
        raise BackendError(f"redis: {what} failed ({type(exc).__name__})") from exc
    except OSError as exc:
        raise BackendError(f"redis: {what} failed ({type(exc).__name__})") from exc


class RedisHub(Hub):
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "pollcast",
        history_limit: int = 256,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.history_limit = history_limit
        self.channel = f"{prefix}:events"
        self.fanout = FanOut()
        self._commit = client.register_script(_COMMIT)
        self._listener: asyncio.Task[None] | None = None
        self._restoring: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._last: dict[str, int] = {}  # task → last seq fanned out here
        self._incarnation: bytes | str | None = None  # the store's id as this node knows it
        # Called after every reconnect (the store may have lost schedules and watches).
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self.refused = 0  # events not committed: the claim had lapsed (fencing)
        self.resyncs = 0  # tasks whose history began a new epoch on this node

    def _snap(self, task: str) -> str:
        return task_key(self.prefix, task, "snap")

    def _hist(self, task: str) -> str:
        return task_key(self.prefix, task, "hist")

    def _lease(self, task: str) -> str:
        return task_key(self.prefix, task, "lease")

    @property
    def _incarnation_key(self) -> str:
        return f"{self.prefix}:incarnation"

    @property
    def _watches(self) -> str:
        return f"{self.prefix}:watches"

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="pollcast-redis-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._listening.wait()

    async def close(self) -> None:
        self.fanout.close_all(CloseReason.DRAINING)
        if self._listener is not None:
            await cancel_and_wait(self._listener)
        if self._restoring is not None:
            await cancel_and_wait(self._restoring)
        await self.redis.aclose()

    async def ready(self) -> bool:
        if not self._listening.is_set():
            return False
        try:
            async with asyncio.timeout(1.0):
                return bool(await self.redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def _listen(self) -> None:
        """Receive every node's events; reconnect with backoff; fill gaps after."""
        delay = 0.1
        first = True
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                # Subscribed first: whatever is committed from now on reaches us,
                # so checking the store now leaves nothing in between.
                lost = await self._check_incarnation()
                self._listening.set()
                if not first:
                    log.info("reconnected to redis; catching up")
                    await self._catch_up(lost=lost)
                    self._restore()
                first = False
                delay = 0.1
                checked = time.monotonic()
                while True:
                    raise_if_cancelled()  # redis-py may have swallowed a cancel
                    message = await pubsub.get_message(timeout=INCARNATION_CHECK_S)
                    if message is not None and message["type"] == "message":
                        await self._receive(message["data"])
                    if time.monotonic() - checked >= INCARNATION_CHECK_S:
                        checked = time.monotonic()
                        if await self._check_incarnation():  # flushed under us
                            await self._catch_up(lost=True)
                            self._restore()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except (RedisError, OSError, BackendError) as exc:
                if self._listening.is_set():
                    log.warning("lost the redis event channel (%s); retrying", type(exc).__name__)
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise_if_cancelled()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _check_incarnation(self) -> bool:
        """Whether the store is not the one this node knew (it lost its contents)."""
        async with translated("incarnation"):
            current = await self.redis.get(self._incarnation_key)
            if current is None:  # a new store: the first node to look names it
                await self.redis.set(self._incarnation_key, uuid.uuid4().hex, nx=True)
                current = await self.redis.get(self._incarnation_key)
        known, self._incarnation = self._incarnation, current
        if known is not None and current != known:
            log.warning("the redis store lost its contents (restarted without persistence?)")
            return True
        return False

    def _restore(self) -> None:
        """Run ``on_reconnect`` beside the listener: events keep flowing meanwhile.
        One still running is for a store that is gone again: it starts over."""
        if self.on_reconnect is None:
            return
        if self._restoring is not None:
            self._restoring.cancel()
        self._restoring = asyncio.create_task(self._run_restore(self.on_reconnect))

    @staticmethod
    async def _run_restore(restore: Callable[[], Awaitable[None]]) -> None:
        try:
            await restore()
        except BackendError as exc:
            log.warning("could not schedule again after a reconnect (%s)", exc)

    async def _receive(self, data: bytes) -> None:
        event = _event_decoder.decode(data)
        task = event.task
        if self.fanout.subscriber_count(task) == 0:
            self._last.pop(task, None)
            return
        if event.event is EventKind.NOTICE:
            self.fanout.deliver(Encoded(event))
            return
        last = self._last.get(task)
        if last is not None and event.seq <= last:
            # Old news — or the store forgot this task and its seqs start over.
            if await self._stored_seq(task) < last:
                await self._resync(task)
            return
        if last is not None and event.seq > last + 1:
            missed = await self.history(task, last) or []
            for enc in missed:
                if enc.event.seq < event.seq:
                    self.fanout.deliver(enc)
        self._last[task] = event.seq
        self.fanout.deliver(Encoded(event))

    async def _stored_seq(self, task: str) -> int:
        async with translated("snapshot read"):
            raw = await self.redis.hget(self._snap(task), "seq")
        return int(raw or 0)

    async def _resync(self, task: str) -> None:
        """A new epoch of ``task`` here: a ``resync`` notice, then the stored state.

        The notice makes every feed forget the seqs it delivered
        (``Feed.accept``), so the new epoch's seqs, lower or equal, are news.
        """
        self.resyncs += 1
        current = await self.snapshot(task)
        self.fanout.deliver(
            Encoded(
                tracker.notice(
                    current,
                    task=task,
                    code="resync",
                    message="the state backend lost this task's history; "
                    "seqs start again from the state that follows",
                    now=time.time(),
                )
            )
        )
        self._last.pop(task, None)
        if current is not None:
            self._last[task] = current.seq
            self.fanout.deliver(Encoded(current))

    async def _catch_up(self, *, lost: bool = False) -> None:
        """After a reconnect: deliver what local subscribers may have missed, or
        begin a new epoch for the tasks whose history the store lost."""
        for task in self.fanout.tasks():
            last = self._last.get(task, 0)
            if lost or await self._stored_seq(task) < last:
                await self._resync(task)
                continue
            missed = await self.history(task, last) or []
            for enc in missed:
                self.fanout.deliver(enc)
                self._last[task] = enc.event.seq

    # -- state --------------------------------------------------------------

    async def snapshot(self, task: str) -> Event | None:
        async with translated("snapshot read"):
            body = await self.redis.hget(self._snap(task), "body")
        return None if body is None else _event_decoder.decode(body)

    async def commit(
        self,
        events: Sequence[Event],
        *,
        terminal_ttl_s: float,
        leases: Mapping[str, str] | None = None,
    ) -> list[Encoded]:
        encoded = [Encoded(event) for event in events]
        leases = leases or {}
        async with translated("commit"), self.redis.pipeline(transaction=False) as pipe:
            for enc in encoded:
                event = enc.event
                ttl = max(1, round(terminal_ttl_s)) if event.terminal else 0
                await self._commit(
                    keys=[self._snap(event.task), self._hist(event.task), self._lease(event.task)],
                    args=[
                        event.seq,
                        enc.json,
                        ttl,
                        self.history_limit,
                        self.channel,
                        leases.get(event.task, ""),
                    ],
                    client=pipe,
                )
            results: list[Any] = await pipe.execute()
        committed: list[Encoded] = []
        for enc, result in zip(encoded, results, strict=True):
            if int(result) == -2:
                self.refused += 1
                log.warning(
                    "refused a commit of %s: this node's claim lapsed and another took it",
                    enc.event.task,
                )
            elif int(result) != -1:
                raise SeqConflict(
                    f"{enc.event.task}: seq {enc.event.seq} does not follow {int(result)}"
                )
            else:
                committed.append(enc)
        return committed

    async def announce(self, event: Event) -> None:
        if event.event is not EventKind.NOTICE:
            raise ValueError("announce() is for notices; state changes go through commit()")
        async with translated("publish"):
            await self.redis.publish(self.channel, _encoder.encode(event))

    async def history(self, task: str, after_seq: int) -> list[Encoded] | None:
        async with translated("history read"), self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self._snap(task), "seq")
            pipe.xrange(self._hist(task), min=f"(0-{after_seq}", max="+")
            latest_raw, entries = await pipe.execute()
        latest = int(latest_raw or 0)
        if after_seq >= latest:
            return []
        events = [Encoded(_event_decoder.decode(fields[b"b"])) for _, fields in entries]
        if not events or events[0].event.seq > after_seq + 1:
            return None
        return events

    # -- fan-out ------------------------------------------------------------

    # -- watches ------------------------------------------------------------

    async def put_watch(self, watch: Watch) -> None:
        async with translated("watch write"):
            await self.redis.hset(self._watches, watch.task, _encoder.encode(watch))

    async def drop_watch(self, task: str) -> bool:
        async with translated("watch delete"):
            return bool(await self.redis.hdel(self._watches, task))

    async def watches(self) -> list[Watch]:
        async with translated("watch read"):
            raw = await self.redis.hgetall(self._watches)
        return [_watch_decoder.decode(body) for body in raw.values()]

    async def purge(self, now: float) -> int:
        """Nothing to do: terminal tasks carry a TTL and Redis expires them."""
        return 0

    # -- history pages and watcher counts -------------------------------------

    async def history_page(self, task: str, after: int, limit: int) -> HistoryPage:
        async with translated("history read"), self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self._snap(task), "seq")
            pipe.xrange(self._hist(task), min=f"(0-{after}", max="+", count=limit)
            latest_raw, entries = await pipe.execute()
        kept = [Encoded(_event_decoder.decode(fields[b"b"])) for _, fields in entries]
        return page_of(
            kept,
            after=after,
            limit=limit,
            latest=int(latest_raw or 0),
            known=latest_raw is not None,
        )

    async def snapshots(self, tasks: Sequence[str]) -> dict[str, Event | None]:
        """Many snapshots in one round trip."""
        if not tasks:
            return {}
        async with translated("snapshot read"), self.redis.pipeline(transaction=False) as pipe:
            for task in tasks:
                pipe.hget(self._snap(task), "body")
            bodies: list[Any] = await pipe.execute()
        return {
            task: None if body is None else _event_decoder.decode(body)
            for task, body in zip(tasks, bodies, strict=True)
        }

    def _watchers_key(self, task: str) -> str:
        return task_key(self.prefix, task, "watchers")

    @property
    def _subscribed(self) -> str:
        return f"{self.prefix}:subscribed"

    def _watcher_script(self, name: str) -> AsyncScript:
        scripts: dict[str, AsyncScript] = self.__dict__.setdefault("_watcher_scripts", {})
        if name not in scripts:
            source = WATCHERS_SET if name == "set" else WATCHERS_SUM
            scripts[name] = self.redis.register_script(source)
        return scripts[name]

    async def publish_watchers(self, node: str, counts: Mapping[str, int], ttl_s: float) -> None:
        """Each task's ``watchers`` hash holds ``node → count:expires_ms`` (Redis time).

        A field whose expiry passed is a node that stopped reporting (it
        died): readers ignore and remove it. Tasks with a count go into the
        ``subscribed`` index that the task listing walks.
        """
        if not counts:
            return
        ttl_ms = max(1, round(ttl_s * 1000))
        script = self._watcher_script("set")
        async with translated("watcher counts"), self.redis.pipeline(transaction=False) as pipe:
            for task, count in counts.items():
                await script(
                    keys=[self._watchers_key(task)], args=[node, count, ttl_ms], client=pipe
                )
                if count > 0:
                    pipe.zadd(self._subscribed, {task: 0})
            await pipe.execute()

    async def watched_tasks(self) -> list[str]:
        """Tasks with subscribers here, or that some node reported subscribers
        for (their counts may since have dropped to 0)."""
        async with translated("watcher index"):
            members: list[Any] = await self.redis.zrange(self._subscribed, 0, -1)
        reported = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        return list(dict.fromkeys([*self.fanout.tasks(), *reported]))

    async def watcher_counts(self, tasks: Sequence[str], node: str) -> dict[str, int]:
        """The cluster-wide counts: this node's from memory, plus the other nodes'
        that still report."""
        if not tasks:
            return {}
        script = self._watcher_script("sum")
        async with translated("watcher counts"), self.redis.pipeline(transaction=False) as pipe:
            for task in tasks:
                await script(keys=[self._watchers_key(task)], args=[node], client=pipe)
            totals: list[Any] = await pipe.execute()
        counts = {
            task: int(total) + self.fanout.subscriber_count(task)
            for task, total in zip(tasks, totals, strict=True)
        }
        idle = [task for task, count in counts.items() if count <= 0]
        if idle:
            # A node re-adds its tasks on every heartbeat: a member removed
            # here while another node was adding it comes back with that beat.
            async with translated("watcher index"):
                await self.redis.zrem(self._subscribed, *idle)
        return counts
