"""The per-principal limits in Redis, on a real redis-server with an injected clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.exceptions import BackendError, LimitExceeded
from gateway.hub.redis import connect
from gateway.web.limits import RateLimit, RedisRateLimit, RedisWatchQuota
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("web-limits"), persist=False) as s:
        yield s


@pytest.fixture
async def prefix() -> str:
    return f"wl-{uuid.uuid4().hex[:8]}"


async def test_the_bucket_is_shared_and_refusals_cost_nothing(
    server: RedisServer, prefix: str
) -> None:
    now = [1000.0]
    a_client, b_client = connect(server.url), connect(server.url)
    a, b = (
        RedisRateLimit(c, 1.0, 2, what="things", prefix=prefix, clock=lambda: now[0])
        for c in (a_client, b_client)
    )
    local = RateLimit(1.0, 2, what="things", clock=lambda: now[0])
    try:
        await a.check("k1")
        await b.check("k1")
        local.check("k1")
        local.check("k1")
        for limiter in (a, b):
            for _ in range(3):  # hammering does not push the next slot away
                with pytest.raises(LimitExceeded) as refused:
                    await limiter.check("k1")
                assert refused.value.retry_after_s == pytest.approx(1.0)
        with pytest.raises(LimitExceeded) as alone:
            local.check("k1")
        assert alone.value.retry_after_s == pytest.approx(1.0)  # the same answer
        await a.check("k2")  # another principal has its own bucket
        now[0] += 1.0
        await b.check("k1")  # exactly when it said
    finally:
        await a_client.aclose()
        await b_client.aclose()


async def test_the_quota_is_shared_and_forgets_ended_tasks(
    server: RedisServer, prefix: str
) -> None:
    client = connect(server.url)
    quota = RedisWatchQuota(client, 2, prefix=prefix)
    watched = {"p:1", "p:2", "p:3"}

    async def anywhere() -> set[str]:
        return set(watched)

    try:
        await quota.admit("k", "p:1", anywhere)
        await quota.admit("k", "p:2", anywhere)
        await quota.admit("k", "p:2", anywhere)  # held already: free
        await quota.admit("other", "p:1", anywhere)  # the quota is per principal
        with pytest.raises(LimitExceeded, match="already watches 2"):
            await quota.admit("k", "p:3", anywhere)
        watched.discard("p:1")  # ended somewhere in the cluster
        await quota.admit("k", "p:3", anywhere)
        assert await quota.held("k") == 2
        await quota.release("p:3")  # unwatched: freed for every principal holding it
        assert await quota.held("k") == 1
        assert await quota.held("other") == 1
    finally:
        await client.aclose()


async def test_an_unreachable_redis_is_a_backend_error(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "gone", persist=False) as gone:
        url = gone.url
    client = connect(url)
    try:
        with pytest.raises(BackendError):
            await RedisRateLimit(client, 1.0, 2, what="things", prefix="x").check("k")
        with pytest.raises(BackendError):
            await RedisWatchQuota(client, 2, prefix="x").admit("k", "p:1", _nothing)
    finally:
        await client.aclose()


async def _nothing() -> set[str]:
    return set()
