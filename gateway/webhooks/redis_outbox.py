"""The ``redis`` backend's outbox, shared by every gateway node.

Keys (``P`` is ``backend.prefix``), all under one hash tag so that every
script touches one Redis Cluster slot::

    P:{wh}:targets   HASH  task → WebhookTarget JSON
    P:{wh}:marks     HASH  task → highest seq considered
    P:{wh}:data      HASH  delivery key → Delivery JSON
    P:{wh}:due       ZSET  delivery key, scored by when it is due (Unix s)
    P:{wh}:claims    HASH  delivery key → claim token of the node holding it

A delivery's key is its id and URL (:attr:`Delivery.slot`).

One slot, not shards: enqueue checks the task's mark and stores its
deliveries atomically, and claim takes the due ones of every task in one
script; per-shard tags would need a claim per shard per dispatcher turn for
a store whose load is one enqueue per committed event of a task with a
webhook, far below one master's capacity (README, Scaling).

The delivery id carries the store's epoch (``P:incarnation``, named by the
hub, read here as it is): see :func:`gateway.webhooks.model.delivery_id`.

Every step that reads and writes is one Lua script, so it is atomic on the
server: enqueue compares against the mark, and claim moves a due delivery's
score to the end of its lease — a delivery is handed to exactly one node,
and comes due again only if that node never reports back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from gateway.exceptions import BackendError
from gateway.hub.client import REDIS_ERRORS, connect
from gateway.webhooks.model import Delivery, Registration, WebhookTarget
from gateway.webhooks.outbox import Outbox

__all__ = ["RedisOutbox"]

# KEYS: targets, marks, data, due. ARGV: task, seq, done, then (id, seq, due_at, json)…
_ENQUEUE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local mark = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local stored = 0
for i = 4, #ARGV, 4 do
  if tonumber(ARGV[i + 1]) > mark and redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 3]) == 1 then
    redis.call('ZADD', KEYS[4], ARGV[i + 2], ARGV[i])
    stored = stored + 1
  end
end
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
elseif tonumber(ARGV[2]) > mark then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return stored
"""

# KEYS: due, data, claims. ARGV: now, lease_until, limit, token.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', KEYS[3], id, ARGV[4])
    out[#out + 1] = body
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return out
"""

# KEYS: due, data, claims. ARGV: id, token.
_FINISH = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# KEYS: due, data, claims. ARGV: id, token, due_at, json.
_RETRY = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

_delivery_decoder = msgspec.json.Decoder(Delivery)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_target_decoder = msgspec.json.Decoder(WebhookTarget)
_encode = msgspec.json.encode


class RedisOutbox(Outbox):
    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        max_connections: int = 1000,
        cluster: bool = False,
        client: aioredis.Redis | aioredis.RedisCluster | None = None,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self.cluster = cluster
        self.incarnation_key = f"{prefix}:incarnation"
        self._given = client
        base = f"{prefix}:{{wh}}:"
        self.targets_key = base + "targets"
        self.marks_key = base + "marks"
        self.data_key = base + "data"
        self.due_key = base + "due"
        self.claims_key = base + "claims"
        self._redis: aioredis.Redis | aioredis.RedisCluster | None = None
        self._scripts: dict[str, Any] = {}

    async def start(self) -> None:
        # The hub's kind of client: bounded waits (a Redis that stops answering
        # is a BackendError the delivery loop backs off from) and a blocking
        # pool of the same size, which waits for a free connection instead of
        # failing at once.
        client = self._given or connect(
            self.url, max_connections=self.max_connections, cluster=self.cluster
        )
        try:
            await client.ping()
        except REDIS_ERRORS as exc:
            await client.aclose()
            raise BackendError(
                f"cannot reach Redis for the webhook outbox ({type(exc).__name__})"
            ) from exc
        self._redis = client
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("enqueue", _ENQUEUE),
                ("claim", _CLAIM),
                ("finish", _FINISH),
                ("retry", _RETRY),
            )
        }

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def epoch(self) -> str:
        try:
            value = await self.redis.get(self.incarnation_key)
        except REDIS_ERRORS as exc:
            raise BackendError(f"webhook outbox epoch read failed: {exc}") from exc
        return "" if value is None else _text(value)

    @property
    def redis(self) -> aioredis.Redis | aioredis.RedisCluster:
        if self._redis is None:
            raise BackendError("the webhook outbox is not started")
        return self._redis

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        self.redis  # noqa: B018 (raises if not started)
        try:
            return await self._scripts[script](keys=keys, args=args)
        except REDIS_ERRORS as exc:
            raise BackendError(f"webhook outbox {script} failed: {exc}") from exc

    async def register(self, task: str, target: WebhookTarget, mark: int) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.targets_key, task, _encode(target))
                pipe.hset(self.marks_key, task, mark)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise BackendError(f"webhook registration failed: {exc}") from exc

    async def unregister(self, task: str) -> bool:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self.targets_key, task)
                pipe.hdel(self.marks_key, task)
                removed, _ = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise BackendError(f"webhook unregistration failed: {exc}") from exc
        return bool(removed)

    async def registrations(self, tasks: Sequence[str] | None = None) -> dict[str, Registration]:
        try:
            if tasks is None:
                targets_raw = await self.redis.hgetall(self.targets_key)
                marks_raw = await self.redis.hgetall(self.marks_key)
                pairs = [
                    (_text(task), body, marks_raw.get(task)) for task, body in targets_raw.items()
                ]
            elif not tasks:
                return {}
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hmget(self.targets_key, list(tasks))
                    pipe.hmget(self.marks_key, list(tasks))
                    bodies, marks = await pipe.execute()
                pairs = list(zip(tasks, bodies, marks, strict=True))
        except REDIS_ERRORS as exc:
            raise BackendError(f"webhook lookup failed: {exc}") from exc
        return {
            task: Registration(_target_decoder.decode(body), int(mark or 0))
            for task, body, mark in pairs
            if body is not None
        }

    async def enqueue(
        self, task: str, deliveries: Sequence[Delivery], seq: int, *, done: bool
    ) -> int:
        args: list[Any] = [task, seq, "1" if done else "0"]
        for d in deliveries:
            args += [d.slot, d.seq, repr(d.due_at), _encode(d)]
        keys = [self.targets_key, self.marks_key, self.data_key, self.due_key]
        return int(await self._run("enqueue", keys, args))

    async def claim(self, now: float, lease_until: float, limit: int, token: str) -> list[Delivery]:
        keys = [self.due_key, self.data_key, self.claims_key]
        bodies = await self._run("claim", keys, [repr(now), repr(lease_until), limit, token])
        claimed = [
            msgspec.structs.replace(_delivery_decoder.decode(body), claim=token) for body in bodies
        ]
        return sorted(claimed, key=lambda d: (d.task, d.seq))

    async def finish(self, delivery: Delivery) -> bool:
        keys = [self.due_key, self.data_key, self.claims_key]
        return bool(await self._run("finish", keys, [delivery.slot, delivery.claim or ""]))

    async def retry(self, delivery: Delivery, due_at: float, error: str) -> bool:
        updated = msgspec.structs.replace(
            delivery, attempts=delivery.attempts + 1, last_error=error, due_at=due_at, claim=None
        )
        keys = [self.due_key, self.data_key, self.claims_key]
        args = [delivery.slot, delivery.claim or "", repr(due_at), _encode(updated)]
        return bool(await self._run("retry", keys, args))

    async def pending(self) -> int:
        try:
            return int(await self.redis.zcard(self.due_key))
        except REDIS_ERRORS as exc:
            raise BackendError(f"webhook outbox count failed: {exc}") from exc
