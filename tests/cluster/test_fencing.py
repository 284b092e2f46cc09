"""A node frozen past its lease cannot write its old reply over newer state.

Two gateway processes share a redis-server. The node polling the task is
stopped (SIGSTOP) while its request is in flight, for longer than the
lease; the other node takes the task over and commits newer progress. When
the frozen node resumes, it reads the reply it was waiting for — older than
what is stored now — and tries to commit it: the commit must be refused
(its claim's token no longer holds the task's lease key) and counted, and
no subscriber may see progress go backwards.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.poller.redis_schedule import schedule_key
from tests.cluster.test_cluster import LEASE_S, cluster_doc, follow, story
from tests.integration.conftest import create_sim_task, sim_stats
from tests.integration.gateway_server import GatewayProcess
from tests.redis_server import RedisServer

SLOW_S = 1.5  # every videoproc reply takes this long
FROZEN_S = LEASE_S + 3.0  # long enough for the other node to take over and commit


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def refused(metrics: str) -> float:
    found = re.search(r"^pollcast_commits_refused_total (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_node_paused_past_its_lease_cannot_commit_its_stale_reply(
    sim: str, client: httpx.AsyncClient, redis_server: RedisServer, tmp_path: Path
) -> None:
    doc: dict[str, Any] = cluster_doc(sim, redis_server.url)
    doc["providers"]["videoproc"]["timeout_s"] = 30.0  # the frozen request must not time out
    steps = [{"at": 0.5 * i, "state": "running", "progress": 3 * i} for i in range(1, 27)]
    nodes = [GatewayProcess(doc, tmp_path).start() for _ in range(2)]
    r = redis.Redis.from_url(redis_server.url)
    try:
        # The timeline starts when the task is made: after the nodes are up, which
        # can take seconds each on a busy machine.
        task = await create_sim_task(
            client, sim, "videoproc", [*steps, {"at": 14.0, "state": "succeeded"}]
        )
        await client.post(
            f"{sim}/_sim/faults",
            json={"provider": "videoproc", "mode": "slow", "delay_s": SLOW_S, "duration_s": 120},
        )
        ids = [(await client.get(f"{n.url}/healthz")).json()["node"] for n in nodes]
        provider, _, task_id = task.partition(":")
        await client.post(
            f"{nodes[0].url}/v1/tasks", json={"provider": provider, "task_id": task_id}
        )

        # Wait for a poll to be in flight: the task claimed and a request arrived since.
        holder = None
        for _ in range(200):
            holder = r.hget(schedule_key("pc", "videoproc", task, "owner"), task)
            if holder:
                break
            await asyncio.sleep(0.02)
        assert holder is not None, "no node ever claimed the task"
        arrived = (await sim_stats(client, sim))["requests"].get("videoproc", 0)
        for _ in range(200):
            if (await sim_stats(client, sim))["requests"].get("videoproc", 0) > arrived:
                break
            await asyncio.sleep(0.02)
        holder = r.hget(schedule_key("pc", "videoproc", task, "owner"), task)
        assert holder is not None
        victim = nodes[ids.index(holder.decode())]
        other = nodes[1 - nodes.index(victim)]
        victim.signal(signal.SIGSTOP)
        reader = asyncio.create_task(follow(client, [other.url], task))
        seq_frozen = int(r.hget(f"pc:{{{task}}}:snap", "seq") or 0)
        # Who holds the claim while the first node is frozen: sampled throughout,
        # since a claim is only held while a poll is in flight.
        owners: set[bytes] = set()
        frozen_until = time.monotonic() + FROZEN_S
        while time.monotonic() < frozen_until:
            owner = r.hget(schedule_key("pc", "videoproc", task, "owner"), task)
            if owner is not None:
                owners.add(owner)
            await asyncio.sleep(0.05)
        seq_thawed = int(r.hget(f"pc:{{{task}}}:snap", "seq") or 0)
        victim.signal(signal.SIGCONT)
        events = await asyncio.wait_for(reader, 40)
        count = refused((await client.get(f"{victim.url}/metrics")).text)
    finally:
        r.close()
        for node in nodes:
            node.stop()

    assert seq_thawed > seq_frozen, "the other node did not commit while the first was frozen"
    assert owners - {holder}, "no other node claimed the task while the first was frozen"
    got = story(events)
    assert got[-1][1] == "succeeded"
    ordered = [seq for seq, *_ in got]
    assert ordered == list(range(ordered[0], ordered[-1] + 1)), ordered  # no gap, no duplicate
    progress = [p for _, state, p in got if state == "running" and p is not None]
    assert progress == sorted(progress), progress  # never backwards
    assert count >= 1, "the frozen node's stale commit was not refused"
