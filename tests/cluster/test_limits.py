"""Limits that hold for the whole cluster: real gateway processes on one redis-server.

The simulator counts what actually reached the upstream: the tryon calls
(0.1 coins each) and when each request arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import create_sim_task, events_url, sim_stats
from tests.integration.gateway_server import GatewayProcess, sim_config
from tests.redis_server import RedisServer
from tests.security.conftest import RUNNING, backend, problem, register, secured_doc

QUIET = [{"at": 0, "state": "running"}, {"at": 120, "state": "succeeded"}]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", persist=False) as server:
        yield server


def start_nodes(
    n: int, sim: str, redis_url: str, tmp_path: Path, tryon: dict[str, Any], **sections: Any
) -> list[GatewayProcess]:
    doc = sim_config(
        sim,
        providers={"tryon": {"interval_s": 0.2, "max_interval_s": 0.2, **tryon}},
        backend={"kind": "redis", "url": redis_url, "prefix": "pc", "lease_s": 3.0},
        **sections,
    )
    nodes: list[GatewayProcess] = []
    try:
        for i in range(n):
            workdir = tmp_path / f"node{i}"
            workdir.mkdir()
            nodes.append(GatewayProcess(doc, workdir).start())
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


async def hold_streams(client: httpx.AsyncClient, urls: list[str], seconds: float) -> None:
    """Keep one SSE subscriber per URL open for ``seconds``."""

    async def read(url: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            async with client.stream("GET", url) as reply:
                async for _ in reply.aiter_bytes():
                    pass

    readers = [asyncio.create_task(read(url)) for url in urls]
    await asyncio.sleep(seconds)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


async def test_three_nodes_share_one_tryon_budget(
    sim: str, redis_server: RedisServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    # 1 coin an hour at 0.1 coins a call: 10 calls, for the cluster.
    nodes = start_nodes(
        3, sim, redis_server.url, tmp_path, {"budget_per_hour": 1.0, "rate_per_s": 50}
    )
    try:
        tasks = [await create_sim_task(client, sim, "tryon", QUIET) for _ in range(30)]
        urls = [events_url(nodes[i % 3].url, task) for i, task in enumerate(tasks)]
        await hold_streams(client, urls, 6.0)
        stats = await sim_stats(client, sim)
    finally:
        for node in nodes:
            node.stop()
    calls = stats["requests"].get("tryon", 0)
    # Every node polled (each has subscribers), yet the cluster spent 1 coin.
    assert 8 <= calls <= 10, stats["requests"]
    assert stats["coins_spent"]["tryon"] <= 1.0


@pytest.mark.solo
async def test_three_nodes_share_one_rate(
    sim: str, redis_server: RedisServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    rate = 4.0  # burst: max(1, rate) = 4
    nodes = start_nodes(3, sim, redis_server.url, tmp_path, {"rate_per_s": rate, "concurrency": 8})
    try:
        tasks = [await create_sim_task(client, sim, "tryon", QUIET) for _ in range(30)]
        urls = [events_url(nodes[i % 3].url, task) for i, task in enumerate(tasks)]
        await hold_streams(client, urls, 6.0)
        stats = await sim_stats(client, sim)
    finally:
        for node in nodes:
            node.stop()
    times = sorted(stats["times"]["tryon"])
    assert len(times) >= 10, "the nodes hardly polled: nothing was limited"
    # Requests in any 1 s window: at most rate + burst (a little slack for
    # the time between a slot being booked and its request arriving).
    worst = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert worst <= rate + rate + 1, (worst, len(times))
    # Over the whole run the cluster kept to the rate, not three times it.
    span = times[-1] - times[0]
    assert len(times) <= rate * span + rate + 2, (len(times), span)


def secured_cluster_doc(sim: str, redis_url: str, **auth: Any) -> dict[str, Any]:
    doc = secured_doc(sim, **auth)
    doc["backend"] = {"kind": "redis", "url": redis_url, "prefix": "pc", "lease_s": 3.0}
    return doc


def watch_body(task: str) -> dict[str, str]:
    provider, _, task_id = task.partition(":")
    return {"provider": provider, "task_id": task_id}


def start_secured(doc: dict[str, Any], tmp_path: Path, n: int) -> list[GatewayProcess]:
    nodes: list[GatewayProcess] = []
    try:
        for i in range(n):
            workdir = tmp_path / f"node{i}"
            workdir.mkdir()
            nodes.append(GatewayProcess(doc, workdir).start())
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


async def test_registration_rate_holds_across_two_nodes(
    sim: str, redis_server: RedisServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    doc = secured_cluster_doc(sim, redis_server.url, registrations_per_s=0.2, registration_burst=3)
    nodes = start_secured(doc, tmp_path, 2)
    try:
        tasks = [await create_sim_task(client, sim, "videoproc", RUNNING) for _ in range(6)]
        codes = []
        for i, task in enumerate(tasks):  # alternate nodes: each alone would allow 3
            reply = await client.post(
                f"{nodes[i % 2].url}/v1/tasks", json=watch_body(task), headers=backend
            )
            codes.append(reply.status_code)
        assert codes == [201, 201, 201, 429, 429, 429], codes
    finally:
        for node in nodes:
            node.stop()


async def test_watch_quota_holds_across_two_nodes(
    sim: str, redis_server: RedisServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    doc = secured_cluster_doc(sim, redis_server.url, max_watched_tasks=2)
    nodes = start_secured(doc, tmp_path, 2)
    try:
        a, b, c = [await create_sim_task(client, sim, "videoproc", RUNNING) for _ in range(3)]
        await register(client, nodes[0].url, a)
        await register(client, nodes[1].url, b)
        refused = await client.post(f"{nodes[0].url}/v1/tasks", json=watch_body(c), headers=backend)
        assert "already watches 2 tasks" in problem(refused, 429, "limit_exceeded")["detail"]
        problem(
            await client.post(f"{nodes[1].url}/v1/tasks", json=watch_body(c), headers=backend), 429
        )
        await register(client, nodes[1].url, a)  # one it holds again: free, on any node
        # Unwatched on one node, the slot is free on the other.
        provider, _, task_id = a.partition(":")
        gone = await client.delete(f"{nodes[0].url}/v1/tasks/{provider}/{task_id}", headers=backend)
        assert gone.status_code == 204
        await register(client, nodes[1].url, c)
    finally:
        for node in nodes:
            node.stop()
