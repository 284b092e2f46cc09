"""A Redis-backed node under a reconnect storm, and with Redis gone.

A thousand streams (re)connecting at once must all be served: the Redis
connection pool waits for a free connection instead of failing the request.
With Redis stopped, a request is answered ``503`` + ``Retry-After`` as
``application/problem+json`` — never ``500``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import create_sim_task
from tests.integration.gateway_server import GatewayProcess, sim_config
from tests.redis_server import RedisServer

STREAMS = 1000
TASKS = 10


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", persist=False) as server:
        yield server


def node_doc(sim: str, redis_url: str) -> dict[str, object]:
    return sim_config(
        sim,
        backend={"kind": "redis", "url": redis_url, "prefix": "load"},
        # Every stream comes from 127.0.0.1: let one address hold them all.
        server={"max_connections_per_ip": 4 * STREAMS},
    )


async def _open_stream(port: int, path: str, start: asyncio.Event) -> int | str:
    """Connect, wait for the starting gun, send the request; the response's status,
    or for an error the status and the problem's body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await start.wait()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(60):
            status_line = await reader.readline()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(status_line.split()[1])
            if status == 200:
                return status
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            body = await reader.readexactly(int(length[1])) if length else b""
        return f"{status} {body.decode(errors='replace')}"
    finally:
        writer.close()


@pytest.mark.solo  # 1,000 connects within the pool's wait: not beside three other workers
async def test_a_thousand_streams_connecting_at_once_are_all_served(
    sim: str, client: httpx.AsyncClient, redis_server: RedisServer, tmp_path: Path
) -> None:
    long = [{"at": 0, "state": "running", "progress": 5}, {"at": 600, "state": "succeeded"}]
    tasks = [await create_sim_task(client, sim, "videoproc", long) for _ in range(TASKS)]
    node = GatewayProcess(node_doc(sim, redis_server.url), tmp_path).start()
    try:
        start = asyncio.Event()
        paths = [
            f"/v1/tasks/videoproc/{tasks[i % TASKS].partition(':')[2]}/events"
            for i in range(STREAMS)
        ]
        openers = [asyncio.create_task(_open_stream(node.port, p, start)) for p in paths]
        await asyncio.sleep(1.0)  # every connection open, none has sent its request yet
        start.set()
        statuses = await asyncio.gather(*openers, return_exceptions=True)
        log = node.log()
    finally:
        node.stop()
    failed = [s for s in statuses if not (isinstance(s, int) and 200 <= s < 300)]
    backend_errors = [line for line in log.splitlines() if "redis" in line.lower()][:5]
    assert failed == [], (len(failed), sorted({repr(s) for s in failed})[:5], backend_errors)
    assert statuses.count(200) == STREAMS


async def test_with_redis_stopped_requests_get_503_and_retry_after(
    sim: str, client: httpx.AsyncClient, redis_server: RedisServer, tmp_path: Path
) -> None:
    task = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    task_id = task.partition(":")[2]
    node = GatewayProcess(node_doc(sim, redis_server.url), tmp_path).start()
    try:
        redis_server.kill()
        replies = [
            await client.get(f"{node.url}/v1/tasks/videoproc/{task_id}/events"),
            await client.get(f"{node.url}/v1/events", params={"tasks": task}),
            await client.get(f"{node.url}/v1/tasks/videoproc/{task_id}"),
            await client.post(
                f"{node.url}/v1/tasks", json={"provider": "videoproc", "task_id": task_id}
            ),
        ]
        alive = (await client.get(f"{node.url}/healthz")).status_code
    finally:
        node.stop()
        redis_server.start()
    for reply in replies:
        assert reply.status_code == 503, (reply.request.url, reply.status_code, reply.text)
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert int(reply.headers["retry-after"]) >= 1
        body = reply.json()
        assert body["status"] == 503 and body["code"] == "backend_unavailable"
        assert "redis://" not in reply.text
    assert alive == 200


async def test_with_redis_stopped_a_websocket_subscribe_gets_an_error_frame_and_stays_open(
    sim: str, client: httpx.AsyncClient, redis_server: RedisServer, tmp_path: Path
) -> None:
    from websockets.asyncio.client import connect as ws_connect

    task = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    node = GatewayProcess(node_doc(sim, redis_server.url), tmp_path).start()
    try:
        async with ws_connect(node.url.replace("http", "ws") + "/v1/ws", proxy=None) as ws:
            redis_server.kill()
            await ws.send(json.dumps({"op": "subscribe", "tasks": [task]}))
            refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps({"op": "ping"}))
            pong = json.loads(await asyncio.wait_for(ws.recv(), 10))
            redis_server.start()
            await asyncio.sleep(1.5)  # the node reconnects
            await ws.send(json.dumps({"op": "subscribe", "tasks": [task]}))
            subscribed = json.loads(await asyncio.wait_for(ws.recv(), 10))
    finally:
        node.stop()
    assert refused["event"] == "error" and refused["code"] == "backend_unavailable", refused
    assert "redis://" not in json.dumps(refused)
    assert pong == {"event": "pong"}
    assert subscribed == {"event": "subscribed", "tasks": [task]}
