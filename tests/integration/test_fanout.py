"""One upstream poll per task, however many subscribers — over SSE and WebSocket."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from tests.integration.conftest import create_sim_task, events_url, sim_stats
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse, read_ws, transitions

SSE_SUBSCRIBERS = 500
WS_SUBSCRIBERS = 100
STEP_S = 1.6


async def test_500_sse_and_100_ws_subscribers_share_one_poll(
    sim: str, client: httpx.AsyncClient
) -> None:
    # Queued long enough for every subscriber to connect, then four transitions,
    # each held for several polls: handing an event to 600 subscribers on a
    # loaded machine can hold this process's loop (and the poller's) for most
    # of a second, and a state the upstream left between two polls is unseen.
    timeline = [
        {"at": 0, "state": "queued"},
        {"at": 6.0, "state": "running", "progress": 10},
        {"at": 6.0 + STEP_S, "state": "running", "progress": 60, "message": "transcoding"},
        {"at": 6.0 + 2 * STEP_S, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "videoproc", timeline)
    with running_gateway(sim_config(sim)) as (base, _gw):
        provider, _, task_id = task.partition(":")
        first = (await client.get(f"{base}/v1/tasks/{provider}/{task_id}")).json()
        assert first["event"] == "snapshot" and first["seq"] == 1

        sse = [
            asyncio.create_task(read_sse(client, events_url(base, task)))
            for _ in range(SSE_SUBSCRIBERS)
        ]
        ws = [
            asyncio.create_task(read_ws(base.replace("http", "ws") + "/v1/ws", [task]))
            for _ in range(WS_SUBSCRIBERS)
        ]
        sse_results = await asyncio.wait_for(asyncio.gather(*sse), 60)
        ws_results = await asyncio.wait_for(asyncio.gather(*ws), 60)

        stats = await sim_stats(client, sim)
        providers = (await client.get(f"{base}/v1/providers")).json()["providers"]
        sent = next(p for p in providers if p["name"] == "videoproc")["requests_sent"]

    for frames in ws_results:
        assert frames[0] == {"event": "subscribed", "tasks": [task]}
    seen = [transitions(got) for got in [*sse_results, *ws_results]]
    expected = min(seen, key=lambda t: t[0][1])  # from the subscriber that came first
    assert expected[0][0] == "snapshot"
    assert expected[-1][2] == "succeeded"
    assert [t[2] for t in expected[1:]] == ["running", "running", "succeeded"]
    seqs = [t[1] for t in expected]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for got in seen:
        # One that connected after a change (600 connections take a while on a
        # busy machine) starts from a later snapshot of the same history: the
        # state at that seq, then the same events, none missing or repeated.
        start = seqs.index(got[0][1])
        assert got[0][0] == "snapshot" and got[0][2:] == expected[start][2:], got
        assert got[1:] == expected[start + 1 :], got
    # One upstream request per poll: the simulator saw exactly what the
    # gateway sent, and that is a handful, not one per subscriber.
    assert stats["tasks"][task] == sent
    assert sent <= (6.0 + 2 * STEP_S) / 0.2 + 5


@pytest.mark.one_http_path  # polling rounds; no streams
async def test_batch_provider_polls_250_tasks_in_3_requests_per_round(
    sim: str, client: httpx.AsyncClient
) -> None:
    n, batch = 250, 100
    tasks = [
        await create_sim_task(client, sim, "aholo", [{"at": 0, "state": "queued"}])
        for _ in range(n)
    ]
    doc = sim_config(sim, providers={"aholo": {"interval_s": 0.3, "max_interval_s": 0.3}})
    with running_gateway(doc) as (base, _gw):
        semaphore = asyncio.Semaphore(50)

        async def watch(task: str) -> None:
            provider, _, task_id = task.partition(":")
            async with semaphore:
                reply = await client.post(
                    f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id}
                )
                assert reply.status_code == 201, reply.text

        await asyncio.gather(*(watch(t) for t in tasks))
        await asyncio.sleep(1.0)  # a round or two to fall into step
        before = await sim_stats(client, sim)
        await asyncio.sleep(2.0)
        after = await sim_stats(client, sim)

    # A sample can land between a round's requests (more likely on a busy
    # machine), so the window holds k whole rounds plus at most one cut at
    # each end: every task polled k or k + 1 times, never more apart.
    polls = {t: after["tasks"][t] - before["tasks"].get(t, 0) for t in tasks}
    low, high = min(polls.values()), max(polls.values())
    assert high - low <= 1, f"tasks were polled unevenly: {sorted(set(polls.values()))}"
    assert low >= 4
    # Batched: each request carried up to 100 tasks, so 3 requests per round
    # — the whole rounds and the (at most two) cut ones.
    requests = after["requests"]["aholo"] - before["requests"]["aholo"]
    per_round = math.ceil(n / batch)
    assert math.ceil(sum(polls.values()) / batch) <= requests <= per_round * (low + 2)
