"""The schedule in Redis: one poll per task per round across a cluster.

Per provider, in ``backend.schedule_shards`` shards (default 16), each shard
under its own hash tag, so each script touches a single slot and a Redis
Cluster spreads a provider's schedule over its masters::

    P:{sched:<provider>:<n>}:due       zset  task → due time
    P:{sched:<provider>:<n>}:lease     zset  task → lease expiry (claimed, being polled)
    P:{sched:<provider>:<n>}:owner     hash  task → node id holding the lease
    P:{sched:<provider>:<n>}:state     hash  task → Entry (interval, failures, deadline)
    P:{sched:<provider>:<n>}:interest  zset  task → wanted until (subscribers, watches)
    P:{sched:<provider>:<n>}:epoch     hash  task → number of claims so far (fencing epoch)

A task's shard ``n`` is a stable hash of its key (CRC-32 modulo the shard
count; one shard is ``P:{sched:<provider>}``, the unsharded layout). The
next due time is read from every shard in one pipeline; a claim then runs
the claim script on every shard that has something in reach, all at once
(one pipeline, or one call per master on a cluster), and keeps at most
``claim_limit`` tasks. One
node at a time claims a provider (``P:{sched:<provider>}:claiming``, a
lock of :data:`CLAIM_LOCK_S` at most), so a batch provider's round is taken
whole by one node and coalesced into full batches, as with one shard.
Changing the shard count moves every task's keys: restart all nodes
together (watches are scheduled again from the stored watches at start,
followed tasks when their subscribers reconnect).

and per task, in the task's own slot (next to its snapshot)::

    P:{<task>}:lease               string the fencing token of the claim being polled
    P:{<task>}:lease_until         string when that claim lapses (the claimers' clock)

``claim`` moves due tasks to ``lease`` atomically (Lua), so two nodes never
poll a task in the same round; a node that dies mid-lease loses its claim
when the lease expires and the next ``claim`` by any node takes the task
back. Nothing needs the nodes to agree on who is alive.

Fencing. A node that is paused (GC, SIGSTOP, a VM migration) longer than
its lease wakes up still believing it holds the claim; its reply may be
older than what the node that took over has committed since. So each claim
carries a token, ``<node>:<epoch>`` (the epoch counts the task's claims),
and the commit script refuses an event unless the task's lease key holds
that very token. The sequence for one task:

1. ``claim`` (provider slot, atomic): the task moves to ``lease``, epoch + 1.
2. ``fence`` (task slot, atomic): ``SET lease token PX <what is left of the
   lease>`` — only if the key is absent, holds a token of this node (an
   earlier claim of ours) or belongs to a claim that has lapsed by the
   claiming node's ``now`` (its ``lease_until``), and only if the lease has
   not already run out by this node's clock. Otherwise the claim is handed straight back: another
   node still holds the task (its key outlived the schedule's lease by the
   moment between its steps 1 and 2), or we were paused past our lease.
3. The upstream request is sent only after step 2 succeeded, so what it
   observes is newer than anything committed under an earlier token.
4. ``renew`` extends the schedule lease and then, for the tasks whose
   schedule lease was still ours, the lease key (same token, same TTL).
5. ``commit`` (task slot, atomic with the seq check): refused unless the
   key still holds our token. It does not extend the key.
6. ``release`` deletes the key if it is still ours, then hands the claim back.

Why this is safe whatever the clocks: a node fences only once the previous
holder's key is gone (expired, deleted or lapsed and overwritten), and from then on every commit of
the previous holder is refused (step 5) — so the commits a task accepts come
from one holder at a time, each from a request sent after that holder got
the key, hence after every earlier holder's last accepted commit. A paused
node whose key is still there when it wakes was not overtaken: its commit
is valid. Clocks only decide how soon a task moves: the key is set to expire
with the schedule lease, give or take the round trip between the two writes;
outliving it makes the next claimer wait for it, expiring early makes the
holder's commit refused and the task polled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from gateway.aio import Batcher
from gateway.hub.client import Client, Script, is_cluster, run_scripts
from gateway.hub.redis import task_key, translated
from gateway.poller.schedule import Entry, Schedule

__all__ = ["RedisSchedule", "schedule_key", "shard_of"]

log = logging.getLogger("pollcast.schedule")

# Redis scores are doubles, but Lua's tonumber() does not read "inf": a watch
# keeps its task "forever" as a far-future time instead.
_FOREVER = 9.0e15

# The claim lock of a provider: how long it may be held, how often a waiter looks.
CLAIM_LOCK_S = 2.0
CLAIM_LOCK_POLL_S = 0.005
# Script calls a cluster client has in flight at once for one batch of tasks.
_CLUSTER_FANOUT = 64

_entry_decoder = msgspec.json.Decoder(Entry)
_encoder = msgspec.json.Encoder()

# KEYS: due, lease, state, interest   ARGV: task, entry, now, keep_until
_ADD = """
redis.call('ZADD', KEYS[4], 'GT', ARGV[4], ARGV[1])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: due, lease, state, interest, owner, epoch   ARGV: now, horizon, lease_until, node, limit
_CLAIM = """
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, task in ipairs(expired) do
  redis.call('ZREM', KEYS[2], task)
  redis.call('HDEL', KEYS[5], task)
  redis.call('ZADD', KEYS[1], now, task)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[5])
local claimed = {}
local epochs = {}
for _, task in ipairs(due) do
  redis.call('ZREM', KEYS[1], task)
  local wanted = tonumber(redis.call('ZSCORE', KEYS[4], task) or '0')
  local entry = redis.call('HGET', KEYS[3], task)
  if wanted < now or not entry then
    redis.call('HDEL', KEYS[3], task)
    redis.call('ZREM', KEYS[4], task)
    redis.call('HDEL', KEYS[6], task)
  else
    redis.call('ZADD', KEYS[2], ARGV[3], task)
    redis.call('HSET', KEYS[5], task, ARGV[4])
    table.insert(claimed, entry)
    table.insert(epochs, redis.call('HINCRBY', KEYS[6], task, 1))
  end
end
return {#expired, claimed, epochs}
"""

# KEYS: due, lease, state, owner   ARGV: node, then (task, due, entry) triples
_RELEASE = """
local released = 0
for i = 2, #ARGV, 3 do
  local task = ARGV[i]
  if redis.call('HGET', KEYS[4], task) == ARGV[1] then
    redis.call('HDEL', KEYS[4], task)
    redis.call('ZREM', KEYS[2], task)
    if redis.call('HEXISTS', KEYS[3], task) == 1 then
      redis.call('HSET', KEYS[3], task, ARGV[i + 2])
      redis.call('ZADD', KEYS[1], ARGV[i + 1], task)
    end
    released = released + 1
  end
end
return released
"""

# KEYS: lease, owner   ARGV: node, lease_until, tasks… — extend this node's leases;
# the tasks whose lease was still this node's
_RENEW = """
local renewed = {}
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    table.insert(renewed, ARGV[i])
  end
end
return renewed
"""

# KEYS: task lease key, its expiry key   ARGV: token, node, ttl_ms, now, until
# 0: fenced; -1: the lease already ran out; > 0: another node's key, its ms left.
# Another node's key counts as gone once its expiry (in the claimers' clock, the
# one ``claim`` runs on) has passed, even if Redis has not dropped it yet.
_FENCE = """
local ttl = tonumber(ARGV[3])
if ttl <= 0 then
  return -1
end
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] and string.sub(current, 1, #ARGV[2] + 1) ~= ARGV[2] .. ':' then
  local left = tonumber(redis.call('GET', KEYS[2]) or '0') - tonumber(ARGV[4])
  if left > 0 then
    return math.max(1, math.ceil(left * 1000))
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SET', KEYS[2], ARGV[5], 'PX', ttl)
return 0
"""

# KEYS: task lease key, its expiry key   ARGV: token, ttl_ms (0: delete), until
# — only while the key is ours
_REFENCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 1
"""

# KEYS: due, lease, owner   ARGV: node, now — give back everything this node holds
_SURRENDER = """
local flat = redis.call('HGETALL', KEYS[3])
local n = 0
for i = 1, #flat, 2 do
  if flat[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[3], flat[i])
    redis.call('ZREM', KEYS[2], flat[i])
    redis.call('ZADD', KEYS[1], ARGV[2], flat[i])
    n = n + 1
  end
end
return n
"""

# KEYS: the claim lock   ARGV: token — drop it only while it is ours
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: state   ARGV: task, deadline_at
_SET_DEADLINE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local entry = cjson.decode(raw)
entry['deadline_at'] = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
return 1
"""


def shard_of(task: str, shards: int) -> int:
    """The shard of ``task``'s schedule entry: stable across nodes and restarts."""
    return zlib.crc32(task.encode()) % shards if shards > 1 else 0


def _tag(provider: str, shard: int, shards: int) -> str:
    return f"sched:{provider}" if shards <= 1 else f"sched:{provider}:{shard}"


def schedule_key(prefix: str, provider: str, task: str, what: str, *, shards: int = 16) -> str:
    """The schedule key ``what`` (``due``, ``owner``, …) of the shard holding ``task``."""
    return f"{prefix}:{{{_tag(provider, shard_of(task, shards), shards)}}}:{what}"


def _encode(entry: Entry) -> bytes:
    """An entry as stored: the token belongs to one claim, not to the task."""
    return _encoder.encode(msgspec.structs.replace(entry, lease=""))


def _score(at: float) -> float:
    return _FOREVER if math.isinf(at) else at


class RedisSchedule(Schedule):
    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "pollcast",
        lease_s: float = 10.0,
        claim_limit: int = 1000,
        node_id: str | None = None,
        clock: Callable[[], float] = time.time,
        shards: int = 16,
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.redis = client
        self.shards = shards
        self.clock = clock
        self.prefix = prefix
        self.lease_s = lease_s
        self.claim_limit = claim_limit
        self.node_id = node_id or uuid.uuid4().hex
        self._add = client.register_script(_ADD)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._surrender = client.register_script(_SURRENDER)
        self._renew = client.register_script(_RENEW)
        self._set_deadline = client.register_script(_SET_DEADLINE)
        self._unlock = client.register_script(_UNLOCK)
        # Adds asked for in one pass of the loop (a reconnect storm) share a pipeline.
        self._adds: Batcher[tuple[str, Entry, float], int] = Batcher(self._add_many)
        # Pipelined over many tasks' slots: run as plain EVALSHA (cluster-safe).
        self._fence = Script(_FENCE)
        self._refence = Script(_REFENCE)
        self._known: dict[str, dict[str, Entry]] = {}
        self._tokens: dict[str, str] = {}  # task → token of this node's claim in flight
        self.takeovers: dict[str, int] = {}  # provider → claims taken back from lapsed leases
        self.unfenced = 0  # claims handed back because the task's lease key was not ours
        # Per provider: each shard's earliest due time and lease expiry, as the
        # last next_due read them (claim skips the shards with nothing due).
        self._mins: dict[str, list[float | None]] = {}

    def _key(self, provider: str, what: str, shard: int = 0) -> str:
        return f"{self.prefix}:{{{_tag(provider, shard, self.shards)}}}:{what}"

    def _keys(self, provider: str, *what: str, shard: int = 0) -> list[str]:
        return [self._key(provider, w, shard) for w in what]

    def _shard(self, task: str) -> int:
        return shard_of(task, self.shards)

    def _by_shard(self, tasks: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for task in tasks:
            groups[self._shard(task)].append(task)
        return groups

    def lease_key(self, task: str) -> str:
        """The task's lease key: in the task's slot, where the commit script checks it."""
        return task_key(self.prefix, task, "lease")

    def _lease_keys(self, task: str) -> list[str]:
        return [self.lease_key(task), task_key(self.prefix, task, "lease_until")]

    async def close(self) -> None:
        """Give this node's claims back so another node polls them at once (drain)."""
        try:
            await self._unfence(list(self._tokens))
        except Exception:
            log.warning("could not drop this node's lease keys; they will lapse")
        for provider in list(self._known):
            try:
                n = 0
                async with translated("surrender"):
                    for shard in range(self.shards):
                        n += await self._surrender(
                            keys=self._keys(provider, "due", "lease", "owner", shard=shard),
                            args=[self.node_id, self.clock()],
                        )
                if n:
                    log.info("released %d claim(s) of %s", n, provider)
            except Exception:
                log.warning("could not release claims of %s; their leases will lapse", provider)

    async def add(self, provider: str, entry: Entry, *, keep_until: float) -> bool:
        added = await self._adds((provider, entry, keep_until))
        self._known.setdefault(provider, {}).setdefault(entry.task, entry)
        if added:
            self._mins.pop(provider, None)  # what next_due read no longer holds
        return bool(added)

    async def _add_many(self, adds: list[tuple[str, Entry, float]]) -> list[int]:
        calls: list[tuple[list[str], list[Any]]] = [
            (
                self._keys(
                    provider, "due", "lease", "state", "interest", shard=self._shard(entry.task)
                ),
                # Due at once for every node, whatever its clock says.
                [entry.task, _encode(entry), 0.0, _score(keep_until)],
            )
            for provider, entry, keep_until in adds
        ]
        async with translated("schedule"):
            if len(calls) == 1:
                ((keys, args),) = calls
                return [int(await self._add(keys=keys, args=args))]
            return [int(added) for added in await self._each(self._add, calls)]

    async def keep(self, provider: str, tasks: Sequence[str], until: float) -> None:
        if not tasks:
            return
        score = _score(until)
        groups = self._by_shard(tasks)
        async with translated("interest"):
            if len(groups) == 1:
                ((shard, group),) = groups.items()
                key = self._key(provider, "interest", shard)
                await self.redis.zadd(key, dict.fromkeys(group, score), gt=True)
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                for shard, group in groups.items():
                    key = self._key(provider, "interest", shard)
                    pipe.zadd(key, dict.fromkeys(group, score), gt=True)
                await pipe.execute()

    async def lapse(self, provider: str, task: str, at: float) -> None:
        async with translated("interest"):
            key = self._key(provider, "interest", self._shard(task))
            await self.redis.zadd(key, {task: at}, xx=True)

    async def set_deadline(self, provider: str, task: str, deadline_at: float) -> None:
        async with translated("deadline"):
            await self._set_deadline(
                keys=[self._key(provider, "state", self._shard(task))], args=[task, deadline_at]
            )

    def _claimable(self, provider: str, now: float, horizon: float) -> list[int]:
        """The shards worth a claim: those whose earliest due time (or lease
        expiry) as last read is in reach, or all of them if unknown."""
        order = list(range(self.shards))
        mins = self._mins.pop(provider, None)
        if mins is None:
            return order
        return [n for n in order if (at := mins[n]) is not None and at <= max(now, horizon)]

    @contextlib.asynccontextmanager
    async def _claiming(self, provider: str) -> AsyncIterator[bool]:
        """One node at a time claims a provider's shards (a short lock, ``True``
        once held): two nodes claiming the same round shard by shard would split
        a batch provider's due tasks between them, two requests where one does.
        A node that dies holding it holds it for :data:`CLAIM_LOCK_S` at most."""
        if self.shards <= 1:  # one script, atomic by itself
            yield True
            return
        key = f"{self.prefix}:{{sched:{provider}}}:claiming"
        token = f"{self.node_id}:{uuid.uuid4().hex[:8]}"
        give_up = time.monotonic() + CLAIM_LOCK_S
        while not await self.redis.set(key, token, nx=True, px=int(CLAIM_LOCK_S * 1000)):
            if time.monotonic() >= give_up:
                yield False
                return
            await asyncio.sleep(CLAIM_LOCK_POLL_S)
        try:
            yield True
        finally:
            await self._unlock(keys=[key], args=[token])

    async def claim(self, provider: str, now: float, horizon: float) -> list[Entry]:
        lease_until = now + self.lease_s
        raw: list[bytes] = []
        epochs: list[int] = []
        taken = 0
        async with translated("claim"), self._claiming(provider) as mine:
            shards = self._claimable(provider, now, horizon) if mine else []
            # Every shard at once (one pipeline, or one call per master on a
            # cluster): a round's latency is one round trip, not one per shard.
            replies = await self._each(
                self._claim,
                [
                    (
                        self._keys(
                            provider, "due", "lease", "state", "interest", "owner", "epoch", shard=n
                        ),
                        [now, horizon, lease_until, self.node_id, self.claim_limit],
                    )
                    for n in shards
                ],
            )
        for back, bodies, counts in replies:
            taken += int(back)
            raw += bodies
            epochs += counts
        if taken:
            self.takeovers[provider] = self.takeovers.get(provider, 0) + int(taken)
            log.info("took back %d lapsed claim(s) of %s", taken, provider)
        entries = [_entry_decoder.decode(body) for body in raw]
        for entry, epoch in zip(entries, epochs, strict=True):
            entry.lease = f"{self.node_id}:{int(epoch)}"
        if len(entries) > self.claim_limit:  # several shards together took too many
            entries.sort(key=lambda e: e.task)
            extra = entries[self.claim_limit :]
            entries = entries[: self.claim_limit]
            await self._release_claims(provider, [(e, now) for e in extra])
        entries = await self._fence_all(provider, entries, now, lease_until)
        known = self._known.setdefault(provider, {})
        for entry in entries:
            known[entry.task] = entry
        return entries

    async def _fence_all(
        self, provider: str, entries: list[Entry], now: float, lease_until: float
    ) -> list[Entry]:
        """Set each claimed task's lease key (step 2 above); hand back the claims
        whose key another node still holds, or whose lease ran out meanwhile."""
        if not entries:
            return entries
        ttl_ms = int((lease_until - self.clock()) * 1000)
        calls = [
            (
                self._fence,
                self._lease_keys(entry.task),
                [entry.lease, self.node_id, ttl_ms, now, lease_until],
            )
            for entry in entries
        ]
        async with translated("fence"):
            results: list[Any] = await run_scripts(self.redis, calls)
        fenced: list[Entry] = []
        back: list[tuple[Entry, float]] = []
        wall = self.clock()
        for entry, result in zip(entries, results, strict=True):
            if int(result) == 0:
                self._tokens[entry.task] = entry.lease
                fenced.append(entry)
            else:
                # Due again once the other node's key runs out (or at once: ours lapsed).
                back.append((entry, wall + max(0, int(result)) / 1000))
        if back:
            self.unfenced += len(back)
            log.info("handed back %d claim(s) of %s held by another node", len(back), provider)
            await self._release_claims(provider, back)
        return fenced

    async def _each(self, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per (keys, args), each call in its own keys' slot.

        One pipeline on a single Redis; on a cluster, whose client refuses
        scripts in a pipeline, concurrent calls (each to its slot's master),
        a bounded number at a time.
        """
        if not calls:
            return []
        if is_cluster(self.redis):
            results: list[Any] = []
            for i in range(0, len(calls), _CLUSTER_FANOUT):
                chunk = calls[i : i + _CLUSTER_FANOUT]
                results += await asyncio.gather(*(script(keys=k, args=a) for k, a in chunk))
            return results
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            done: list[Any] = await pipe.execute()
            return done

    async def _unfence(self, tasks: Iterable[str]) -> None:
        """Delete this node's lease keys of ``tasks`` (a commit can no longer be fenced)."""
        tokens = [(task, self._tokens.pop(task)) for task in tasks if task in self._tokens]
        if not tokens:
            return
        calls = [(self._refence, self._lease_keys(task), [token, 0, 0]) for task, token in tokens]
        async with translated("unfence"):
            await run_scripts(self.redis, calls)

    @property
    def renew_every_s(self) -> float | None:
        return self.lease_s / 3

    async def renew(self, provider: str, tasks: Sequence[str]) -> None:
        until = self.clock() + self.lease_s
        renewed: list[bytes] = []
        async with translated("lease renewal"):
            for shard, group in self._by_shard(tasks).items():
                renewed += await self._renew(
                    keys=self._keys(provider, "lease", "owner", shard=shard),
                    args=[self.node_id, until, *group],
                )
        # Only a claim still ours in the schedule keeps its fence (step 4 above).
        fences = [(t.decode(), self._tokens.get(t.decode())) for t in renewed]
        if not fences:
            return
        ttl_ms = int(self.lease_s * 1000)
        calls = [
            (self._refence, self._lease_keys(task), [token, ttl_ms, until])
            for task, token in fences
            if token is not None
        ]
        async with translated("lease renewal"):
            await run_scripts(self.redis, calls)

    async def release(self, provider: str, due: Sequence[tuple[Entry, float]]) -> None:
        if not due:
            return
        # The key goes first: once the claim is back, the next claimer must find it gone.
        await self._unfence(entry.task for entry, _ in due)
        await self._release_claims(provider, due)

    async def _release_claims(self, provider: str, due: Sequence[tuple[Entry, float]]) -> None:
        self._mins.pop(provider, None)  # what next_due read no longer holds
        groups: dict[int, list[str | float | bytes]] = {}
        for entry, at in due:
            args = groups.setdefault(self._shard(entry.task), [self.node_id])
            args += [entry.task, at, _encode(entry)]
        async with translated("release"):
            for shard, args in groups.items():
                await self._release(
                    keys=self._keys(provider, "due", "lease", "state", "owner", shard=shard),
                    args=args,
                )

    async def remove(self, provider: str, tasks: Iterable[str]) -> None:
        tasks = list(tasks)
        if not tasks:
            return
        await self._unfence(tasks)
        async with translated("unschedule"):
            for shard, group in self._by_shard(tasks).items():
                # One shard's keys share a slot: a transaction, even on a cluster.
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(self._key(provider, "due", shard), *group)
                    pipe.zrem(self._key(provider, "lease", shard), *group)
                    pipe.hdel(self._key(provider, "owner", shard), *group)
                    pipe.hdel(self._key(provider, "state", shard), *group)
                    pipe.zrem(self._key(provider, "interest", shard), *group)
                    pipe.hdel(self._key(provider, "epoch", shard), *group)
                    await pipe.execute()
        known = self._known.get(provider, {})
        for task in tasks:
            known.pop(task, None)

    async def next_due(self, provider: str) -> float | None:
        """The earliest due time — or lease expiry, so a dead node's claims come back.

        One pipeline reads every shard's earliest of both; the next claim
        visits only the shards that have something in reach.
        """
        async with translated("schedule read"), self.redis.pipeline(transaction=False) as pipe:
            for shard in range(self.shards):
                pipe.zrange(self._key(provider, "due", shard), 0, 0, withscores=True)
                pipe.zrange(self._key(provider, "lease", shard), 0, 0, withscores=True)
            firsts: list[Any] = await pipe.execute()
        mins: list[float | None] = []
        for shard in range(self.shards):
            times = [score for _, score in firsts[2 * shard] + firsts[2 * shard + 1]]
            mins.append(min(times) if times else None)
        self._mins[provider] = mins
        known = [at for at in mins if at is not None]
        return min(known) if known else None

    def known(self, provider: str) -> Mapping[str, Entry]:
        return self._known.setdefault(provider, {})
