"""The schedule in Redis: one poll per task per round across a cluster.

Per provider (one hash tag, so each script touches a single slot)::

    P:{sched:<provider>}:due       zset  task → due time
    P:{sched:<provider>}:lease     zset  task → lease expiry (claimed, being polled)
    P:{sched:<provider>}:owner     hash  task → node id holding the lease
    P:{sched:<provider>}:state     hash  task → Entry (interval, failures, deadline)
    P:{sched:<provider>}:interest  zset  task → wanted until (subscribers, watches)
    P:{sched:<provider>}:epoch     hash  task → number of claims so far (fencing epoch)

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

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from gateway.hub.client import Client, Script, run_scripts
from gateway.hub.redis import task_key, translated
from gateway.poller.schedule import Entry, Schedule

__all__ = ["RedisSchedule"]

log = logging.getLogger("pollcast.schedule")

# Redis scores are doubles, but Lua's tonumber() does not read "inf": a watch
# keeps its task "forever" as a far-future time instead.
_FOREVER = 9.0e15

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

# KEYS: state   ARGV: task, deadline_at
_SET_DEADLINE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local entry = cjson.decode(raw)
entry['deadline_at'] = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
return 1
"""


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
    ) -> None:
        self.redis = client
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
        # Pipelined over many tasks' slots: run as plain EVALSHA (cluster-safe).
        self._fence = Script(_FENCE)
        self._refence = Script(_REFENCE)
        self._known: dict[str, dict[str, Entry]] = {}
        self._tokens: dict[str, str] = {}  # task → token of this node's claim in flight
        self.takeovers: dict[str, int] = {}  # provider → claims taken back from lapsed leases
        self.unfenced = 0  # claims handed back because the task's lease key was not ours

    def _key(self, provider: str, what: str) -> str:
        return f"{self.prefix}:{{sched:{provider}}}:{what}"

    def _keys(self, provider: str, *what: str) -> list[str]:
        return [self._key(provider, w) for w in what]

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
                async with translated("surrender"):
                    n = await self._surrender(
                        keys=self._keys(provider, "due", "lease", "owner"),
                        args=[self.node_id, self.clock()],
                    )
                if n:
                    log.info("released %d claim(s) of %s", n, provider)
            except Exception:
                log.warning("could not release claims of %s; their leases will lapse", provider)

    async def add(self, provider: str, entry: Entry, *, keep_until: float) -> bool:
        async with translated("schedule"):
            added = await self._add(
                keys=self._keys(provider, "due", "lease", "state", "interest"),
                # Due at once for every node, whatever its clock says.
                args=[entry.task, _encode(entry), 0.0, _score(keep_until)],
            )
        self._known.setdefault(provider, {}).setdefault(entry.task, entry)
        return bool(added)

    async def keep(self, provider: str, tasks: Sequence[str], until: float) -> None:
        if not tasks:
            return
        score = _score(until)
        async with translated("interest"):
            await self.redis.zadd(
                self._key(provider, "interest"), dict.fromkeys(tasks, score), gt=True
            )

    async def lapse(self, provider: str, task: str, at: float) -> None:
        async with translated("interest"):
            await self.redis.zadd(self._key(provider, "interest"), {task: at}, xx=True)

    async def set_deadline(self, provider: str, task: str, deadline_at: float) -> None:
        async with translated("deadline"):
            await self._set_deadline(keys=[self._key(provider, "state")], args=[task, deadline_at])

    async def claim(self, provider: str, now: float, horizon: float) -> list[Entry]:
        lease_until = now + self.lease_s
        async with translated("claim"):
            taken, raw, epochs = await self._claim(
                keys=self._keys(provider, "due", "lease", "state", "interest", "owner", "epoch"),
                args=[now, horizon, lease_until, self.node_id, self.claim_limit],
            )
        if taken:
            self.takeovers[provider] = self.takeovers.get(provider, 0) + int(taken)
            log.info("took back %d lapsed claim(s) of %s", taken, provider)
        entries = [_entry_decoder.decode(body) for body in raw]
        for entry, epoch in zip(entries, epochs, strict=True):
            entry.lease = f"{self.node_id}:{int(epoch)}"
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
        async with translated("lease renewal"):
            renewed: list[bytes] = await self._renew(
                keys=self._keys(provider, "lease", "owner"),
                args=[self.node_id, until, *tasks],
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
        args: list[str | float | bytes] = [self.node_id]
        for entry, at in due:
            args += [entry.task, at, _encode(entry)]
        async with translated("release"):
            await self._release(
                keys=self._keys(provider, "due", "lease", "state", "owner"), args=args
            )

    async def remove(self, provider: str, tasks: Iterable[str]) -> None:
        tasks = list(tasks)
        if not tasks:
            return
        await self._unfence(tasks)
        async with translated("unschedule"), self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._key(provider, "due"), *tasks)
            pipe.zrem(self._key(provider, "lease"), *tasks)
            pipe.hdel(self._key(provider, "owner"), *tasks)
            pipe.hdel(self._key(provider, "state"), *tasks)
            pipe.zrem(self._key(provider, "interest"), *tasks)
            pipe.hdel(self._key(provider, "epoch"), *tasks)
            await pipe.execute()
        known = self._known.get(provider, {})
        for task in tasks:
            known.pop(task, None)

    async def next_due(self, provider: str) -> float | None:
        """The earliest due time — or lease expiry, so a dead node's claims come back."""
        async with translated("schedule read"), self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self._key(provider, "due"), 0, 0, withscores=True)
            pipe.zrange(self._key(provider, "lease"), 0, 0, withscores=True)
            due, lease = await pipe.execute()
        times = [score for _, score in due + lease]
        return min(times) if times else None

    def known(self, provider: str) -> Mapping[str, Entry]:
        return self._known.setdefault(provider, {})
