"""Abuse limits: what one principal or one address may hold or do.

* :class:`RateLimit` — registrations (``POST /v1/tasks``) per principal: a
  token bucket each, refused requests cost nothing, the refusal says when
  the next one fits (429 + ``Retry-After``).
* :class:`WatchQuota` — tasks a principal has registered and that are still
  being watched (each one costs upstream calls until it ends).
* :class:`AddressConnections` — open TCP connections per client address,
  counted by the HTTP protocol guard (gateway/web/connection.py).

With ``backend.kind = "local"`` these are in memory, for the one node.
With the Redis backend the registration rate and the watch quota hold for
the whole cluster (:class:`RedisRateLimit`, :class:`RedisWatchQuota`): a
principal cannot multiply them by spreading its requests over the nodes.
Each is one Lua script on keys of one hash tag (one Redis Cluster slot)::

    P:{reg:<who>}               hash  t (tokens), s (last refill): one bucket a principal
    P:{quota}:held:<who>        set   the tasks a principal holds
    P:{quota}:owners:<task>     set   the principals holding a task (for release)

``<who>`` is a digest of the principal's limit key, never the key itself.
Redis unreachable is a :class:`~gateway.exceptions.BackendError` (503 with
``Retry-After``): registering needs the store anyway. Connections per
address stay per node: they are a node's own resource.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import redis.asyncio as aioredis
from litestar.datastructures import State

from gateway.config import Config
from gateway.core.policy import TokenBucket
from gateway.exceptions import LimitExceeded
from gateway.hub.client import TOKEN_REFILL_LUA
from gateway.hub.redis import translated

__all__ = [
    "AddressConnections",
    "Closable",
    "Limits",
    "RateLimit",
    "RedisRateLimit",
    "RedisWatchQuota",
    "RefundingBucket",
    "WatchQuota",
    "limits_of",
]

# A watched task frees its slot when it ends or is unwatched, which nobody can
# predict; a minute is a polite hint rather than a promise.
WATCH_QUOTA_RETRY_S = 60.0


class RefundingBucket(TokenBucket):
    """A :class:`TokenBucket` whose refused requests cost nothing.

    ``reserve`` books a slot even when it has to wait; a request that is
    refused instead must give it back, or a client hammering a limit would
    push its own next slot ever further away and ``Retry-After`` would lie.
    """

    def try_take(self, now: float) -> float:
        """Take a token if one is there (0.0); else take none and say how long until one is."""
        wait = self.reserve(now)
        if wait > 0:
            self._tokens += 1.0
        return wait

    def idle(self, now: float) -> bool:
        """Full again: forgetting this bucket changes nothing."""
        if self._stamp is None:
            return True
        return self._tokens + (now - self._stamp) * self.rate >= self.capacity


class RateLimit:
    """A :class:`RefundingBucket` per principal, created on first use."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        what: str,
        clock: Callable[[], float] = time.monotonic,
        max_principals: int = 10_000,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.what = what
        self.clock = clock
        self.max_principals = max_principals
        self._buckets: dict[str, RefundingBucket] = {}

    def check(self, who: str) -> None:
        """Count one request of ``who``.

        Raises:
            LimitExceeded: with the seconds until the next request fits.
        """
        now = self.clock()
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= self.max_principals:
                self._forget_idle(now)
            bucket = self._buckets[who] = RefundingBucket(self.rate, burst=self.burst)
        wait = bucket.try_take(now)
        if wait > 0:
            raise LimitExceeded(
                f"too many {self.what}: at most {self.rate:g}/s (bursts of {self.burst:g})",
                retry_after_s=wait,
            )

    def _forget_idle(self, now: float) -> None:
        for who in [w for w, b in self._buckets.items() if b.idle(now)]:
            del self._buckets[who]


class WatchQuota:
    """How many registered, still-watched tasks each principal holds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, set[str]] = {}

    def admit(self, who: str, task: str, still_watched: Callable[[str], bool]) -> None:
        """Count ``task`` against ``who`` (again registering one it holds is free).

        ``still_watched`` tells which held tasks still count: ended and
        unwatched ones are dropped here, lazily, rather than tracked as they end.

        Raises:
            LimitExceeded: ``who`` already holds ``limit`` watched tasks.
        """
        held = self._held.setdefault(who, set())
        if task in held:
            return
        if len(held) >= self.limit:
            held.intersection_update([t for t in held if still_watched(t)])
        if len(held) >= self.limit:
            raise LimitExceeded(
                f"this principal already watches {self.limit} tasks; "
                "unwatch some or wait for them to end",
                field="task",
                retry_after_s=WATCH_QUOTA_RETRY_S,
            )
        held.add(task)

    def release(self, task: str) -> None:
        for held in self._held.values():
            held.discard(task)

    def held(self, who: str) -> int:
        return len(self._held.get(who, ()))


def _who(who: str) -> str:
    """A principal's part of a key: a digest (no braces, no key ids in Redis)."""
    return hashlib.sha256(who.encode()).hexdigest()[:24]


# KEYS: bucket   ARGV: now, rate, burst → "0" taken, else seconds until a token
_TAKE = (
    """
local now = tonumber(ARGV[1])
"""
    + TOKEN_REFILL_LUA
    + """if tokens < 1 then
  return tostring((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens - 1), 's', tostring(stamp))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + 1) * 1000))
return '0'
"""
)

# KEYS: held, owners   ARGV: limit, task, who → 1 admitted, 0 over the quota
_ADMIT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""

# KEYS: owners of the task   ARGV: held-key prefix, task
_RELEASE = """
for _, who in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('SREM', ARGV[1] .. who, ARGV[2])
end
redis.call('DEL', KEYS[1])
return 1
"""


def _over(what: str, rate: float, burst: float, wait: float) -> LimitExceeded:
    return LimitExceeded(
        f"too many {what}: at most {rate:g}/s (bursts of {burst:g})", retry_after_s=wait
    )


def _quota_full(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"this principal already watches {limit} tasks; unwatch some or wait for them to end",
        field="task",
        retry_after_s=WATCH_QUOTA_RETRY_S,
    )


class RedisRateLimit:
    """:class:`RateLimit` for the whole cluster: one refunding bucket per principal in Redis."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        rate_per_s: float,
        burst: float,
        *,
        what: str,
        prefix: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.rate = rate_per_s
        self.burst = burst
        self.what = what
        self.prefix = prefix
        self.clock = clock
        self._take = client.register_script(_TAKE)

    async def check(self, who: str) -> None:
        """Count one request of ``who``, cluster-wide.

        Raises:
            LimitExceeded: with the seconds until the next request fits.
            BackendError: Redis did not answer.
        """
        key = f"{self.prefix}:{{reg:{_who(who)}}}"
        args = [repr(self.clock()), repr(self.rate), repr(self.burst)]
        async with translated("registration limit"):
            wait = float(await self._take(keys=[key], args=args))
        if wait > 0:
            raise _over(self.what, self.rate, self.burst, wait)


class RedisWatchQuota:
    """:class:`WatchQuota` for the whole cluster: each principal's held tasks in Redis."""

    def __init__(
        self, client: aioredis.Redis | aioredis.RedisCluster, limit: int, *, prefix: str
    ) -> None:
        self.redis = client
        self.limit = limit
        self.base = f"{prefix}:{{quota}}:"
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)

    def _held(self, who: str) -> str:
        return f"{self.base}held:{who}"

    def _owners(self, task: str) -> str:
        return f"{self.base}owners:{task}"

    async def admit(self, who: str, task: str, watched: Callable[[], Awaitable[set[str]]]) -> None:
        """Count ``task`` against ``who`` (again registering one it holds is free).

        ``watched`` lists every task the cluster still watches: held tasks
        that ended or were unwatched meanwhile are dropped when the quota is
        reached, before refusing.

        Raises:
            LimitExceeded: ``who`` already holds ``limit`` watched tasks.
            BackendError: Redis did not answer.
        """
        digest = _who(who)
        keys = [self._held(digest), self._owners(task)]
        async with translated("watch quota"):
            if await self._admit(keys=keys, args=[self.limit, task, digest]):
                return
            held = {_text(t) for t in await self.redis.smembers(keys[0])}
            gone = held - await watched()
            if gone:
                await self.redis.srem(keys[0], *gone)
                if await self._admit(keys=keys, args=[self.limit, task, digest]):
                    return
        raise _quota_full(self.limit)

    async def release(self, task: str) -> None:
        async with translated("watch quota"):
            await self._release(keys=[self._owners(task)], args=[f"{self.base}held:", task])

    async def held(self, who: str) -> int:
        async with translated("watch quota"):
            return int(await self.redis.scard(self._held(_who(who))))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Closable(Protocol):
    def is_closing(self) -> bool: ...


class AddressConnections:
    """Open connections per client address; closed ones are pruned lazily.

    Connections are held by their transports: a connection upgraded to a
    WebSocket leaves the HTTP protocol that admitted it, so "open" means
    "its transport is not closing", checked when the address next connects.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, set[Closable]] = {}
        self._admitted = 0

    def admit(self, address: str, transport: Closable) -> bool:
        """Count a new connection from ``address``; ``False`` if it is over the limit."""
        self._admitted += 1
        if self._admitted % 1024 == 0:
            self._sweep()
        held = self._open.setdefault(address, set())
        if len(held) >= self.limit:
            held.difference_update([t for t in held if t.is_closing()])
        if len(held) >= self.limit:
            return False
        held.add(transport)
        return True

    def release(self, address: str, transport: Closable) -> None:
        held = self._open.get(address)
        if held is not None:
            held.discard(transport)
            if not held:
                del self._open[address]

    def count(self, address: str) -> int:
        return len(self._open.get(address, ()))

    def _sweep(self) -> None:
        for address, held in list(self._open.items()):
            held.difference_update([t for t in held if t.is_closing()])
            if not held:
                del self._open[address]


class Limits:
    """The per-principal limits of one app, built from the config: in this node's
    memory, or in Redis for the whole cluster when ``redis`` is given."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        redis: aioredis.Redis | aioredis.RedisCluster | None = None,
    ) -> None:
        auth = config.auth
        what = "task registrations"
        self.registrations = RateLimit(
            auth.registrations_per_s, auth.registration_burst, what=what, clock=clock
        )
        self.watched = WatchQuota(auth.max_watched_tasks)
        self.shared_registrations: RedisRateLimit | None = None
        self.shared_watched: RedisWatchQuota | None = None
        if redis is not None:
            prefix = config.backend.prefix
            self.shared_registrations = RedisRateLimit(
                redis, auth.registrations_per_s, auth.registration_burst, what=what, prefix=prefix
            )
            self.shared_watched = RedisWatchQuota(redis, auth.max_watched_tasks, prefix=prefix)

    async def register(self, who: str) -> None:
        """Count one registration of ``who`` (raises ``LimitExceeded``)."""
        if self.shared_registrations is not None:
            await self.shared_registrations.check(who)
        else:
            self.registrations.check(who)

    async def admit_watch(
        self,
        who: str,
        task: str,
        *,
        here: Callable[[str], bool],
        anywhere: Callable[[], Awaitable[set[str]]],
    ) -> None:
        """Count a watched ``task`` against ``who``: ``here`` says whether this node
        still watches a task, ``anywhere`` lists what the cluster watches."""
        if self.shared_watched is not None:
            await self.shared_watched.admit(who, task, anywhere)
        else:
            self.watched.admit(who, task, here)

    async def release_watch(self, task: str) -> None:
        if self.shared_watched is not None:
            await self.shared_watched.release(task)
        else:
            self.watched.release(task)


def limits_of(state: State) -> Limits:
    return cast(Limits, state.limits)
