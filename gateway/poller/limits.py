"""A provider's request rate, cost budget and concurrency: per node, or for the whole cluster.

Two implementations of one idea, "may one more call go out, and when":

* :class:`LocalLimits` — pure, clock passed in: a token bucket for the rate
  and a strict sliding window for the budget. The planner uses it when the
  node is alone (``backend.kind = "local"``): the limits hold for that node.
* :class:`RedisLimits` — the same limits shared by every node of a cluster,
  each one atomic in one Lua script, each limit's keys in one hash tag (one
  Redis Cluster slot)::

      P:{lim:<provider>}:rate     hash   t (tokens), s (when last refilled)
      P:{lim:<provider>}:budget   zset   call id → when it is sent (the sliding window)
      P:{lim:<provider>}:permits  zset   permit token → when it lapses (concurrency)
      P:{lim:<provider>}:nodes    zset   node id → heartbeat expiry (live nodes)

  A concurrency permit is leased: a node that dies while holding one gives
  it back when its lease lapses (longer than any request may take).

Clocks. The scripts run on the nodes' wall clocks, passed in, as the
schedule's leases do: a node whose clock is behind refills nothing
(``stamp`` never moves back) and sees more calls in the budget window, so
skew makes a node more careful, except for the budget, where a clock ahead
by *d* expires a call *d* seconds early — negligible against an hour.

Fallback. When Redis cannot be reached, a node never becomes more
permissive than its share: it spends nothing on paid calls (what the cluster
spent in the last hour is unknown), and takes ``1/N`` of the rate and of the
concurrency, ``N`` being the number of live nodes it last saw in the
heartbeat key (nothing at all if it never saw one).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis

from gateway.core.policy import CostBudget, TokenBucket
from gateway.hub.client import TOKEN_REFILL_LUA
from gateway.hub.redis import translated
from gateway.metrics import Metrics
from gateway.poller.provider import ProviderRuntime

__all__ = ["Admission", "Limits", "LocalLimits", "RedisLimits", "budget_calls"]

log = logging.getLogger("pollcast.limits")

# Seconds a node asks again for a concurrency permit while all are taken.
PERMIT_POLL_S = 0.05
# A live node's heartbeat lasts this long (the housekeeper beats every <= 5 s).
HEARTBEAT_TTL_S = 20.0
# How long a paid call waits while the shared budget cannot be read.
FALLBACK_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether one call may go: after ``wait_s``, or not now (``limited``)."""

    wait_s: float = 0.0
    # "budget": the cost budget is spent (a budget_limited notice); "rate":
    # the next rate slot is too far away to hold claims for it; retry in wait_s.
    limited: Literal["budget", "rate"] | None = None


class Limits(Protocol):
    """What the lane asks before each call when the limits are shared by a cluster."""

    async def admit(self) -> Admission:
        """Book one call against the rate and the budget (or say why not)."""
        ...

    async def acquire(self) -> str | None:
        """A concurrency permit's token, or ``None`` while all are taken."""
        ...

    async def release(self, token: str) -> None: ...

    async def heartbeat(self) -> None:
        """Count this node as live (the fallback divides by the live nodes)."""
        ...


def budget_calls(rt: ProviderRuntime) -> int | None:
    """How many calls the budget allows per window (``None``: no budget).

    Whole calls, not floating coins (0.1 * 3 > 0.3), as :class:`CostBudget` counts.
    """
    if rt.budget_per_hour is None or rt.cost_per_call <= 0:
        return None
    return int(rt.budget_per_hour / rt.cost_per_call + 1e-9)


class LocalLimits:
    """One node's rate and budget, pure: the caller passes the (monotonic) time."""

    def __init__(self, rate: TokenBucket, budget: CostBudget | None) -> None:
        self.rate = rate
        self.budget = budget

    @classmethod
    def of(cls, rt: ProviderRuntime) -> LocalLimits:
        budget = (
            CostBudget(rt.budget_per_hour, rt.cost_per_call)
            if rt.budget_per_hour is not None and rt.cost_per_call > 0
            else None
        )
        return cls(TokenBucket(rt.rate_per_s), budget)

    def budget_wait(self, now: float) -> float:
        """Seconds until one more call fits the budget (0: it fits now)."""
        return 0.0 if self.budget is None else self.budget.wait_time(now)

    def admit(self, now: float) -> Admission:
        """Book a call: its rate slot (possibly in the future) and its cost at that slot."""
        wait = self.budget_wait(now)
        if wait > 0:
            return Admission(wait, "budget")
        slot = self.rate.reserve(now)
        if self.budget is not None:
            self.budget.spend(now + slot)
        return Admission(slot)


# KEYS: rate, budget   ARGV: now, rate, burst, max_calls (-1: none), window_s, call id, max_wait
# → {ok (1/0), seconds (string), why ("budget"/"rate"/"")}
_ADMIT = (
    """
local now = tonumber(ARGV[1])
local max_calls = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
if max_calls >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) >= max_calls then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    local left = window
    if first[2] then left = math.max(0.001, tonumber(first[2]) + window - now) end
    return {0, tostring(left), 'budget'}
  end
end
"""
    + TOKEN_REFILL_LUA
    + """local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
  if wait > tonumber(ARGV[7]) then
    return {0, tostring(wait), 'rate'}
  end
end
redis.call('HSET', KEYS[1], 't', tostring(tokens - 1), 's', tostring(stamp))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + 60) * 1000))
if max_calls >= 0 then
  redis.call('ZADD', KEYS[2], now + wait, ARGV[6])
  redis.call('PEXPIRE', KEYS[2], math.ceil((window + 60) * 1000))
end
return {1, tostring(wait), ''}
"""
)

# KEYS: permits   ARGV: now, limit, token, until → 1 taken, 0 all in use
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
return 0
"""

# KEYS: nodes   ARGV: now, until, node → live nodes
_HEARTBEAT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) - tonumber(ARGV[1])) * 1000) + 1000)
return redis.call('ZCARD', KEYS[1])
"""


class RedisLimits:
    """One provider's limits for the whole cluster (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        rt: ProviderRuntime,
        *,
        prefix: str = "pollcast",
        node_id: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_wait_s: float = 1.0,
        heartbeat_ttl_s: float = HEARTBEAT_TTL_S,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.provider = rt.name
        self.rate_per_s = rt.rate_per_s
        self.burst = max(1.0, rt.rate_per_s)
        self.concurrency = rt.concurrency
        self.max_calls = budget_calls(rt)
        self.window_s = 3600.0
        # A permit outlives any request (its timeout) with room for the reads around it.
        self.permit_s = 2 * rt.timeout_s + 10.0
        self.node_id = node_id
        self.clock = clock
        self.monotonic = monotonic
        self.max_wait_s = max_wait_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.live_nodes: int | None = None  # as last seen in the heartbeat key
        self.fallbacks = 0  # calls decided without Redis
        self.metrics = metrics
        self._ids = itertools.count(1)
        self._fallback: tuple[int, TokenBucket] | None = None
        self._fallback_held = 0
        self._admit = client.register_script(_ADMIT)
        self._acquire = client.register_script(_ACQUIRE)
        self._beat = client.register_script(_HEARTBEAT)

    def key(self, what: str) -> str:
        return f"{{lim:{self.provider}}}:{what}"

    def _keys(self, *what: str) -> list[str]:
        return [f"{self.prefix}:{self.key(w)}" for w in what]

    def _call_id(self) -> str:
        return f"{self.node_id}:{next(self._ids)}"

    # -- the shared path -------------------------------------------------------

    async def admit(self) -> Admission:
        args: list[Any] = [
            repr(self.clock()),
            repr(self.rate_per_s),
            repr(self.burst),
            -1 if self.max_calls is None else self.max_calls,
            repr(self.window_s),
            self._call_id(),
            repr(self.max_wait_s),
        ]
        try:
            async with translated("limits"):
                ok, seconds, why = await self._admit(keys=self._keys("rate", "budget"), args=args)
        except Exception as exc:
            return self._fallback_admit(exc)
        wait = float(seconds)
        if int(ok):
            return Admission(wait)
        return Admission(wait, "budget" if _text(why) == "budget" else "rate")

    async def acquire(self) -> str | None:
        token = self._call_id()
        now = self.clock()
        try:
            async with translated("limits"):
                taken = await self._acquire(
                    keys=self._keys("permits"),
                    args=[repr(now), self.concurrency, token, repr(now + self.permit_s)],
                )
        except Exception as exc:
            return self._fallback_acquire(exc)
        return token if int(taken) else None

    async def release(self, token: str) -> None:
        if token.startswith("local:"):
            self._fallback_held = max(0, self._fallback_held - 1)
            return
        try:
            async with translated("limits"):
                await self.redis.zrem(self._keys("permits")[0], token)
        except Exception:
            log.warning("could not give back a %s permit; it lapses by itself", self.provider)

    async def heartbeat(self) -> None:
        now = self.clock()
        try:
            async with translated("limits"):
                live = await self._beat(
                    keys=self._keys("nodes"),
                    args=[repr(now), repr(now + self.heartbeat_ttl_s), self.node_id],
                )
        except Exception:
            return  # the last count stands; the fallback divides by it
        self.live_nodes = max(1, int(live))

    # -- without Redis ---------------------------------------------------------

    def _share(self) -> int | None:
        """How many nodes share the limits, as last seen (``None``: never seen)."""
        return self.live_nodes

    def _fell_back(self) -> None:
        self.fallbacks += 1
        if self.metrics is not None:
            self.metrics.limits_fallbacks.labels(self.provider).inc()

    def _fallback_admit(self, exc: BaseException) -> Admission:
        self._fell_back()
        if self.fallbacks == 1 or self.fallbacks % 1000 == 0:
            log.warning(
                "%s limits unreadable (%s); this node takes only its share",
                self.provider,
                type(exc).__name__,
            )
        nodes = self._share()
        if self.max_calls is not None or nodes is None:
            # Paid calls: what the cluster spent this hour is unknown.
            return Admission(FALLBACK_RETRY_S, "budget" if self.max_calls is not None else "rate")
        if self._fallback is None or self._fallback[0] != nodes:
            share = self.rate_per_s / nodes
            self._fallback = (nodes, TokenBucket(share, burst=max(1.0, self.burst / nodes)))
        bucket = self._fallback[1]
        wait = bucket.reserve(self.monotonic())
        if wait > self.max_wait_s:
            bucket._tokens += 1.0  # not taken after all
            return Admission(wait, "rate")
        return Admission(wait)

    def _fallback_acquire(self, exc: BaseException) -> str | None:
        self._fell_back()
        nodes = self._share()
        allowed = 0 if nodes is None else self.concurrency // nodes
        if self._fallback_held >= allowed:
            return None
        self._fallback_held += 1
        return f"local:{self._call_id()}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
