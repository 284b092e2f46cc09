"""Redis restarted under a running cluster, with each persistence setting.

Streams stay open across the restart. Whatever Redis kept, every open
subscriber ends with its task's terminal event, no seq is delivered twice
within an epoch, a store that lost its contents is announced with a
``resync`` notice (after which seqs start again), and polling of every task
with subscribers or a watch resumes from the nodes' own memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.test_cluster import INTERVAL_S, MIX, cluster_doc
from tests.integration.conftest import create_sim_task, events_url, sim_stats
from tests.integration.gateway_server import GatewayProcess
from tests.redis_server import RedisServer

SETTINGS = ["always", "everysec", "none"]
DOWN_S = 1.0
# Redis back up → the listener reconnects within 1 s (its backoff's cap), the
# node schedules its tasks again and ends the backoff of its failing lanes
# (``Poller.retry_now``), which claim at once: one interval on top, and 1.5 s
# of slack for a busy machine (a slow 2-core one measured 2.36 s). Without the
# nudge a lane waits out its own backoff, up to 3.2 s after an outage of 1.4 s;
# the nudge itself is tested with a clock (tests/unit/poller/test_supervision.py).
# Claims stranded by the restart would wait out their 3 s lease.
RESUME_S = 1.0 + INTERVAL_S + 1.5


@pytest.fixture(params=SETTINGS)
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    setting = request.param
    server = (
        RedisServer(tmp_path / "redis", persist=False)
        if setting == "none"
        else RedisServer(tmp_path / "redis", fsync=setting)
    )
    with server:
        yield server


async def listen(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    """One SSE connection, never reconnected: every message until the terminal event."""
    events: list[dict[str, Any]] = []
    async with client.stream("GET", url) as reply:
        assert reply.status_code == 200
        data = ""
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                event = json.loads(data)
                events.append(event)
                data = ""
                if event.get("terminal") and event["event"] != "notice":
                    break
    return events


async def ended(client: httpx.AsyncClient, url: str, within_s: float = 5.0) -> dict[str, Any]:
    """The task at ``url`` once it is terminal (the watched task, which nobody streams),
    or as it is after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        task: dict[str, Any] = (await client.get(url)).json()
        if task.get("terminal") or time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.1)


def epochs(events: list[dict[str, Any]]) -> list[list[int]]:
    """The seqs delivered, split at each ``resync`` notice."""
    split: list[list[int]] = [[]]
    for event in events:
        if event["event"] == "notice" and event.get("code") == "resync":
            split.append([])
        elif event["event"] in ("snapshot", "state", "progress"):
            split[-1].append(event["seq"])
    return split


@pytest.mark.solo
async def test_open_streams_and_polling_survive_a_redis_restart(
    sim: str,
    client: httpx.AsyncClient,
    redis_server: RedisServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    setting = request.node.callspec.params["redis_server"]
    timeline = [
        {"at": 0, "state": "running", "progress": 10},
        {"at": 1.5, "state": "running", "progress": 30},
        {"at": 5.0, "state": "running", "progress": 60},
        {"at": 8.0, "state": "succeeded"},
    ]
    nodes = [GatewayProcess(cluster_doc(sim, redis_server.url), tmp_path).start() for _ in range(2)]
    try:
        # The timelines start when the tasks are made: after the nodes are up, which
        # can take seconds each on a busy machine.
        followed = [await create_sim_task(client, sim, p, timeline) for p in MIX]
        watched = await create_sim_task(client, sim, "ailab", timeline)
        provider, _, task_id = watched.partition(":")
        registered = await client.post(
            f"{nodes[0].url}/v1/tasks", json={"provider": provider, "task_id": task_id}
        )
        assert registered.status_code == 201
        readers = [
            asyncio.create_task(listen(client, events_url(node.url, task)))
            for task in followed
            for node in nodes
        ]
        await asyncio.sleep(2.5)  # every task polled, some seqs delivered
        redis_server.kill()
        await asyncio.sleep(DOWN_S)
        redis_server.start()
        back = time.monotonic()
        before = (await sim_stats(client, sim))["tasks"]
        resumed: dict[str, float] = {}
        while len(resumed) < len(followed) + 1 and time.monotonic() - back < 10:
            now = (await sim_stats(client, sim))["tasks"]
            for task in [*followed, watched]:
                if task not in resumed and now.get(task, 0) > before.get(task, 0):
                    resumed[task] = time.monotonic() - back
            await asyncio.sleep(0.05)
        results = await asyncio.wait_for(asyncio.gather(*readers), 40)
        final = await ended(client, f"{nodes[1].url}/v1/tasks/{provider}/{task_id}")
    finally:
        for node in nodes:
            node.stop()

    assert sorted(resumed) == sorted([*followed, watched]), resumed
    slow = {task: f"{s:.2f} s" for task, s in resumed.items() if s > RESUME_S}
    if slow:  # which task, and what the nodes said about it
        said = [line for n in nodes for line in n.log().splitlines() if "warning" in line]
        raise AssertionError(f"resumed after more than {RESUME_S} s: {slow}; {said[-12:]}")
    assert final["state"] == "succeeded", final
    for got in results:
        assert got[-1]["state"] == "succeeded" and got[-1]["event"] != "notice", got[-3:]
        for seqs in epochs(got):
            # Within an epoch: each seq once, in order, none missing.
            if seqs:
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), got
        resyncs = len(epochs(got)) - 1
        if setting == "always":
            assert resyncs == 0, got
        elif setting == "none":
            assert resyncs >= 1, got
