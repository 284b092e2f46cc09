"""The Redis client every Redis-backed part shares: one Redis, or a Redis Cluster.

:func:`connect` is the one entry point (the hub, the schedule and the
webhook outbox call it): a ``redis://`` URL gives a plain client on a
blocking pool; ``redis+cluster://`` (or ``cluster=True``) gives redis-py's
asyncio ``RedisCluster`` seeded from the URL's node, with a pool of
``max_connections`` per node and reads from masters only.

Every Lua script touches the keys of one hash slot. A pipeline that spans
slots is sent non-transactionally: :func:`run_scripts` pipelines script
calls as plain ``EVALSHA`` commands (redis-py's cluster pipeline refuses its
``evalsha`` method) and loads a script on the nodes that do not know it yet
(a new master, a promoted replica) before running those calls again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from gateway.exceptions import BackendError

__all__ = [
    "POOL_WAIT_S",
    "REDIS_ERRORS",
    "TOKEN_REFILL_LUA",
    "Client",
    "Script",
    "connect",
    "is_cluster",
    "raised_in_driver",
    "run_script",
    "run_scripts",
    "translated",
]

Client: TypeAlias = "aioredis.Redis | RedisCluster"

# What redis-py raises when Redis fails: its own errors, the cluster client's
# (not RedisError subclasses) and the socket's.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)

# How long a call waits for a free pooled connection before it fails (503).
POOL_WAIT_S = 2.0

_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


class _BoundedCluster(RedisCluster):
    """A ``RedisCluster`` whose commands wait (at most :data:`POOL_WAIT_S`) for a
    free connection: redis-py's per-node pool raises ``MaxConnectionsError`` at
    once when all of its connections are in use. No more than ``max_connections``
    commands are in flight, so no node's pool runs dry."""

    def __init__(self, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._gate = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(POOL_WAIT_S):
                await self._gate.acquire()
        except TimeoutError:
            raise MaxConnectionsError("no free Redis connection") from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._gate.release()


def connect(url: str, *, max_connections: int = 1000, cluster: bool = False) -> Client:
    """A client whose calls are bounded in time: a slow or dead Redis fails a
    call, it never stalls the event loop's other work.

    The pool blocks for at most :data:`POOL_WAIT_S` when all of its
    ``max_connections`` are in use: redis-py's default asyncio pool raises
    ``MaxConnectionsError`` at once instead, so a burst of reconnecting
    streams beyond its size would fail rather than wait a moment.
    """
    if cluster or url.startswith(_CLUSTER_SCHEMES):
        seed = url.replace("+cluster", "", 1)
        return _BoundedCluster.from_url(
            seed,
            max_connections=max_connections,
            # No load_balancing_strategy: every read goes to the slot's master, so a
            # read never sees less than what a commit on that master just wrote.
            socket_timeout=3.0,
            socket_connect_timeout=2.0,
            # A failover takes a moment: a few quick retries (each after the client
            # re-read the topology), then the call fails and the caller answers 503.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_timeout=3.0,
        socket_connect_timeout=2.0,
        health_check_interval=5,
        retry_on_timeout=False,
        # Once, on a fresh connection, after a connection error: a pooled
        # connection left over from before a Redis restart fails its first
        # command, and that must not cost a request its answer. (Not on a
        # timeout: a command that may have run is not sent again.)
        retry=AsyncRetry(ExponentialBackoff(cap=0.2, base=0.02), 1, (RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """redis-py errors (the cluster client's too: MOVED storms, a cluster down,
    a failover under way) become :class:`BackendError` at this boundary."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, REDIS_ERRORS) or raised_in_driver(exc):
            raise BackendError(f"redis: {what} failed ({type(exc).__name__})") from exc
        raise


def raised_in_driver(exc: BaseException) -> bool:
    """Whether ``exc`` comes from inside redis-py itself: a connection torn down
    under a command while the cluster's topology is re-read can leak an
    ``AttributeError`` (``'NoneType' object has no attribute 'writelines'``)
    instead of a ``ConnectionError``. It is a backend failure like any other."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return isinstance(module, str) and (module == "redis" or module.startswith("redis."))


class Script:
    """A Lua script called by its SHA1, loaded on demand on whichever node lacks it."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


Call: TypeAlias = "tuple[Script, Sequence[str], Sequence[Any]]"


async def _evalsha(client: Client, calls: Sequence[Call]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


# Errors after which a call is sent again: a pooled connection to a master that
# restarted or failed over is found dead only when its reply does not come.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ClusterDownError)
RETRIES = 2
RETRY_PAUSE_S = 0.1


async def run_scripts(client: Client, calls: Sequence[Call]) -> list[Any]:
    """Run script calls in one non-transactional pipeline; their results in order.

    A call that found a node without the script is run again once the script
    is loaded; one that failed on a dead connection is sent again (at most
    :data:`RETRIES` times). Every script here is conditional — a seq check,
    a token check — so a call that did run before its reply was lost is
    refused the second time, never applied twice.

    Raises:
        RedisError: the first error a call returned.
    """
    if not calls:
        return []
    results = await _evalsha(client, calls)
    for attempt in range(RETRIES + 1):
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        lost = [i for i, result in enumerate(results) if isinstance(result, _TRANSIENT)]
        if not missing and (not lost or attempt == RETRIES):
            break
        for script in {calls[i][0].sha: calls[i][0] for i in missing}.values():
            await client.script_load(script.text)  # on a cluster: every master
        if lost:
            await asyncio.sleep(RETRY_PAUSE_S)
        again = sorted(missing + lost)
        for i, result in zip(again, await _evalsha(client, [calls[i] for i in again]), strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


async def run_script(
    client: Client, script: Script, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    return (await run_scripts(client, [(script, keys, args)]))[0]


# A token bucket in a hash (``t`` tokens, ``s`` stamp) at KEYS[1]; ARGV[1] now,
# ARGV[2] rate, ARGV[3] burst; ``now`` is a Lua local the script defines first.
# Refills ``tokens`` up to ``now`` (the caller stores them back).
TOKEN_REFILL_LUA = """
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 't') or ARGV[3])
local stamp = tonumber(redis.call('HGET', KEYS[1], 's') or ARGV[1])
if now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) * rate)
  stamp = now
end
"""
