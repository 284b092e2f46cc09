"""The Redis outbox translates every failure of redis-py, the cluster client's included."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import ClusterDownError, RedisClusterException

from gateway.exceptions import BackendError
from gateway.webhooks.redis_outbox import RedisOutbox


class FailingCluster:
    """A cluster client that answers PING, then fails every call the way a cluster does
    when it loses its slots: with a ``RedisClusterException``, which is no ``RedisError``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None

    def register_script(self, _source: str) -> Callable[..., Awaitable[Any]]:
        async def run(**_kw: Any) -> Any:
            raise self.error

        return run

    def __getattr__(self, _name: str) -> Callable[..., Awaitable[Any]]:
        async def call(*_args: Any, **_kw: Any) -> Any:
            raise self.error

        return call


@pytest.mark.parametrize(
    "error",
    [RedisClusterException("slots not covered"), ClusterDownError("CLUSTERDOWN"), OSError(104)],
    ids=["cluster", "cluster-down", "socket"],
)
async def test_every_redis_failure_leaves_the_outbox_as_a_backend_error(error: Exception) -> None:
    outbox = RedisOutbox("redis://unused", "t", client=FailingCluster(error))  # type: ignore[arg-type]
    await outbox.start()
    calls: list[Callable[[], Awaitable[object]]] = [
        outbox.epoch,
        outbox.pending,
        lambda: outbox.registrations(),
        lambda: outbox.claim(0.0, 1.0, 10, "token"),
    ]
    for call in calls:
        with pytest.raises(BackendError):
            await call()
