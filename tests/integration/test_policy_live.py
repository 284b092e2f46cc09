"""The polling policy as the simulator sees it: budgets, deadlines, grace, terminal tasks.

The policy itself (delays, Retry-After, budget notices, deadlines) is tested on a
fake clock in tests/unit/poller/; these show what only a live gateway can: the
simulator-counted requests and coins.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.integration.conftest import create_sim_task, events_url, sim_stats
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse


async def test_tryon_cost_budget_is_never_overspent(sim: str, client: httpx.AsyncClient) -> None:
    # 0.5 coins an hour at 0.1 a call: five calls, whatever five tasks want.
    tasks = [
        await create_sim_task(client, sim, "tryon", [{"at": 0, "state": "queued", "position": 2}])
        for _ in range(5)
    ]
    doc = sim_config(
        sim,
        providers={"tryon": {"interval_s": 0.1, "max_interval_s": 0.1, "budget_per_hour": 0.5}},
    )
    with running_gateway(doc) as (base, _gw):
        readers = [
            asyncio.create_task(read_sse(client, events_url(base, t), stop_after=3)) for t in tasks
        ]
        await asyncio.sleep(2.5)
        stats = await sim_stats(client, sim)
        for reader in readers:
            reader.cancel()
        results = await asyncio.gather(*readers, return_exceptions=True)
        budget = next(
            p
            for p in (await client.get(f"{base}/v1/providers")).json()["providers"]
            if p["name"] == "tryon"
        )
    assert stats["requests"]["tryon"] == 5
    assert abs(stats["coins_spent"]["tryon"] - 0.5) < 1e-9
    assert budget["budget_per_hour"] == 0.5 and budget["cost_per_call"] == 0.1
    # Somebody was told why polling slowed down.
    seen = [e for r in results if isinstance(r, list) for e in r]
    assert any(e.get("code") == "budget_limited" for e in seen)


async def test_deadline_expires_a_task_that_never_ends(sim: str, client: httpx.AsyncClient) -> None:
    task = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "running"}])
    provider, _, task_id = task.partition(":")
    with running_gateway(sim_config(sim)) as (base, _gw):
        reply = await client.post(
            f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id, "deadline_s": 1.0}
        )
        assert reply.status_code == 201
        events = await asyncio.wait_for(read_sse(client, events_url(base, task)), 10)
        polled = (await sim_stats(client, sim))["tasks"][task]
        await asyncio.sleep(1.0)
        after = (await sim_stats(client, sim))["tasks"][task]
        watching = (await client.get(f"{base}/v1/providers")).json()["providers"]
    final = events[-1]
    assert final["state"] == "expired" and final["terminal"] is True
    assert final["error"]["code"] == "gateway_deadline"
    assert after == polled  # terminal: never polled again
    assert next(p for p in watching if p["name"] == "ailab")["tasks_polled"] == 0


async def test_unwatched_task_stops_being_polled_after_the_grace_period(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    doc = sim_config(sim, polling={"grace_s": 0.5})
    with running_gateway(doc) as (base, _gw):
        await read_sse(client, events_url(base, task), stop_after=2)
        await asyncio.sleep(2.5)  # grace + housekeeping tick
        stopped = (await sim_stats(client, sim))["tasks"][task]
        await asyncio.sleep(1.0)
        later = (await sim_stats(client, sim))["tasks"][task]
        snapshot = (await client.get(f"{base}/v1/tasks/videoproc/{task.partition(':')[2]}")).json()
    assert later == stopped
    assert snapshot["state"] == "running"  # still served from the store


async def test_watched_task_is_polled_without_subscribers_until_deleted(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    provider, _, task_id = task.partition(":")
    doc = sim_config(sim, polling={"grace_s": 0.3})
    with running_gateway(doc) as (base, _gw):
        reply = await client.post(
            f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id}
        )
        body = reply.json()
        await asyncio.sleep(2.0)
        first = (await sim_stats(client, sim))["tasks"][task]
        await asyncio.sleep(1.0)
        second = (await sim_stats(client, sim))["tasks"][task]
        deleted = await client.delete(f"{base}/v1/tasks/{provider}/{task_id}")
        again = await client.delete(f"{base}/v1/tasks/{provider}/{task_id}")
        await asyncio.sleep(2.0)
        third = (await sim_stats(client, sim))["tasks"][task]
        await asyncio.sleep(1.0)
        fourth = (await sim_stats(client, sim))["tasks"][task]
    assert body["task"] == task and body["snapshot"]["state"] == "running"
    assert body["events_url"] == f"{base}/v1/tasks/{provider}/{task_id}/events"
    assert body["ws_url"] == base.replace("http", "ws") + "/v1/ws"
    assert second > first  # still polled with nobody listening
    assert deleted.status_code == 204
    assert again.status_code == 404 and again.json()["code"] == "not_watched"
    assert fourth == third  # stopped after the grace period


async def test_concurrent_snapshot_requests_share_one_upstream_poll(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "queued"}])
    provider, _, task_id = task.partition(":")
    doc = sim_config(sim, providers={"ailab": {"interval_s": 30, "max_interval_s": 30}})
    with running_gateway(doc) as (base, _gw):
        replies = await asyncio.gather(
            *(client.get(f"{base}/v1/tasks/{provider}/{task_id}") for _ in range(50))
        )
        stats = await sim_stats(client, sim)
    assert {r.status_code for r in replies} == {200}
    assert {r.json()["state"] for r in replies} == {"queued"}
    assert stats["tasks"][task] == 1
