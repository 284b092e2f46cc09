"""The connection layer under the streams, over raw sockets: hang-ups, pipelining, slow bodies.

The gateway writes streams straight to ASGI and runs uvicorn's protocol with
smaller per-connection objects (gateway/web/lean.py); these are the paths
those objects carry.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import httpx

from tests.integration.conftest import create_sim_task
from tests.integration.gateway_server import running_gateway, sim_config

QUEUED_FOREVER = [{"at": 0, "state": "running", "progress": 5}]


async def open_streams(
    base: str, task: str, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` raw SSE connections to ``task``, each past its snapshot."""
    port = urlsplit(base).port
    assert port is not None
    provider, _, task_id = task.partition(":")
    request = (
        f"GET /v1/tasks/{provider}/{task_id}/events HTTP/1.1\r\n"
        "Host: t\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    streams = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        got = b""
        while b"event: snapshot" not in got:
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            assert chunk, got
            got += chunk
        streams.append((reader, writer))
    return streams


async def test_a_client_that_hangs_up_on_an_idle_stream_is_let_go_at_once(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", QUEUED_FOREVER)
    # Pings every 60 s: only the hang-up itself can tell the gateway.
    doc = sim_config(sim, server={"heartbeat_s": 60.0})
    with running_gateway(doc) as (base, gw):
        streams = await open_streams(base, task, 20)
        assert len(gw.feeds) == 20
        assert gw.poller.followers.get(task) == 20
        hung_up = time.monotonic()
        for _reader, writer in streams:
            writer.close()
        for _ in range(250):  # the gateway runs in another thread: look every 20 ms
            if not gw.feeds:
                break
            await asyncio.sleep(0.02)
        let_go_s = time.monotonic() - hung_up
        metrics = (await client.get(f"{base}/metrics")).text
    assert not gw.feeds
    assert let_go_s < 1.0
    assert gw.poller.followers.get(task, 0) == 0
    assert 'pollcast_subscribers{transport="sse"} 0.0' in metrics


async def test_pipelined_requests_are_answered_in_order(sim: str) -> None:
    with running_gateway(sim_config(sim)) as (base, _gw):
        port = urlsplit(base).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Three requests in one write: the second and third wait their turn.
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /v1/providers/nope HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        replies = [await read_reply(reader) for _ in range(3)]
        writer.close()
    assert [status for status, _ in replies] == [200, 404, 200]
    assert json.loads(replies[0][1])["status"] == "ok"
    assert json.loads(replies[2][1])["status"] == "ready"


async def test_a_request_body_that_arrives_late_and_in_pieces_is_read_whole(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", QUEUED_FOREVER)
    provider, _, task_id = task.partition(":")
    body = json.dumps({"provider": provider, "task_id": task_id}).encode()
    with running_gateway(sim_config(sim)) as (base, _gw):
        port = urlsplit(base).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for piece in (body[:7], body[7:20], body[20:]):
            await asyncio.sleep(0.15)  # the handler is already waiting for the body
            writer.write(piece)
        status, reply = await read_reply(reader)
        writer.close()
    assert status == 201, reply
    assert json.loads(reply)["task"] == task


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    return status, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_a_stream_ends_by_itself_right_after_the_terminal_event(
    sim: str, client: httpx.AsyncClient
) -> None:
    steps = [
        {"at": 0, "state": "running", "progress": 10},
        {"at": 0.6, "state": "running", "progress": 60},
        {"at": 1.2, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "videoproc", steps)
    # No pings for a minute: only the end of the task can end the response.
    doc = sim_config(sim, server={"heartbeat_s": 60.0})
    with running_gateway(doc) as (base, gw):
        streams = await open_streams(base, task, 5)
        bodies = []
        for reader, writer in streams:
            # The response ends (the connection stays, kept alive for another request).
            bodies.append(await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 10))
            writer.close()
        assert not gw.feeds
    for raw in bodies:
        # The chunked body's last chunk (RFC 9112 §7.1) right after the terminal event.
        assert raw.endswith(b"0\r\n\r\n")
        assert b'"state":"succeeded"' in raw.rsplit(b"event: state", 1)[-1]
