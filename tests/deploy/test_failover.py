"""Real nginx (deploy/nginx.conf) in front of two gateways sharing Redis: kill one,
and clients resume through nginx on the other without losing anything."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.cluster.test_cluster import cluster_doc, story
from tests.deploy.nginx import running_nginx
from tests.integration.conftest import create_sim_task
from tests.integration.gateway_server import GatewayProcess
from tests.redis_server import RedisServer

RECONNECTS: list[str] = []


async def sse_through(client: httpx.AsyncClient, base: str, task: str) -> list[dict[str, Any]]:
    """Follow a task's SSE stream at ``base``, reconnecting there with Last-Event-ID."""
    provider, _, task_id = task.partition(":")
    events: list[dict[str, Any]] = []
    last: str | None = None
    for attempt in range(30):
        if attempt:
            RECONNECTS.append(task)
        try:
            headers = {"Last-Event-ID": last} if last else {}
            url = f"{base}/v1/tasks/{provider}/{task_id}/events"
            async with client.stream("GET", url, headers=headers) as reply:
                if reply.status_code == 204:
                    return events
                event: dict[str, Any] = {}
                async for line in reply.aiter_lines():
                    if line.startswith("id: "):
                        last = line[4:]
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                    elif not line and event:
                        events.append(event)
                        if event.get("terminal") and event["event"] != "notice":
                            return events
                        event = {}
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"no terminal event: {events[-3:]}")


async def ws_through(base: str, task: str) -> list[dict[str, Any]]:
    """One WebSocket subscription through nginx, re-subscribing with ``since``."""
    frames: list[dict[str, Any]] = []
    since: int | None = None
    for attempt in range(30):
        if attempt:
            RECONNECTS.append(task)
        try:
            async with ws_connect(base.replace("http", "ws") + "/v1/ws", proxy=None) as ws:
                msg: dict[str, Any] = {"op": "subscribe", "tasks": [task]}
                if since is not None:
                    msg["since"] = {task: since}
                await ws.send(json.dumps(msg))
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["event"] in ("snapshot", "state", "progress"):
                        frames.append(frame)
                        since = frame["seq"]
                        if frame["terminal"]:
                            return frames
        except (OSError, ConnectionClosed):
            await asyncio.sleep(0.2)
    raise AssertionError(f"no terminal frame: {frames[-3:]}")


async def test_nginx_fails_streams_over_to_the_surviving_gateway(
    sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    steps = [{"at": 0.6 * i, "state": "running", "progress": 10 * i} for i in range(1, 9)]
    timeline = [*steps, {"at": 6.0, "state": "succeeded"}]
    tasks = [await create_sim_task(client, sim, p, timeline) for p in ("videoproc", "ailab")]
    with RedisServer(tmp_path / "redis") as redis:
        doc = cluster_doc(sim, redis.url)
        gateways = [GatewayProcess(doc, tmp_path).start() for _ in range(2)]
        try:
            with running_nginx(
                tmp_path / "nginx", [g.url.removeprefix("http://") for g in gateways]
            ) as nginx:
                sse = [
                    asyncio.create_task(sse_through(client, nginx.url, t))
                    for t in tasks
                    for _ in range(10)
                ]
                ws = [
                    asyncio.create_task(ws_through(nginx.url, t)) for t in tasks for _ in range(4)
                ]
                await asyncio.sleep(1.8)
                gateways[0].signal(signal.SIGKILL)
                gateways[0].wait(5)
                sse_results = await asyncio.wait_for(asyncio.gather(*sse), 60)
                ws_results = await asyncio.wait_for(asyncio.gather(*ws), 60)
        finally:
            for g in gateways:
                g.stop()

    # The kill really cut streams: some clients had to come back through nginx.
    assert len(RECONNECTS) >= 3
    for got in sse_results + ws_results:
        history = story(got)
        seqs = [s for s, *_ in history]
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs  # no gap, no duplicate
        assert history[-1][1] == "succeeded"
        assert seqs[0] <= 2  # they joined early and saw the whole run
