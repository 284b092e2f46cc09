"""The schedule in Redis: one poll per task per round across a cluster.

Per provider (one hash tag, so each script touches a single slot)::

    P:{sched:<provider>}:due       zset  task → due time
    P:{sched:<provider>}:lease     zset  task → lease expiry (claimed, being polled)
    P:{sched:<provider>}:owner     hash  task → node id holding the lease
    P:{sched:<provider>}:state     hash  task → Entry (interval, failures, deadline)
    P:{sched:<provider>}:interest  zset  task → wanted until (subscribers, watches)

``claim`` moves due tasks to ``lease`` atomically (Lua), so two nodes never
poll a task in the same round; a node that dies mid-lease loses its claim
when the lease expires and the next ``claim`` by any node takes the task
back. Nothing needs the nodes to agree on who is alive.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence

import msgspec
import redis.asyncio as aioredis

from gateway.hub.redis import translated
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

# KEYS: due, lease, state, interest, owner   ARGV: now, horizon, lease_until, node, limit
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
for _, task in ipairs(due) do
  redis.call('ZREM', KEYS[1], task)
  local wanted = tonumber(redis.call('ZSCORE', KEYS[4], task) or '0')
  local entry = redis.call('HGET', KEYS[3], task)
  if wanted < now or not entry then
    redis.call('HDEL', KEYS[3], task)
    redis.call('ZREM', KEYS[4], task)
  else
    redis.call('ZADD', KEYS[2], ARGV[3], task)
    redis.call('HSET', KEYS[5], task, ARGV[4])
    table.insert(claimed, entry)
  end
end
return {#expired, claimed}
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

# KEYS: lease, owner   ARGV: node, lease_until, tasks… — extend this node's leases
_RENEW = """
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
  end
end
return 0
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


def _score(at: float) -> float:
    return _FOREVER if math.isinf(at) else at


class RedisSchedule(Schedule):
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "pollcast",
        lease_s: float = 10.0,
        claim_limit: int = 1000,
        node_id: str | None = None,
    ) -> None:
        self.redis = client
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
        self._known: dict[str, dict[str, Entry]] = {}
        self.takeovers: dict[str, int] = {}  # provider → claims taken back from lapsed leases

    def _key(self, provider: str, what: str) -> str:
        return f"{self.prefix}:{{sched:{provider}}}:{what}"

    def _keys(self, provider: str, *what: str) -> list[str]:
        return [self._key(provider, w) for w in what]

    async def close(self) -> None:
        """Give this node's claims back so another node polls them at once (drain)."""
        for provider in list(self._known):
            try:
                async with translated("surrender"):
                    n = await self._surrender(
                        keys=self._keys(provider, "due", "lease", "owner"),
                        args=[self.node_id, time.time()],
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
                args=[entry.task, _encoder.encode(entry), 0.0, _score(keep_until)],
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
        async with translated("claim"):
            taken, raw = await self._claim(
                keys=self._keys(provider, "due", "lease", "state", "interest", "owner"),
                args=[now, horizon, now + self.lease_s, self.node_id, self.claim_limit],
            )
        if taken:
            self.takeovers[provider] = self.takeovers.get(provider, 0) + int(taken)
            log.info("took back %d lapsed claim(s) of %s", taken, provider)
        entries = [_entry_decoder.decode(body) for body in raw]
        known = self._known.setdefault(provider, {})
        for entry in entries:
            known[entry.task] = entry
        return entries

    @property
    def renew_every_s(self) -> float | None:
        return self.lease_s / 3

    async def renew(self, provider: str, tasks: Sequence[str]) -> None:
        async with translated("lease renewal"):
            await self._renew(
                keys=self._keys(provider, "lease", "owner"),
                args=[self.node_id, time.time() + self.lease_s, *tasks],
            )

    async def release(self, provider: str, due: Sequence[tuple[Entry, float]]) -> None:
        if not due:
            return
        args: list[str | float | bytes] = [self.node_id]
        for entry, at in due:
            args += [entry.task, at, _encoder.encode(entry)]
        async with translated("release"):
            await self._release(
                keys=self._keys(provider, "due", "lease", "state", "owner"), args=args
            )

    async def remove(self, provider: str, tasks: Iterable[str]) -> None:
        tasks = list(tasks)
        if not tasks:
            return
        async with translated("unschedule"), self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._key(provider, "due"), *tasks)
            pipe.zrem(self._key(provider, "lease"), *tasks)
            pipe.hdel(self._key(provider, "owner"), *tasks)
            pipe.hdel(self._key(provider, "state"), *tasks)
            pipe.zrem(self._key(provider, "interest"), *tasks)
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
