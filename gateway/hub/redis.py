"""The ``redis`` hub: state, history and fan-out shared by every gateway node.

It runs on one Redis or on a Redis Cluster (:mod:`gateway.hub.client`).
Keys (``P`` is the configured prefix; ``{…}`` is a Redis Cluster hash tag, so
all of a task's keys live in one slot)::

    P:{<task>}:snap   hash   seq, body — the latest state/progress event
    P:{<task>}:hist   stream one entry per event, entry id ``0-<seq>`` (capped)
    P:{<task>}:lease  string fencing token of the claim being polled (RedisSchedule)
    P:{<task>}:watch  string the task's watch, if any
    P:{<task>}:ev     channel the task's committed events and notices
    P:{watches:<n>}   set    tasks with a watch, ``n`` = crc32(task) mod 16
    P:incarnation     string id of this store's contents, set once (SET NX)

A commit is one Lua script per event: it checks that the seq follows the
stored one (so two nodes can never both publish seq N) and, when the poller
passes the claim's token, that the task's lease key still holds it (so a
node that was paused past its lease cannot write an old reply over newer
state); then it stores the snapshot, appends to the stream, sets the
retention TTL once terminal, and publishes on the task's channel — all
atomically and all in the task's slot, so every node receives a task's
events in seq order.

Fan-out in proportion to what a node serves: a node subscribes to the
channels of the tasks it has local subscribers for (:mod:`gateway.hub.channels`:
sharded pub/sub on a cluster, one subscription per task, batched), so it
receives those tasks' events and no others. :meth:`RedisHub.attached`
waits until a new task's subscription is confirmed, so a subscriber reads
its snapshot only once every later event is sure to arrive. A gap in a
task's seqs (a message lost while a link was down) is filled from the
stream before anything newer is delivered.

Epochs. A Redis restarted without persistence (or with the last second of
an ``everysec`` AOF lost), or a cluster master whose replica took over
before it had the master's last writes, forgets tasks or their latest
events while the nodes still remember seqs they delivered; new events then
start again from a lower seq. The listener notices — the incarnation id
changed (a single Redis lost everything), or a task's stored snapshot is
gone or behind what this node delivered, or the store holds another event
under the last seq delivered here (the one delivered was lost and the poller
committed that seq again; checked per task, so a cluster shard that lost its
keys affects its own tasks only) — and begins a new
epoch for those tasks: local subscribers get a ``resync`` notice (their
feeds forget the old seqs) and the stored snapshot, and ``on_reconnect``
lets the gateway schedule again what its subscribers and watches need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
from redis.exceptions import RedisClusterException, RedisError

from gateway.aio import Batcher, cancel_and_wait, raise_if_cancelled
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.core import tracker
from gateway.core.model import Event, EventKind
from gateway.core.policy import RetryDelay
from gateway.core.sse import Encoded
from gateway.exceptions import BackendError, SeqConflict
from gateway.hub.base import HistoryPage, Hub, Watch, page_of
from gateway.hub.channels import LinkLost, TaskChannels
from gateway.hub.client import (
    POOL_WAIT_S,
    Client,
    Script,
    connect,
    is_cluster,
    run_scripts,
    translated,
)
from gateway.hub.fanout import FanOut
from gateway.hub.queue import CloseReason, SubscriberQueue
from gateway.hub.redis_watchers import WATCHERS_SET, WATCHERS_SUM

__all__ = [
    "POOL_WAIT_S",
    "WATCH_SHARDS",
    "RedisHub",
    "connect",
    "task_key",
    "translated",
]

log = logging.getLogger("pollcast.hub.redis")

# How often a failing restore (after a reconnect or a failover) is tried: ~1 min.
RESTORE_ATTEMPTS = 32

_WATCHERS_SET = Script(WATCHERS_SET)
_WATCHERS_SUM = Script(WATCHERS_SUM)

_event_decoder = msgspec.json.Decoder(Event)
_watch_decoder = msgspec.json.Decoder(Watch)
_encoder = msgspec.json.Encoder()

# What a lost or refused link raises (anything else is logged with its traceback).
_LINK_ERRORS = (RedisError, RedisClusterException, OSError, BackendError, LinkLost)

# How often the listener checks, while idle, that the store is still the one it knew.
INCARNATION_CHECK_S = 2.0
# How long a new subscriber waits for its task's subscription to be confirmed.
SUBSCRIBE_WAIT_S = 3.0
# Watch index shards: listing the watches reads this many keys.
WATCH_SHARDS = 16
# Tasks read per pipeline when catching up after a reconnect.
CATCH_UP_BATCH = 200

# KEYS: snap, hist, lease   ARGV: seq, body, ttl_s (0: keep), maxlen, channel, token, publish
# -1: committed; -2: refused, the claim's token no longer holds the lease; else the stored seq
_COMMIT = Script("""
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
redis.call(ARGV[7], ARGV[5], ARGV[2])
return -1
""")


class _Head(NamedTuple):
    """The last event of a task fanned out here: its seq, and a digest of its JSON
    that tells it from another event stored under the same seq in a new epoch."""

    seq: int
    digest: int

    @classmethod
    def of(cls, enc: Encoded) -> _Head:
        return cls(enc.event.seq, zlib.crc32(enc.json))


class _Read(NamedTuple):
    """What the store holds of a task, from a given seq on."""

    latest: int  # the stored seq (0: the task is not stored)
    head: int | None  # digest of the stored event at the given seq, if still kept
    after: list[Encoded] | None  # the events after it (``None``: not all kept)


def _diverged(head: _Head | None, stored: _Read) -> bool:
    """Whether the store holds another event than ``head`` under its seq."""
    return head is not None and stored.head is not None and stored.head != head.digest


def task_key(prefix: str, task: str, what: str) -> str:
    """A key of ``task``: all of them share the task's hash tag, hence one cluster slot."""
    return f"{prefix}:{{{task}}}:{what}"


class RedisHub(Hub):
    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "pollcast",
        history_limit: int = 256,
        linger_s: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.redis = client
        self.clock = clock
        self.prefix = prefix
        self.history_limit = history_limit
        self.fanout = FanOut()
        self.channels = TaskChannels(client, prefix, linger_s=linger_s, monotonic=clock.monotonic)
        self._listener: asyncio.Task[None] | None = None
        self._restoring: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._order = asyncio.Lock()  # live messages and catch-up take turns
        self._last: dict[str, _Head] = {}  # task → last event fanned out here
        self._incarnation: bytes | str | None = None  # the store's id as this node knows it
        # Called after every reconnect (the store may have lost schedules and watches).
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self.refused = 0  # events not committed: the claim had lapsed (fencing)
        self.resyncs = 0  # tasks whose history began a new epoch on this node
        # Snapshot reads asked for in one pass of the loop share a pipeline.
        self._snapshot_reads: Batcher[str, Event | None] = Batcher(self._read_snapshots, share=True)

    @property
    def received(self) -> int:
        """Event messages this node's listener received from Redis."""
        return self.channels.received

    def _snap(self, task: str) -> str:
        return task_key(self.prefix, task, "snap")

    def _hist(self, task: str) -> str:
        return task_key(self.prefix, task, "hist")

    def _lease(self, task: str) -> str:
        return task_key(self.prefix, task, "lease")

    def _watch(self, task: str) -> str:
        return task_key(self.prefix, task, "watch")

    def _watch_index(self, shard: int) -> str:
        return f"{self.prefix}:{{watches:{shard}}}"

    def _watch_shard(self, task: str) -> str:
        return self._watch_index(zlib.crc32(task.encode()) % WATCH_SHARDS)

    @property
    def _incarnation_key(self) -> str:
        return f"{self.prefix}:incarnation"

    @property
    def _legacy_watches(self) -> str:
        """Where watches were kept before they moved to per-task keys (read, then emptied)."""
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
        await self.channels.close()
        await self.redis.aclose()

    async def ready(self) -> bool:
        if not self._listening.is_set():
            return False
        try:
            async with asyncio.timeout(1.0), translated("ping"):
                return bool(await self.redis.ping())
        except (BackendError, TimeoutError):
            return False

    # -- subscriptions --------------------------------------------------------

    def attach(self, queue: SubscriberQueue, tasks: Iterable[str]) -> None:
        tasks = list(tasks)
        self.fanout.attach(queue, tasks)
        for task in tasks:
            self.channels.want(task)

    def detach(self, queue: SubscriberQueue, tasks: Iterable[str]) -> None:
        tasks = list(tasks)
        self.fanout.detach(queue, tasks)
        for task in tasks:
            if not self.fanout.subscriber_count(task):
                self.channels.unwant(task)
                self._last.pop(task, None)

    async def attached(self, tasks: Iterable[str]) -> None:
        """Until this node's subscriptions to ``tasks`` are confirmed by Redis.

        Raises:
            BackendError: not within :data:`SUBSCRIBE_WAIT_S`.
        """
        try:
            await self.channels.live(tasks, SUBSCRIBE_WAIT_S)
        except TimeoutError:
            raise BackendError("redis: subscribing to a task's events timed out") from None

    # -- the listener -----------------------------------------------------------

    async def _listen(self) -> None:
        """Receive the events of this node's tasks; reconnect with backoff; catch up after."""
        delay = 0.1
        first = True
        while True:
            try:
                await self.channels.open()
                serving = asyncio.create_task(
                    self.channels.serve(self._receive, self._tick, self._recovered),
                    name="pollcast-redis-links",
                )
                try:
                    await self._settle(serving)
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
                    await serving
                finally:
                    await cancel_and_wait(serving)
            except asyncio.CancelledError:
                await self.channels.close()
                raise
            except Exception as exc:
                # redis-py may leak a transport's error (``AttributeError``, ``TypeError``)
                # from a connection torn down under it while the cluster's topology is
                # read again: whatever it is, this node must go on receiving events.
                expected = isinstance(exc, _LINK_ERRORS)
                if self._listening.is_set() or not expected:
                    log.warning(
                        "lost the redis event channels (%s); retrying",
                        type(exc).__name__,
                        exc_info=not expected,
                    )
                self._listening.clear()
                await self.channels.close()
                raise_if_cancelled()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _settle(self, serving: asyncio.Task[None]) -> None:
        """Until every subscription sent by ``open`` is confirmed (or the links fail)."""
        waiting = asyncio.create_task(self.channels.live(self.fanout.tasks(), SUBSCRIBE_WAIT_S))
        try:
            done, _ = await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if serving in done:
                serving.result()
            try:
                waiting.result()
            except TimeoutError:
                raise LinkLost("subscriptions were not confirmed in time") from None
        finally:
            await cancel_and_wait(waiting)

    async def _tick(self) -> None:
        try:
            flushed = await self._check_incarnation()
        except BackendError:
            if not is_cluster(self.redis):
                raise
            # The master of the incarnation key is failing over: the links say the rest.
            return
        if flushed:  # the store (on a cluster: the incarnation key's shard) lost its contents
            await self._catch_up(lost=True)
            self._restore()

    async def _recovered(self, tasks: list[str]) -> None:
        """Cluster: ``tasks`` lost their master and are subscribed again where their
        slots are served now — deliver what they missed (or begin a new epoch)."""
        log.info("caught up %d task(s) whose master changed", len(tasks))
        await self._catch_up(tasks=tasks)
        self._restore()

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
        """Until it has worked once: right after a failover the cluster may still
        refuse writes (``CLUSTERDOWN``) for a moment, or redis-py leak a torn-down
        connection's error, and a task whose schedule entry was lost would
        otherwise never be polled again."""
        delay = RetryDelay(first_s=0.2, cap_s=2.0)
        for attempt in range(RESTORE_ATTEMPTS):
            try:
                await restore()
                return
            except Exception as exc:
                if attempt == RESTORE_ATTEMPTS - 1:
                    log.warning(
                        "could not schedule again after a reconnect (%s)",
                        exc,
                        exc_info=not isinstance(exc, BackendError),
                    )
                    return
                await asyncio.sleep(delay.next_delay())

    async def _receive(self, data: bytes) -> None:
        async with self._order:
            await self._deliver(_event_decoder.decode(data))

    async def _deliver(self, event: Event) -> None:
        task = event.task
        if self.fanout.subscriber_count(task) == 0:
            self._last.pop(task, None)
            return
        enc = Encoded(event)
        if event.event is EventKind.NOTICE:
            self.fanout.deliver(enc)
            return
        last = self._last.get(task)
        if last is not None and event.seq == last.seq:
            # The same event again — or another one under its seq: the store lost
            # the one delivered here and the task's seqs went on from before it.
            if _Head.of(enc) != last:
                await self._resync(task)
            return
        if last is not None and event.seq < last.seq:
            # Old news — or the store forgot this task and its seqs start over.
            if await self._stored_seq(task) < last.seq:
                await self._resync(task)
            return
        if last is not None and event.seq > last.seq + 1:
            read = (await self._read_histories({task: last.seq}))[task]
            if read.head is not None and read.head != last.digest:
                await self._resync(task)  # the stored state already includes this event
                return
            for missed in read.after or []:
                if missed.event.seq < event.seq:
                    self.fanout.deliver(missed)
        self._last[task] = _Head.of(enc)
        self.fanout.deliver(enc)

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
                    now=self.clock.wall(),
                )
            )
        )
        self._last.pop(task, None)
        if current is not None:
            enc = Encoded(current)
            self._last[task] = _Head.of(enc)
            self.fanout.deliver(enc)

    async def _catch_up(self, *, lost: bool = False, tasks: Sequence[str] | None = None) -> None:
        """After a reconnect: deliver what local subscribers may have missed, or
        begin a new epoch for the tasks whose history the store lost.

        ``lost`` (a single Redis lost everything) resyncs every task. On a
        cluster the incarnation key is one shard's: there each task is judged
        by its own snapshot and history — gone, behind what this node
        delivered, or holding another event under the last seq delivered here
        (the store lost that one, and the poller has committed its seq again
        before this node was subscribed where the task is served now).
        """
        async with self._order:
            tasks = self.fanout.tasks() if tasks is None else list(tasks)
            blanket = lost and not is_cluster(self.redis)
            for i in range(0, len(tasks), CATCH_UP_BATCH):
                batch = tasks[i : i + CATCH_UP_BATCH]
                heads = {task: self._last.get(task) for task in batch}
                after = {task: head.seq if head else 0 for task, head in heads.items()}
                read = {} if blanket else await self._read_histories(after)
                for task in batch:
                    if not self.fanout.subscriber_count(task):
                        continue
                    head, stored = heads[task], read.get(task, _Read(0, None, None))
                    if blanket or stored.latest < after[task] or _diverged(head, stored):
                        await self._resync(task)
                        continue
                    for enc in stored.after or []:
                        self.fanout.deliver(enc)
                        self._last[task] = _Head.of(enc)

    async def _read_histories(self, after: Mapping[str, int]) -> dict[str, _Read]:
        """For each task: its stored seq, the stored event at the given seq and the
        events after it, in one pipeline."""
        async with translated("history read"), self.redis.pipeline(transaction=False) as pipe:
            for task, seq in after.items():
                pipe.hget(self._snap(task), "seq")
                pipe.xrange(self._hist(task), min=f"0-{seq}", max="+")
            replies: list[Any] = await pipe.execute()
        read: dict[str, _Read] = {}
        for n, (task, seq) in enumerate(after.items()):
            latest_raw, entries = replies[2 * n], replies[2 * n + 1]
            events = [Encoded(_event_decoder.decode(fields[b"b"])) for _, fields in entries]
            head = None
            if seq > 0 and events and events[0].event.seq == seq:
                head = _Head.of(events.pop(0)).digest
            latest = int(latest_raw or 0)
            read[task] = _Read(latest, head, self._events_after(seq, latest, events))
        return read

    @staticmethod
    def _events_after(after_seq: int, latest: int, events: list[Encoded]) -> list[Encoded] | None:
        if after_seq >= latest:
            return []
        if not events or events[0].event.seq > after_seq + 1:
            return None
        return events

    # -- state --------------------------------------------------------------

    async def snapshot(self, task: str) -> Event | None:
        return await self._snapshot_reads(task)

    async def _read_snapshots(self, tasks: list[str]) -> list[Event | None]:
        if len(tasks) == 1:
            async with translated("snapshot read"):
                body = await self.redis.hget(self._snap(tasks[0]), "body")
            return [None if body is None else _event_decoder.decode(body)]
        found = await self.snapshots(tasks)
        return [found[task] for task in tasks]

    async def commit(
        self,
        events: Sequence[Event],
        *,
        terminal_ttl_s: float,
        leases: Mapping[str, str] | None = None,
    ) -> list[Encoded]:
        encoded = [Encoded(event) for event in events]
        leases = leases or {}
        publish = self.channels.publish_command
        calls = []
        for enc in encoded:
            event = enc.event
            ttl = max(1, round(terminal_ttl_s)) if event.terminal else 0
            keys = [self._snap(event.task), self._hist(event.task), self._lease(event.task)]
            args = [
                event.seq,
                enc.json,
                ttl,
                self.history_limit,
                self.channels.channel(event.task),
                leases.get(event.task, ""),
                publish,
            ]
            calls.append((_COMMIT, keys, args))
        async with translated("commit"):
            results = await run_scripts(self.redis, calls)
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
        channel = self.channels.channel(event.task)
        async with translated("publish"):
            await self.redis.execute_command(
                self.channels.publish_command, channel, _encoder.encode(event)
            )

    async def history(self, task: str, after_seq: int) -> list[Encoded] | None:
        return (await self._read_histories({task: after_seq}))[task].after

    # -- watches ------------------------------------------------------------

    async def put_watch(self, watch: Watch) -> None:
        async with translated("watch write"), self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self._watch(watch.task), _encoder.encode(watch))
            pipe.sadd(self._watch_shard(watch.task), watch.task)
            await pipe.execute()

    async def drop_watch(self, task: str) -> bool:
        async with translated("watch delete"), self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._watch(task))
            pipe.srem(self._watch_shard(task), task)
            pipe.hdel(self._legacy_watches, task)
            deleted, _, legacy = await pipe.execute()
        return bool(deleted) or bool(legacy)

    async def watches(self) -> list[Watch]:
        """Every watch: the index shards name the tasks, their keys hold the watches."""
        async with translated("watch read"):
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard in range(WATCH_SHARDS):
                    pipe.smembers(self._watch_index(shard))
                pipe.hgetall(self._legacy_watches)
                *shards, legacy = await pipe.execute()
            tasks = sorted({member.decode() for shard in shards for member in shard})
            bodies: list[Any] = []
            if tasks:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for task in tasks:
                        pipe.get(self._watch(task))
                    bodies = await pipe.execute()
        found = {
            task: _watch_decoder.decode(body)
            for task, body in zip(tasks, bodies, strict=True)
            if body is not None
        }
        for raw_task, body in legacy.items():
            found.setdefault(raw_task.decode(), _watch_decoder.decode(body))
        return list(found.values())

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

    async def publish_watchers(self, node: str, counts: Mapping[str, int], ttl_s: float) -> None:
        """Each task's ``watchers`` hash holds ``node → count:expires_ms`` (Redis time).

        A field whose expiry passed is a node that stopped reporting (it
        died): readers ignore and remove it. Tasks with a count go into the
        ``subscribed`` index that the task listing walks.
        """
        if not counts:
            return
        ttl_ms = max(1, round(ttl_s * 1000))
        calls = [
            (_WATCHERS_SET, [self._watchers_key(task)], [node, count, ttl_ms])
            for task, count in counts.items()
        ]
        reported = {task: 0 for task, count in counts.items() if count > 0}
        async with translated("watcher counts"):
            await run_scripts(self.redis, calls)  # one pipeline, each call in its slot
            if reported:
                await self.redis.zadd(self._subscribed, reported)

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
        calls = [(_WATCHERS_SUM, [self._watchers_key(task)], [node]) for task in tasks]
        async with translated("watcher counts"):
            totals: list[Any] = await run_scripts(self.redis, calls)
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
