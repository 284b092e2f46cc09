"""Per-task event channels: a node subscribes to the tasks it serves, and to nothing else.

A task's channel is ``P:{<task>}:ev``: it carries the task's hash tag, so on
a Redis Cluster it lives in the task's slot, where the commit script runs
and publishes it. On a Redis Cluster the channels are *sharded*
(``SSUBSCRIBE``/``SPUBLISH``, Redis >= 7): a message goes to the master of
the slot (and its replicas) only, not to every node of the cluster, so each
master carries the traffic of its own tasks. On a single Redis they are
classic channels (``SUBSCRIBE``/``PUBLISH``).

Why per task and not per group of slots: a node must receive the events of
its tasks only. With 16,384 slot groups, a node following 10,000 of
1,000,000 tasks would still receive about half of all events; with one
channel per task it receives exactly its share. The cost — one subscription
per task — is paid in batches: a reconnect writes every subscription in one
go per connection (a single Redis takes up to 1,000 channels per
``SUBSCRIBE``; a cluster takes one ``SSUBSCRIBE`` per slot, since Redis
refuses one that spans slots, all written in one packet) and reads the
confirmations as they stream back — one round trip, not one per task.

The links are this module's own connections (one per master, or one to the
single Redis), not redis-py's ``PubSub``: redis-py reconnects a pub/sub
connection by itself and subscribes again, silently — messages published
meanwhile would be lost without the hub knowing it must catch up. On a
single Redis, any failure (connection lost, no answer to a ping) ends the
link; the hub opens a new one, subscribes again and reads what it missed
from the Streams. On a cluster a failure is one master's (its connection
lost, ``MOVED`` after a failover, a ``sunsubscribe`` Redis sent because a
slot moved, no answer to a ping): only that link is dropped, the other
masters' tasks keep flowing, and the dropped link's tasks are subscribed
again wherever the cluster now serves their slots, then caught up from
their Streams (``on_recovered``).

Debounce: a task going from 0 to 1 local subscriber is subscribed once; from
1 to 0 it stays subscribed for ``linger_s``, so a subscriber that reconnects
at once costs no round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from gateway.aio import cancel_and_wait
from gateway.hub.client import Client

__all__ = ["LinkLost", "TaskChannels"]

log = logging.getLogger("pollcast.hub.channels")

CHANNELS_PER_COMMAND = 1000
COMMANDS_PER_WRITE = 1000
WRITE_TIMEOUT_S = 3.0
PING_EVERY_S = 2.0
SILENT_S = 3 * PING_EVERY_S  # no reply at all for this long: the link is dead
MEND_EVERY_S = 0.2  # cluster: how often a lost master's tasks look for their new one

# Connection settings a dedicated pub/sub link must not inherit.
_NOT_INHERITED = (
    "maint_notifications_config",
    "oss_cluster_maint_notifications_handler",
    "retry",
    "socket_timeout",
    "health_check_interval",
    "protocol",
)


class LinkLost(Exception):
    """A link's subscriptions can no longer be trusted: open a new generation."""


class _Link:
    """One pub/sub connection (to one master, or to the single Redis)."""

    def __init__(self, name: str, conn: Connection, seen: float) -> None:
        self.name = name
        self.conn = conn
        self.seen = seen  # when it last answered (the channels' monotonic clock)

    async def send(self, commands: list[tuple[Any, ...]]) -> None:
        for i in range(0, len(commands), COMMANDS_PER_WRITE):
            packed = self.conn.pack_commands(commands[i : i + COMMANDS_PER_WRITE])
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self.conn.send_packed_command(packed, check_health=False)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)


def _connection(conn_class: type[Any], kwargs: dict[str, Any]) -> Connection:
    kw = {k: v for k, v in kwargs.items() if k not in _NOT_INHERITED}
    # RESP2: subscription replies come back as plain replies, in order.
    kw.update(socket_timeout=None, retry=Retry(NoBackoff(), 0), protocol=2)
    conn: Connection = conn_class(**kw)
    return conn


class TaskChannels:
    def __init__(
        self,
        client: Client,
        prefix: str,
        *,
        linger_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.monotonic = monotonic
        self.prefix = prefix
        self.sharded = isinstance(client, RedisCluster)
        self.linger_s = linger_s
        self.received = 0  # event messages this node's links received
        self._wanted: set[str] = set()  # tasks to be subscribed (subscribers, or lingering)
        self._live: set[str] = set()  # confirmed on the current links
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._unsubscribing: dict[str, int] = defaultdict(int)  # sent, not yet confirmed
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._links: dict[str, _Link] = {}
        self._route: dict[str, str] = {}  # task → name of the link serving its channel
        self._wake = asyncio.Event()
        self._open = False
        # Cluster: tasks whose master is gone, waiting for the one that serves their slot now.
        self._orphans: set[str] = set()
        self._mending = False
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._recoveries: set[asyncio.Task[None]] = set()
        self._on_message: Callable[[bytes], Awaitable[None]] | None = None
        self._on_recovered: Callable[[list[str]], Awaitable[None]] | None = None

    def channel(self, task: str) -> str:
        return f"{self.prefix}:{{{task}}}:ev"

    def _task_of(self, channel: bytes) -> str:
        return channel.decode()[len(self.prefix) + 2 : -4]

    @property
    def publish_command(self) -> str:
        return "SPUBLISH" if self.sharded else "PUBLISH"

    def subscribed(self) -> int:
        """How many tasks this node is subscribed to right now."""
        return len(self._live)

    # -- what the hub wants ---------------------------------------------------

    def want(self, task: str) -> None:
        """``task`` has a local subscriber (again): subscribe, unless it still is."""
        timer = self._lingering.pop(task, None)
        if timer is not None:
            timer.cancel()
            return
        if task in self._wanted:
            return
        self._wanted.add(task)
        self._to_unsubscribe.discard(task)
        if task in self._unsubscribing:
            # Going away on the wire: only the new subscription's confirmation counts.
            self._live.discard(task)
        elif task in self._live:
            return
        self._to_subscribe.add(task)
        self._wake.set()

    def unwant(self, task: str) -> None:
        """``task`` lost its last local subscriber: unsubscribe after the linger."""
        if task not in self._wanted or task in self._lingering:
            return
        loop = asyncio.get_running_loop()
        self._lingering[task] = loop.call_later(self.linger_s, self._lapse, task)

    def _lapse(self, task: str) -> None:
        self._lingering.pop(task, None)
        self._wanted.discard(task)
        self._to_subscribe.discard(task)
        if task in self._live:
            self._to_unsubscribe.add(task)
            self._wake.set()

    async def live(self, tasks: Iterable[str], timeout_s: float) -> None:
        """Until every one of ``tasks`` is subscribed on the current links.

        Raises:
            TimeoutError: not within ``timeout_s`` (Redis is unreachable or slow).
        """
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[None]] = []
        waiting: list[str] = []
        for task in tasks:
            if task not in self._live:
                future: asyncio.Future[None] = loop.create_future()
                self._waiters[task].append(future)
                pending.append(future)
                waiting.append(task)
        if not pending:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*pending)
        finally:
            for future in pending:
                future.cancel()
            for task in waiting:
                left = [f for f in self._waiters.get(task, ()) if not f.done()]
                if left:
                    self._waiters[task] = left
                else:
                    self._waiters.pop(task, None)

    # -- links ----------------------------------------------------------------

    async def open(self) -> None:
        """New links (after the cluster's topology was read again); every wanted
        task's subscription is sent — confirmations come through :meth:`serve`."""
        await self.close()
        client = self.client
        if isinstance(client, RedisCluster):
            await client.initialize()
            await client.nodes_manager.initialize()  # the topology as it is now
            for node in client.get_primaries():
                conn = _connection(node.connection_class, node.connection_kwargs)
                self._links[node.name] = _Link(node.name, conn, self.monotonic())
        else:
            pool = client.connection_pool
            conn = _connection(pool.connection_class, pool.connection_kwargs)
            self._links["redis"] = _Link("redis", conn, self.monotonic())
        for link in self._links.values():
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await link.conn.connect()  # type: ignore[no-untyped-call]
        self._open = True
        self._to_subscribe = set(self._wanted)
        self._to_unsubscribe.clear()
        await self._flush()

    async def close(self) -> None:
        self._open = False
        for task in [*self._readers.values(), *self._recoveries]:
            await cancel_and_wait(task)
        self._readers.clear()
        self._recoveries.clear()
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.close()
        self._live.clear()
        self._route.clear()
        self._unsubscribing.clear()
        self._orphans.clear()
        self._mending = False

    def _link_for(self, task: str) -> _Link | None:
        """The link serving ``task``'s channel (cluster: ``None`` while its master is gone)."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return self._links["redis"]
        try:
            node = client.nodes_manager.get_node_from_slot(client.keyslot(self.channel(task)))
        except RedisClusterException:  # the slot is not covered right now
            return None
        return self._links.get(node.name)

    async def _flush(self) -> None:
        """Send the pending subscribe and unsubscribe commands, batched per link."""
        if not self._open:
            return
        subscribe, self._to_subscribe = self._to_subscribe, set()
        unsubscribe, self._to_unsubscribe = self._to_unsubscribe, set()
        per_link: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for verb, tasks in (("UNSUBSCRIBE", unsubscribe), ("SUBSCRIBE", subscribe)):
            groups: dict[tuple[str, int], list[str]] = defaultdict(list)
            for task in tasks:
                link = self._link_for(task) if verb == "SUBSCRIBE" else self._unlink(task)
                if link is None:
                    if verb == "SUBSCRIBE":  # its master is gone: subscribe once mended
                        self._orphans.add(task)
                        self._mending = True
                    continue
                slot = self._slot(task)
                groups[(link.name, slot)].append(task)
                if verb == "SUBSCRIBE":
                    self._route[task] = link.name
                else:
                    self._unsubscribing[task] += 1
            command = ("S" + verb) if self.sharded else verb
            for (name, _), group in groups.items():
                for i in range(0, len(group), CHANNELS_PER_COMMAND):
                    chunk = group[i : i + CHANNELS_PER_COMMAND]
                    per_link[name].append((command, *map(self.channel, chunk)))
        for name, commands in per_link.items():
            await self._send(self._links[name], commands)

    async def _send(self, link: _Link, commands: list[tuple[Any, ...]]) -> None:
        try:
            await link.send(commands)
        except (RedisError, OSError, TimeoutError) as exc:
            if not self.sharded:
                raise
            self._drop(link.name, exc)

    def _slot(self, task: str) -> int:
        client = self.client
        return client.keyslot(self.channel(task)) if isinstance(client, RedisCluster) else 0

    def _unlink(self, task: str) -> _Link | None:
        name = self._route.get(task)
        return None if name is None else self._links.get(name)

    # -- serving --------------------------------------------------------------

    async def serve(
        self,
        on_message: Callable[[bytes], Awaitable[None]],
        on_tick: Callable[[], Awaitable[None]],
        on_recovered: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        """Read every link, send (un)subscriptions as they are wanted, ping, and
        call ``on_tick`` every :data:`PING_EVERY_S`; returns only by raising.

        On a cluster a lost link is mended in place (see the module's doc) and
        ``on_recovered`` is called with its tasks once they are subscribed again.
        """
        self._on_message, self._on_recovered = on_message, on_recovered
        for link in self._links.values():
            self._start_reader(link)
        upkeep = asyncio.create_task(self._maintain(on_tick), name="pollcast-link-upkeep")
        try:
            watched = {upkeep} if self.sharded else {upkeep, *self._readers.values()}
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the failure
            raise LinkLost("a pub/sub link ended")
        finally:
            await cancel_and_wait(upkeep)
            for task in [*self._readers.values(), *self._recoveries]:
                await cancel_and_wait(task)
            self._readers.clear()
            self._recoveries.clear()

    def _start_reader(self, link: _Link) -> None:
        on_message = self._on_message
        assert on_message is not None
        self._readers[link.name] = asyncio.create_task(
            self._guarded_read(link, on_message), name=f"pollcast-link-{link.name}"
        )

    async def _guarded_read(
        self, link: _Link, on_message: Callable[[bytes], Awaitable[None]]
    ) -> None:
        try:
            await self._read(link, on_message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.sharded:
                raise
            self._drop(link.name, exc)

    def _drop(self, name: str, why: BaseException) -> None:
        """Cluster: forget a master's link; its tasks wait for the master of their slot."""
        link = self._links.pop(name, None)
        if link is None:
            return
        log.warning("lost the event link to %s (%s); moving its tasks", name, type(why).__name__)
        reader = self._readers.pop(name, None)
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        closing = asyncio.create_task(link.close())
        self._recoveries.add(closing)
        closing.add_done_callback(self._recoveries.discard)
        lost = [task for task, via in self._route.items() if via == name]
        for task in lost:
            self._unsubscribing.pop(task, None)
        self._orphan(lost)

    async def _mend(self) -> None:
        """Cluster: read the topology again, link to every master, and subscribe the
        orphaned tasks where their slots are served now. Failures wait for the next try."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return
        try:
            await client.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError) as exc:
            log.debug("cluster topology not readable yet (%s)", type(exc).__name__)
            return
        primaries = {node.name: node for node in client.get_primaries()}
        for name in [n for n in self._links if n not in primaries]:
            self._drop(name, LinkLost("no longer a master"))
        for name, node in primaries.items():
            if name in self._links:
                continue
            link = _Link(
                name, _connection(node.connection_class, node.connection_kwargs), self.monotonic()
            )
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await link.conn.connect()  # type: ignore[no-untyped-call]
            except (RedisError, OSError, TimeoutError):
                await link.close()
                continue
            self._links[name] = link
            self._start_reader(link)
        ready = [task for task in self._orphans if self._link_for(task) is not None]
        self._orphans.difference_update(ready)
        ready = [task for task in ready if task in self._wanted]
        self._mending = bool(self._orphans) or len(self._links) < len(primaries)
        if ready:
            self._to_subscribe.update(ready)
            recovery = asyncio.create_task(self._recover(ready))
            self._recoveries.add(recovery)
            recovery.add_done_callback(self._recoveries.discard)

    async def _recover(self, tasks: list[str]) -> None:
        """Once ``tasks`` are subscribed again, let the hub catch them up."""
        try:
            await self.live(tasks, WRITE_TIMEOUT_S)
            if self._on_recovered is not None:
                await self._on_recovered(tasks)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("could not catch up after moving tasks (%s); retrying", type(exc).__name__)
            self._orphan(tasks)

    def _orphan(self, tasks: Iterable[str]) -> None:
        """These tasks have no working subscription: the mender subscribes the wanted
        ones again where their slots are served now."""
        for task in tasks:
            self._live.discard(task)
            self._route.pop(task, None)
            if task in self._wanted:
                self._orphans.add(task)
        self._mending = True
        self._wake.set()

    async def _read(self, link: _Link, on_message: Callable[[bytes], Awaitable[None]]) -> None:
        while True:
            reply = await link.conn.read_response(timeout=math.inf, disconnect_on_error=True)
            link.seen = self.monotonic()
            if not isinstance(reply, list) or not reply:
                continue  # PONG of a link that has no subscription yet
            kind = reply[0]
            if kind in (b"message", b"smessage"):
                self.received += 1
                await on_message(reply[2])
            elif kind in (b"subscribe", b"ssubscribe"):
                self._confirmed(self._task_of(reply[1]))
            elif kind in (b"unsubscribe", b"sunsubscribe"):
                self._unsubscribed(self._task_of(reply[1]))

    def _confirmed(self, task: str) -> None:
        self._live.add(task)
        if task not in self._wanted:  # its last subscriber left before Redis confirmed
            self._to_unsubscribe.add(task)
            self._wake.set()
        for future in self._waiters.pop(task, ()):
            if not future.done():
                future.set_result(None)

    def _unsubscribed(self, task: str) -> None:
        if self._unsubscribing.get(task, 0) > 0:
            self._unsubscribing[task] -= 1
            if not self._unsubscribing[task]:
                del self._unsubscribing[task]
                if task not in self._wanted:
                    self._live.discard(task)
                    self._route.pop(task, None)
            return
        # Redis dropped it by itself: its slot moved to another master.
        if not self.sharded:
            raise LinkLost(f"the subscription of {task} was dropped by Redis")
        self._live.discard(task)
        self._route.pop(task, None)
        if task in self._wanted:
            self._orphans.add(task)
            self._mending = True
            self._wake.set()

    async def _maintain(self, on_tick: Callable[[], Awaitable[None]]) -> None:
        pinged = self.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MEND_EVERY_S if self._mending else PING_EVERY_S):
                    await self._wake.wait()
            self._wake.clear()
            if self._mending:
                await self._mend()
            await self._flush()
            now = self.monotonic()
            if now - pinged >= PING_EVERY_S:
                pinged = now
                for link in list(self._links.values()):
                    if now - link.seen > SILENT_S:
                        if not self.sharded:
                            raise LinkLost(f"no answer from {link.name}")
                        self._drop(link.name, LinkLost("no answer to pings"))
                        continue
                    await self._send(link, [("PING",)])
                await on_tick()
