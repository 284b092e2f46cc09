"""Which client ``connect`` makes: one Redis, or a Redis Cluster (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, MovedError, SlotNotCoveredError

from gateway.exceptions import BackendError
from gateway.hub import redis as redis_hub
from gateway.hub.client import connect, translated
from tests.redis_server import RedisServer


async def test_a_redis_url_gives_a_plain_client_on_a_blocking_pool() -> None:
    client = connect("redis://127.0.0.1:1/0", max_connections=7)
    try:
        assert isinstance(client, aioredis.Redis)
        assert isinstance(client.connection_pool, aioredis.BlockingConnectionPool)
        assert client.connection_pool.max_connections == 7
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "cluster"),
    [("redis+cluster://127.0.0.1:7000/0", False), ("redis://127.0.0.1:7000/0", True)],
)
async def test_a_cluster_url_or_the_cluster_setting_gives_a_cluster_client(
    url: str, cluster: bool
) -> None:
    client = connect(url, max_connections=9, cluster=cluster)
    try:
        assert isinstance(client, RedisCluster)
        # Seeded from the URL's node; a pool of max_connections per node.
        assert [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()] == [
            ("127.0.0.1", 7000)
        ]
        assert client.nodes_manager.connection_kwargs["max_connections"] == 9
        assert client.load_balancing_strategy is None  # reads go to each slot's master
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "error",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        MovedError("3999 127.0.0.1:6381"),
        SlotNotCoveredError("slot 12 is not covered"),
    ],
)
async def test_cluster_client_errors_become_backend_errors(error: Exception) -> None:
    with pytest.raises(BackendError, match=r"^redis: commit failed \(\w+\)$"):
        async with translated("commit"):
            raise error


async def test_a_restore_refused_during_a_failover_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(redis_hub.asyncio, "sleep", no_wait)
    calls = 0

    async def restore() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise BackendError("CLUSTERDOWN The cluster is down")

    await redis_hub.RedisHub._run_restore(restore)
    assert calls == 3 and waits == [0.2, 0.4]

    async def never() -> None:
        raise BackendError("still down")

    waits.clear()
    await redis_hub.RedisHub._run_restore(never)  # gives up after about a minute, quietly
    assert len(waits) == redis_hub.RESTORE_ATTEMPTS - 1 and max(waits) == 2.0


async def test_an_error_leaked_by_the_driver_is_a_backend_failure() -> None:
    """redis-py can leak an ``AttributeError`` from a connection torn down under a
    command (its writer is gone); at the boundary that is a backend failure (503),
    not a bug of ours (500)."""
    conn = aioredis.Connection(host="127.0.0.1", port=1)  # never connected: no writer
    with pytest.raises(BackendError, match=r"redis: ping failed \(AttributeError\)"):
        async with translated("ping"):
            await conn._send_packed_command([b"PING\r\n"])


async def test_an_error_of_our_own_inside_a_redis_call_is_not_hidden() -> None:
    with pytest.raises(AttributeError):
        async with translated("ping"):
            None.writelines  # type: ignore[attr-defined]  # noqa: B018


async def test_a_connection_left_from_before_a_redis_restart_does_not_fail_a_command(
    tmp_path: Path,
) -> None:
    """The pool's idle connections are dead after a restart: the first command on
    one is sent again on a fresh connection instead of failing (a 503)."""
    with RedisServer(tmp_path / "redis") as server:
        client = connect(server.url)
        try:
            await client.set("pc-stale:k", "1")  # the pool now holds an open connection
            server.kill()
            server.start()
            assert await client.get("pc-stale:k") == b"1"  # persisted (appendfsync always)
        finally:
            await client.aclose()
