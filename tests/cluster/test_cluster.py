"""Cluster mode: real gateway processes sharing a real redis-server, or a real
3-master Redis Cluster (the tests marked ``ON_BOTH``).

One upstream poll per task per round across the nodes; a subscriber of any
node gets every transition; a killed node's tasks and subscribers move on;
a restarted Redis is waited out.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.poller.redis_schedule import schedule_key
from tests.integration.conftest import create_sim_task, sim_stats
from tests.integration.gateway_server import GatewayProcess, sim_config
from tests.redis_cluster import RedisCluster, redis_cluster  # noqa: F401 (a fixture)
from tests.redis_server import RedisServer

INTERVAL_S = 0.3
LEASE_S = 3.0


@dataclass
class Store:
    """Where the nodes keep their state: a redis-server of the test's own, or a
    Redis Cluster (the session's, under a prefix of the test's own)."""

    url: str
    prefix: str = "pc"

    def raw(self) -> redis.Redis | redis.RedisCluster:
        """A client on the same store; cluster-aware on a cluster."""
        if self.url.startswith("redis+cluster://"):
            return redis.RedisCluster.from_url(self.url.replace("+cluster", "", 1))
        return redis.Redis.from_url(self.url)


# The most telling tests also run on a real 3-master Redis Cluster.
ON_BOTH = pytest.mark.parametrize("store", ["redis", "redis-cluster"], indirect=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if getattr(request, "param", "redis") == "redis-cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        yield Store(cluster.url, prefix=f"pc-{uuid.uuid4().hex[:8]}")
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    yield Store(server.url)


def cluster_doc(sim: str, redis_url: str, prefix: str = "pc") -> dict[str, Any]:
    fixed = {
        "interval_s": INTERVAL_S,
        "max_interval_s": INTERVAL_S,
        "backoff_max_s": 1.0,
        "rate_per_s": 100,  # tryon's documented 2/s would throttle this test
    }
    return sim_config(
        sim,
        providers={k: fixed for k in ("ailab", "aholo", "tryon", "genpic", "videoproc")},
        backend={"kind": "redis", "url": redis_url, "prefix": prefix, "lease_s": LEASE_S},
    )


@pytest.fixture
def nodes(sim: str, store: Store, tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    doc = cluster_doc(sim, store.url, store.prefix)
    started = [GatewayProcess(doc, tmp_path).start() for _ in range(3)]
    try:
        yield started
    finally:
        for node in started:
            node.stop()


async def follow(
    client: httpx.AsyncClient,
    urls: list[str],
    task: str,
    *,
    first: int = 0,
    refused: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Read one task's SSE stream from ``urls[first]``; when a node goes away,
    carry on from the next one with ``Last-Event-ID``, as EventSource would.
    Each answer other than 200 or 204 is noted in ``refused``."""
    provider, _, task_id = task.partition(":")
    events: list[dict[str, Any]] = []
    last_id: str | None = None
    node = first
    for _attempt in range(40):
        url = f"{urls[node % len(urls)]}/v1/tasks/{provider}/{task_id}/events"
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            async with client.stream("GET", url, headers=headers) as reply:
                if reply.status_code == 204:
                    return events
                if reply.status_code != 200:
                    if refused is not None:
                        refused.append(f"{reply.status_code} {(await reply.aread())[:300]!r}")
                    raise httpx.HTTPError(f"HTTP {reply.status_code}")
                event: dict[str, Any] = {}
                async for line in reply.aiter_lines():
                    if line.startswith("id: "):
                        event["_id"] = line[4:]
                    elif line.startswith("data: "):
                        event.update(json.loads(line[6:]))
                    elif line == "" and "event" in event:
                        events.append(event)
                        if "_id" in event:
                            last_id = event["_id"]
                        if event.get("terminal") and event["event"] != "notice":
                            return events
                        event = {}
        except httpx.HTTPError:
            pass
        node += 1
        await asyncio.sleep(0.2)
    raise AssertionError(f"{task}: no terminal event after 40 connections: {events[-3:]}")


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events if e["event"] in ("state", "progress")]


def story(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["seq"], e["state"], e["progress"]) for e in events if e["event"] != "notice"]


MIX = ["ailab", "aholo", "tryon", "genpic", "videoproc"]


@ON_BOTH
@pytest.mark.solo
async def test_three_nodes_poll_each_task_once_per_round(
    sim: str, nodes: list[GatewayProcess], client: httpx.AsyncClient
) -> None:
    quiet = [{"at": 0, "state": "running"}, {"at": 30, "state": "succeeded"}]
    tasks = [await create_sim_task(client, sim, MIX[i % 5], quiet) for i in range(20)]
    urls = [n.url for n in nodes]
    # 300 subscribers, 15 per task, spread evenly over the three nodes.
    refused: list[str] = []
    readers = [
        asyncio.create_task(follow(client, urls, task, first=j % 3, refused=refused))
        for task in tasks
        for j in range(15)
    ]
    # Everyone connected, every task polled, rounds in step.
    deadline = time.monotonic() + 30.0
    while not set(tasks) <= set((await sim_stats(client, sim))["tasks"]):
        assert time.monotonic() < deadline, "not every task was polled"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    before = await sim_stats(client, sim)
    window = 3.0
    await asyncio.sleep(window)
    after = await sim_stats(client, sim)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    rounds = window / INTERVAL_S
    assert refused == [], refused[:3]  # every subscriber was let in at once
    for task in tasks:
        polled = after["tasks"].get(task, 0) - before["tasks"].get(task, 0)
        # One node polling: ~10 rounds in the window, batch lanes too (their
        # coalescing window does not add to each round); three nodes each
        # polling would be ~30. A busy machine can make rounds late, not more:
        # half the rounds still tells a polled task from one left to a lapsed
        # lease (one poll per LEASE_S).
        assert rounds / 2 <= polled <= rounds + 2, (task, polled)
    for provider in ("aholo", "genpic"):  # 4 tasks each, one request a round
        requests = after["requests"][provider] - before["requests"].get(provider, 0)
        mine = [t for t in tasks if t.startswith(provider)]
        assert all(after["tasks"][t] - before["tasks"][t] == requests for t in mine)

    # Every request the nodes sent reached the simulator, and nothing else did.
    # Polls go on meanwhile, so bracket the simulator's count by the nodes'.
    async def sent() -> int:
        total = 0
        for node in nodes:
            providers = (await client.get(f"{node.url}/v1/providers")).json()["providers"]
            total += sum(p["requests_sent"] for p in providers)
        return total

    low = await sent()
    seen = sum((await sim_stats(client, sim))["requests"].values())
    high = await sent()
    assert low <= seen <= high


@ON_BOTH
async def test_subscribers_on_every_node_see_the_same_sequence(
    sim: str, nodes: list[GatewayProcess], client: httpx.AsyncClient
) -> None:
    timeline = [
        {"at": 0, "state": "queued", "position": 2},
        {"at": 1.5, "state": "running", "progress": 20},
        {"at": 2.5, "state": "running", "progress": 70},
        {"at": 3.5, "state": "succeeded"},
    ]
    tasks = [await create_sim_task(client, sim, p, timeline) for p in ("videoproc", "genpic")]
    urls = [n.url for n in nodes]
    results = await asyncio.gather(
        *(follow(client, urls, t, first=j) for t in tasks for j in range(3 * 4))
    )
    for i, task in enumerate(tasks):
        mine = results[i * 12 : (i + 1) * 12]
        # Whatever node they were on, they agree on what happened after their snapshot.
        finals = {story(r)[-1] for r in mine}
        assert len(finals) == 1 and next(iter(finals))[1] == "succeeded", task
        full = await follow(client, urls, task)
        assert seqs(full) == []  # terminal already: a fresh subscriber gets the snapshot only
        history = story(mine[0])
        for r in mine:
            got = story(r)
            assert [s for s, *_ in got] == list(range(got[0][0], got[-1][0] + 1))
            assert got[-1] == history[-1]


@ON_BOTH
async def test_killing_the_lease_holder_moves_the_task_and_its_subscribers(
    sim: str, nodes: list[GatewayProcess], client: httpx.AsyncClient, store: Store
) -> None:
    timeline = [
        {"at": 0, "state": "running", "progress": 10},
        {"at": 2.0, "state": "running", "progress": 40},
        {"at": 6.0, "state": "running", "progress": 80},
        {"at": 8.0, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "videoproc", timeline)
    # Each poll takes 1 s, so the lease is held most of the time.
    await client.post(
        f"{sim}/_sim/faults",
        json={"provider": "videoproc", "mode": "slow", "delay_s": 1.0, "duration_s": 60},
    )
    urls = [n.url for n in nodes]
    readers = [asyncio.create_task(follow(client, urls, task, first=j % 3)) for j in range(9)]
    owner_key = schedule_key(store.prefix, "videoproc", task, "owner")
    r = store.raw()
    holder = None
    for _ in range(100):
        holder = r.hget(owner_key, task)
        if holder:
            break
        await asyncio.sleep(0.05)
    assert holder is not None, "no node ever claimed the task"
    ids = [(await client.get(f"{n.url}/healthz")).json()["node"] for n in nodes]
    victim = nodes[ids.index(holder.decode())]
    await asyncio.sleep(0.3)
    before = (await sim_stats(client, sim))["tasks"].get(task, 0)
    victim.signal(signal.SIGKILL)
    victim.wait(5)
    # The claim lapses after LEASE_S; a survivor's first poll takes 1 s. The
    # margin is for a busy machine, where a survivor's turn can come late.
    deadline = time.monotonic() + LEASE_S + 6.0
    after = before
    while after <= before + 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        after = (await sim_stats(client, sim))["tasks"].get(task, 0)
    results = await asyncio.wait_for(asyncio.gather(*readers), 40)
    r.close()

    assert after > before + 1, "nobody took the task over after its lease lapsed"
    full = story(results[0])
    for raw in results:
        got = story(raw)
        ordered = [s for s, *_ in got]
        assert ordered == list(range(ordered[0], ordered[-1] + 1)), ordered  # no gaps, no dups
        assert got[-1][1] == "succeeded"
        assert [g for g in got if g[0] >= full[0][0]] == [f for f in full if f[0] >= got[0][0]]


async def test_redis_restart_is_waited_out(
    sim: str, nodes: list[GatewayProcess], client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    timeline = [
        {"at": 0, "state": "running", "progress": 10},
        {"at": 3.0, "state": "running", "progress": 50},
        {"at": 6.0, "state": "succeeded"},
    ]
    tasks = [await create_sim_task(client, sim, p, timeline) for p in MIX]
    urls = [n.url for n in nodes]
    readers = [
        asyncio.create_task(follow(client, urls, t, first=j)) for t in tasks for j in range(3)
    ]
    await asyncio.sleep(1.0)
    redis_server.kill()
    await asyncio.sleep(0.5)
    not_ready = [(await client.get(f"{u}/readyz")).status_code for u in urls]
    await asyncio.sleep(1.0)
    redis_server.start()
    results = await asyncio.wait_for(asyncio.gather(*readers), 60)
    # Every node is ready again once its loops have had a turn on the new Redis.
    for _ in range(100):
        ready = [(await client.get(f"{u}/readyz")).status_code for u in urls]
        if ready == [200, 200, 200]:
            break
        await asyncio.sleep(0.1)

    assert not_ready == [503, 503, 503]
    assert ready == [200, 200, 200]
    for got in results:
        assert story(got)[-1][1] == "succeeded"
        ordered = seqs(got)
        assert ordered == sorted(set(ordered))


async def test_resume_on_another_node_with_cursor_and_since(
    sim: str, nodes: list[GatewayProcess], client: httpx.AsyncClient
) -> None:
    steps = [{"at": 0.5 * i, "state": "running", "progress": 10 * i} for i in range(1, 8)]
    timeline = [*steps, {"at": 4.0, "state": "succeeded"}]
    a = await create_sim_task(client, sim, "videoproc", timeline)
    b = await create_sim_task(client, sim, "ailab", [*steps[:1], {"at": 3.0, "state": "succeeded"}])
    first, second, third = (n.url for n in nodes)

    held: list[dict[str, Any]] = []
    cursor = ""
    async with client.stream("GET", f"{first}/v1/events?tasks={a},{b}") as reply:
        event: dict[str, Any] = {}
        async for line in reply.aiter_lines():
            if line.startswith("id: "):
                cursor = line[4:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
            elif line == "" and event:
                held.append(event)
                event = {}
                if len(held) >= 4:
                    break
    await asyncio.sleep(1.5)
    rest: list[dict[str, Any]] = []
    async with client.stream(
        "GET", f"{second}/v1/events?tasks={a},{b}", headers={"Last-Event-ID": cursor}
    ) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                rest.append(json.loads(line[6:]))
    last = dict(zip((a, b), map(int, cursor[3:].split(".")), strict=True))
    for task in (a, b):
        got = [e["seq"] for e in rest if e["task"] == task and e["event"] != "notice"]
        assert got and got[0] == last[task] + 1, (task, got, last)
        assert got == list(range(got[0], got[-1] + 1))
    assert {e["task"] for e in rest if e.get("terminal")} == {a, b}

    # WebSocket on a third node, resuming task a from seq 2.
    from websockets.asyncio.client import connect as ws_connect

    frames: list[dict[str, Any]] = []
    async with ws_connect(third.replace("http", "ws") + "/v1/ws", proxy=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "tasks": [a], "since": {a: 2}}))
        while True:
            frame = json.loads(await ws.recv())
            frames.append(frame)
            if frame.get("terminal"):
                break
    replay = [f["seq"] for f in frames if f["event"] in ("state", "progress")]
    assert frames[0] == {"event": "subscribed", "tasks": [a]}
    assert replay == list(range(3, replay[-1] + 1))


async def test_rolling_restart_loses_no_terminal_event(
    sim: str, nodes: list[GatewayProcess], client: httpx.AsyncClient
) -> None:
    steps = [{"at": 0.8 * i, "state": "running", "progress": 10 * i} for i in range(1, 10)]
    timeline = [*steps, {"at": 9.0, "state": "succeeded"}]
    tasks = [await create_sim_task(client, sim, p, timeline) for p in ("videoproc", "genpic")]
    urls = [n.url for n in nodes]
    readers = [
        asyncio.create_task(follow(client, urls, t, first=j % 3)) for t in tasks for j in range(15)
    ]
    await asyncio.sleep(1.0)
    drained = []
    for node in nodes:  # one at a time, as a deploy would
        node.signal(signal.SIGTERM)
        drained.append(node.wait(10))
        node.start()
        await asyncio.sleep(1.5)
    results = await asyncio.wait_for(asyncio.gather(*readers), 60)

    assert drained == [0, 0, 0]
    codes = {e.get("code") for r in results for e in r if e["event"] == "notice"}
    assert "server_draining" in codes  # streams were handed over, not cut
    for got in results:
        assert story(got)[-1][1] == "succeeded"
        ordered = seqs(got)
        assert ordered == list(range(ordered[0], ordered[-1] + 1))


async def test_a_poll_slower_than_the_lease_keeps_its_claim(
    sim: str, client: httpx.AsyncClient, redis_server: RedisServer, tmp_path: Path
) -> None:
    doc = cluster_doc(sim, redis_server.url)
    doc["providers"]["videoproc"]["timeout_s"] = 8.0
    task = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    await client.post(
        f"{sim}/_sim/faults",
        json={"provider": "videoproc", "mode": "slow", "delay_s": LEASE_S + 1.5, "duration_s": 60},
    )
    started = [GatewayProcess(doc, tmp_path).start() for _ in range(3)]
    try:
        provider, _, task_id = task.partition(":")
        await client.post(
            f"{started[0].url}/v1/tasks", json={"provider": provider, "task_id": task_id}
        )
        await asyncio.sleep(10.0)
        polled = (await sim_stats(client, sim))["tasks"][task]
    finally:
        for node in started:
            node.stop()
    # One poll at a time: 10 s / (4.5 s per poll + interval) ≈ 2. A lease lapsing
    # mid-poll would let the other two nodes pile in.
    assert 1 <= polled <= 3, polled
