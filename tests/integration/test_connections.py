"""The connection layer under the streams, over raw sockets: hang-ups, pipelining,
slow bodies, and the head limits of WebSocket upgrades.

Every test runs on both HTTP paths (tests/integration/conftest.py): the fast
one — uvicorn's protocol with smaller per-connection objects
(gateway/web/lean.py) and direct writes — and the plain one. The two marked
``fast_path_only`` are about the fast path's stand-ins for uvicorn's pipeline
deque and request-body event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from gateway.web.auth import MAX_TOKEN_CHARS
from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import GatewayProcess, running_gateway, sim_config
from tests.integration.readers import read_sse
from tests.security.conftest import backend, register, secured_doc

QUEUED_FOREVER = [{"at": 0, "state": "running", "progress": 5}]
HEAD_TIMEOUT_S = 1.0
UPGRADE = (
    b"Host: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


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


@pytest.mark.fast_path_only  # gateway/web/lean.py: Pipeline
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


@pytest.mark.fast_path_only  # gateway/web/lean.py: Signal as the request's message event
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


async def test_a_post_body_then_a_pipelined_request_are_both_answered(
    sim: str, client: httpx.AsyncClient
) -> None:
    # The plain path's guard finds the second head after the first's body by
    # its Content-Length; a miscount would meter body bytes as a head, or a head
    # as a body.
    task = await create_sim_task(client, sim, "videoproc", QUEUED_FOREVER)
    provider, _, task_id = task.partition(":")
    body = json.dumps({"provider": provider, "task_id": task_id}).encode()
    with running_gateway(sim_config(sim)) as (base, _gw):
        reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(base).port)
        writer.write(
            b"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b"
            % (len(body), body)
            + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        replies = [await read_reply(reader) for _ in range(2)]
        writer.close()
    assert [status for status, _ in replies] == [201, 200]
    assert json.loads(replies[0][1])["task"] == task


async def answer_and_close(
    port: int, head: bytes, *, dribble: bytes = b"", every_s: float = 0.2
) -> tuple[int | None, dict[str, Any] | None, float]:
    """Send ``head`` on a raw connection (then ``dribble`` now and then): the
    status and problem document answered (``None``: none), and when it closed."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def trickle() -> None:
        while dribble:
            await asyncio.sleep(every_s)
            writer.write(dribble)

    writer.write(head)
    trickling = asyncio.create_task(trickle())
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        trickling.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await trickling
        writer.close()
    elapsed = time.monotonic() - start
    if not data.startswith(b"HTTP/1.1 "):
        return None, None, elapsed
    raw_head, _, raw_body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in raw_head.lower()
    return int(data.split(b" ", 2)[1]), json.loads(raw_body), elapsed


@pytest.mark.solo
async def test_oversized_and_slow_websocket_upgrade_heads_are_answered_and_closed(
    sim: str,
) -> None:
    doc = sim_config(sim, server={"handshake_timeout_s": HEAD_TIMEOUT_S})
    with running_gateway(doc) as (base, _gw):
        port = urlsplit(base).port
        assert port is not None
        long_line = b"GET /v1/ws?token=" + b"x" * 70_000 + b" HTTP/1.1\r\n" + UPGRADE + b"\r\n"
        big_field = b"GET /v1/ws HTTP/1.1\r\n" + UPGRADE + b"X-Pad: " + b"y" * 70_000 + b"\r\n\r\n"
        many = b"".join(b"X-Pad-%d: z\r\n" % i for i in range(129))
        many_fields = b"GET /v1/ws HTTP/1.1\r\n" + UPGRADE + many + b"\r\n"
        # Trickled one field at a time: the deadline does not move.
        slow = b"GET /v1/ws HTTP/1.1\r\n" + UPGRADE
        results = await asyncio.gather(
            answer_and_close(port, long_line),
            answer_and_close(port, big_field),
            answer_and_close(port, many_fields),
            answer_and_close(port, slow, dribble=b"X-Slow: a\r\n"),
        )
    (line, _, _), (field, _, _), (count, _, _), (late, _, _) = results
    assert line == 414 and _code(results[0]) == "request_line_too_long"
    assert field == 431 and _code(results[1]) == "header_too_large"
    assert count == 431 and _code(results[2]) == "header_too_large"
    assert late == 408 and _code(results[3]) == "request_timeout"
    assert all(elapsed < HEAD_TIMEOUT_S + 1.5 for _, _, elapsed in results), results
    assert results[3][2] >= HEAD_TIMEOUT_S - 0.1


def _code(result: tuple[int | None, dict[str, Any] | None, float]) -> str | None:
    problem = result[1]
    return None if problem is None else problem["code"]


async def test_a_websocket_opens_with_a_token_for_the_most_tasks_a_socket_may_follow(
    sim: str, client: httpx.AsyncClient
) -> None:
    doc = secured_doc(sim)
    with running_gateway(doc) as (base, gw):
        task = await create_sim_task(client, sim, "videoproc", QUEUED_FOREVER)
        await register(client, base, task)
        limit = gw.config.server.max_tasks_per_ws
        # The longest task keys there are, as many as one socket may follow.
        others = [f"videoproc:{i:03d}" + "k" * 253 for i in range(limit - 1)]
        minted = await client.post(
            f"{base}/v1/tokens", json={"tasks": [task, *others]}, headers=backend
        )
        assert minted.status_code == 201, minted.text
        token = minted.json()["token"]
        # Far past websockets' own 8 KB line limit, within the gateway's.
        assert 8192 * 4 < len(token) <= MAX_TOKEN_CHARS
        url = base.replace("http", "ws") + f"/v1/ws?token={token}"
        async with ws_connect(url, proxy=None, open_timeout=10) as ws:
            await ws.send(json.dumps({"op": "subscribe", "tasks": [task]}))
            subscribed = json.loads(await asyncio.wait_for(ws.recv(), 10))
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert subscribed == {"event": "subscribed", "tasks": [task]}
    assert snapshot["task"] == task and snapshot["event"] == "snapshot"


@pytest.mark.one_http_path  # it picks its own path: the one a changed uvicorn leaves
async def test_a_uvicorn_the_fast_paths_do_not_know_still_serves_every_stream(
    sim: str, client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A uvicorn installed by hand: the child process sees another version.
    (tmp_path / "sitecustomize.py").write_text('import uvicorn\nuvicorn.__version__ = "0.99.0"\n')
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    steps = [{"at": 0, "state": "running", "progress": 10}, {"at": 0.5, "state": "succeeded"}]
    task = await create_sim_task(client, sim, "videoproc", steps)
    gateway = GatewayProcess(sim_config(sim), tmp_path, expect_path="plain").start()
    try:
        events = await asyncio.wait_for(read_sse(client, events_url(gateway.url, task)), 15)
        log = gateway.log()
    finally:
        gateway.stop()
    assert events[0]["event"] == "snapshot" and events[-1]["state"] == "succeeded"
    lines = log.splitlines()
    warnings = [line for line in lines if " warning " in line and "fast paths" in line]
    assert len(warnings) == 1, log
    # And the start-up line says which path runs.
    assert any("HTTP fast paths off (uvicorn internals differ)" in line for line in lines), log
    assert "uvicorn 0.99.0 differs" in warnings[0] and "uvicorn 0.99.0 is not 0.54.x" in warnings[0]
