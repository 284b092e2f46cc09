"""Abuse: floods, caps, slow and oversized requests. Each gets its documented answer,
the server stays healthy, and a legitimate subscriber loses nothing meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from tests.integration.conftest import events_url
from tests.integration.gateway_server import running_gateway
from tests.integration.readers import read_sse, read_ws, transitions
from tests.security.conftest import (
    RUNNING,
    backend,
    create_sim_task,
    problem,
    register,
    secured_doc,
    still_serving,
)

HEAD_TIMEOUT_S = 1.0

# Long enough to span an attack, with transitions during it.
STEADY = [
    {"at": 0, "state": "running", "progress": 10},
    {"at": 1.0, "state": "running", "progress": 40},
    {"at": 2.0, "state": "running", "progress": 70},
    {"at": 3.0, "state": "succeeded"},
]


def watch_body(task: str) -> dict[str, str]:
    provider, _, task_id = task.partition(":")
    return {"provider": provider, "task_id": task_id}


async def status_and_close_time(
    host: str, port: int, send: bytes, *, dribble: bytes = b"", every_s: float = 0.25
) -> tuple[int | None, float]:
    """Open a raw connection, send ``send`` (then ``dribble`` now and then);
    the status the server answers (None: closed silently) and when it closed."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if send:
            writer.write(send)

        async def trickle() -> None:
            while dribble:
                await asyncio.sleep(every_s)
                writer.write(dribble)

        trickling = asyncio.create_task(trickle())
        try:
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            trickling.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await trickling
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    elapsed = time.monotonic() - start
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, elapsed


async def kept_alive_then_half_a_head(host: str, port: int) -> tuple[bytes, bytes]:
    """One full request on a connection, then half of a second one; both answers."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        first = head + await asyncio.wait_for(reader.readexactly(length), 5)
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")
        second = await asyncio.wait_for(reader.read(), HEAD_TIMEOUT_S + 1.5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return first, second


async def test_registration_rate_limit_says_when_to_retry(
    sim: str, client: httpx.AsyncClient
) -> None:
    doc = secured_doc(sim, registrations_per_s=1, registration_burst=3)
    with running_gateway(doc) as (base, _gw):
        tasks = [await create_sim_task(client, sim, "videoproc", RUNNING) for _ in range(5)]
        for task in tasks[:3]:
            await register(client, base, task)
        refused = await client.post(f"{base}/v1/tasks", json=watch_body(tasks[3]), headers=backend)
        body = problem(refused, 429, "limit_exceeded")
        assert "registrations" in body["detail"]
        wait = int(refused.headers["retry-after"])
        assert 1 <= wait <= 2
        await asyncio.sleep(wait)
        await register(client, base, tasks[3])  # exactly when it said
        assert (await client.get(f"{base}/healthz")).status_code == 200


async def test_watched_task_cap_per_principal(sim: str, client: httpx.AsyncClient) -> None:
    with running_gateway(secured_doc(sim, max_watched_tasks=2)) as (base, _gw):
        short = [{"at": 0, "state": "running"}, {"at": 0.5, "state": "succeeded"}]
        ending = await create_sim_task(client, sim, "videoproc", short)
        a, b, c = [await create_sim_task(client, sim, "videoproc", RUNNING) for _ in range(3)]
        await register(client, base, ending)
        await register(client, base, a)
        refused = await client.post(f"{base}/v1/tasks", json=watch_body(b), headers=backend)
        body = problem(refused, 429, "limit_exceeded")
        assert "already watches 2 tasks" in body["detail"]
        assert refused.headers["retry-after"] == "60"

        await register(client, base, a)  # the same task again costs nothing
        await asyncio.sleep(1.2)  # `ending` ends: its slot frees itself
        await register(client, base, b)
        problem(await client.post(f"{base}/v1/tasks", json=watch_body(c), headers=backend), 429)
        provider, _, task_id = a.partition(":")
        assert (
            await client.delete(f"{base}/v1/tasks/{provider}/{task_id}", headers=backend)
        ).status_code == 204
        await register(client, base, c)  # unwatching freed one


async def test_per_address_connection_cap(sim: str, client: httpx.AsyncClient) -> None:
    limit = 20
    doc = secured_doc(sim, server={"max_connections_per_ip": limit})
    with running_gateway(doc) as (base, _gw):
        task = await create_sim_task(client, sim, "videoproc", RUNNING)
        token = (await register(client, base, task))["token"]
        await client.aclose()  # its kept-alive connection would hold a slot
        await asyncio.sleep(0.2)
        url = f"{events_url(base, task)}?token={token}"
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(timeout=10, limits=limits, trust_env=False) as streams,
            contextlib.AsyncExitStack() as held,
        ):
            opened = 0
            refused: httpx.Response | None = None
            for _ in range(limit + 1):
                reply = await held.enter_async_context(streams.stream("GET", url))
                if reply.status_code == 429:
                    refused = reply
                    await reply.aread()
                    break
                assert reply.status_code == 200
                opened += 1
            assert refused is not None and opened == limit
            assert refused.headers["retry-after"] == "5"
            assert json.loads(refused.content)["code"] == "too_many_connections"
            with pytest.raises(InvalidStatus) as over:
                await ws_connect(base.replace("http", "ws") + "/v1/ws", proxy=None)
            assert over.value.response.status_code == 429
        # The streams are closed: their slots are free again.
        async with httpx.AsyncClient(timeout=10, trust_env=False) as fresh:
            await still_serving(fresh, base, sim)


@pytest.mark.solo
async def test_500_idle_connections_from_one_address(sim: str, client: httpx.AsyncClient) -> None:
    limit = 100
    doc = secured_doc(
        sim, server={"max_connections_per_ip": limit, "handshake_timeout_s": HEAD_TIMEOUT_S}
    )
    with running_gateway(doc) as (base, _gw):
        task = await create_sim_task(client, sim, "videoproc", STEADY)
        token = (await register(client, base, task))["token"]
        legit = asyncio.create_task(read_sse(client, f"{events_url(base, task)}?token={token}"))
        await asyncio.sleep(0.3)
        host, port = base.removeprefix("http://").split(":")
        # Each sends half a request head, then nothing.
        results = await asyncio.gather(
            *(
                status_and_close_time(host, int(port), b"GET /v1/providers HTTP/1.1\r\nHost: x")
                for _ in range(500)
            )
        )
        statuses = [status for status, _ in results]
        assert set(statuses) <= {408, 429}, set(statuses)
        assert statuses.count(429) >= 500 - limit
        assert 0 < statuses.count(408) <= limit
        # Every one was answered and closed within the head deadline (plus slack).
        assert max(elapsed for _, elapsed in results) < HEAD_TIMEOUT_S + 2.5

        events = await asyncio.wait_for(legit, 10)
        reference = await read_sse(
            client, f"{events_url(base, task)}?token={token}&last_event_id=0"
        )
        assert events[-1]["state"] == "succeeded"
        assert transitions(events[1:]) == transitions(reference)[-len(events[1:]) :]
        await still_serving(client, base, sim)


async def test_slow_and_silent_request_heads_are_cut_off(
    sim: str, client: httpx.AsyncClient
) -> None:
    doc = secured_doc(sim, server={"handshake_timeout_s": HEAD_TIMEOUT_S})
    with running_gateway(doc) as (base, _gw):
        host, port = base.removeprefix("http://").split(":")
        task = await create_sim_task(client, sim, "videoproc", STEADY)
        token = (await register(client, base, task))["token"]
        # A stream and a socket that outlive the head deadline are not cut.
        legit = asyncio.create_task(read_sse(client, f"{events_url(base, task)}?token={token}"))
        ws_url = base.replace("http", "ws") + f"/v1/ws?token={token}"

        async def quiet_socket() -> dict[str, Any]:
            async with ws_connect(ws_url, proxy=None) as ws:
                await asyncio.sleep(HEAD_TIMEOUT_S * 2)
                await ws.send('{"op": "ping"}')
                answer: dict[str, Any] = json.loads(await ws.recv())
                return answer

        socket_answer = asyncio.create_task(quiet_socket())

        silent, dribbled, (first, second) = await asyncio.gather(
            status_and_close_time(host, int(port), b""),
            status_and_close_time(
                host, int(port), b"GET /healthz HTTP/1.1\r\nHost: x\r\n", dribble=b"X-A: b\r\n"
            ),
            kept_alive_then_half_a_head(host, int(port)),
        )
        assert silent[0] is None and HEAD_TIMEOUT_S - 0.1 <= silent[1] < HEAD_TIMEOUT_S + 1.5
        # Trickling headers does not extend the deadline.
        assert dribbled[0] == 408 and HEAD_TIMEOUT_S - 0.1 <= dribbled[1] < HEAD_TIMEOUT_S + 1.5
        # The first request was answered; the next, half-sent head timed out.
        assert first.startswith(b"HTTP/1.1 200 ")
        assert second.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in second

        assert (await asyncio.wait_for(legit, 10))[-1]["state"] == "succeeded"
        assert await asyncio.wait_for(socket_answer, 10) == {"event": "pong"}


async def test_oversized_heads_and_bodies(sim: str, client: httpx.AsyncClient) -> None:
    with running_gateway(secured_doc(sim)) as (base, _gw):
        huge = "x" * 70_000
        problem(
            await client.get(f"{base}/v1/providers", headers={**backend, "X-Pad": huge}),
            431,
            "header_too_large",
        )
        host, port = base.removeprefix("http://").split(":")
        long_url = f"GET /v1/providers?pad={huge} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        # The request line alone is over the limit: 414 (URI too long).
        assert (await status_and_close_time(host, int(port), long_url))[0] == 414
        body = json.dumps({"provider": "videoproc", "task_id": "a", "pad": huge})
        reply = await client.post(
            f"{base}/v1/tasks",
            content=body,
            headers={**backend, "Content-Type": "application/json"},
        )
        problem(reply, 413)
        await still_serving(client, base, sim)


async def test_bad_json_bodies_get_400_never_500(sim: str, client: httpx.AsyncClient) -> None:
    with running_gateway(secured_doc(sim)) as (base, _gw):
        bodies = [
            b"\xff\xfe not json",
            b"[" * 60_000,
            b'{"provider": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
            b'{"tasks": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}",
            b"",
        ]
        for path in ("/v1/tasks", "/v1/tokens"):
            for raw in bodies:
                reply = await client.post(
                    base + path,
                    content=raw,
                    headers={**backend, "Content-Type": "application/json"},
                )
                problem(reply, 400)
        await still_serving(client, base, sim)


@pytest.mark.solo
async def test_websocket_floods_big_frames_and_garbage(sim: str, client: httpx.AsyncClient) -> None:
    doc = secured_doc(sim, server={"ws_frames_per_s": 50})
    with running_gateway(doc) as (base, _gw):
        task = await create_sim_task(client, sim, "videoproc", STEADY)
        token = (await register(client, base, task))["token"]
        ws_url = base.replace("http", "ws") + "/v1/ws"
        legit = asyncio.create_task(read_ws(f"{ws_url}?token={token}", [task]))

        async with ws_connect(ws_url, proxy=None, additional_headers=backend, max_size=None) as ws:

            async def replies(n: int) -> list[dict[str, Any]]:
                """The next ``n`` replies to our frames (task events skipped)."""
                out: list[dict[str, Any]] = []
                async with asyncio.timeout(15):
                    while len(out) < n:
                        frame = json.loads(await ws.recv())
                        if frame["event"] not in ("snapshot", "state", "progress", "notice"):
                            out.append(frame)
                return out

            # 1 MiB in one frame: refused by name, the connection stays.
            await ws.send(json.dumps({"op": "subscribe", "tasks": ["videoproc:" + "x" * 2**20]}))
            (big,) = await replies(1)
            assert big["code"] == "frame_too_large"

            # Garbage and deep nesting.
            for frame in ("not json", "\x00\x01", "[" * 30_000, '{"op":' + "{" * 20_000):
                await ws.send(frame)
            assert [r["code"] for r in await replies(4)] == ["bad_frame"] * 4

            # 1,000 subscribe frames at once: a burst is served, the rest is
            # refused frame by frame, and refusals cost the client nothing later.
            started = time.monotonic()
            subscribe = json.dumps({"op": "subscribe", "tasks": [task]})
            await asyncio.gather(*(ws.send(subscribe) for _ in range(1000)))
            answers = await replies(1000)
            took = time.monotonic() - started
            kinds = [a["event"] if a["event"] != "error" else a["code"] for a in answers]
            assert set(kinds) <= {"subscribed", "rate_limited"}, set(kinds)
            served = kinds.count("subscribed")
            assert 1 <= served <= 100 + 50 * took + 5
            assert kinds.count("rate_limited") >= 1000 - served
            await asyncio.sleep(1.1)
            await ws.send('{"op": "ping"}')
            assert await replies(1) == [{"event": "pong"}]

        frames = await asyncio.wait_for(legit, 15)
        reference = await read_sse(
            client, f"{events_url(base, task)}?last_event_id=0", headers=backend
        )
        assert frames[-1]["state"] == "succeeded"
        got = transitions([f for f in frames if f.get("event") != "snapshot"])
        assert got == transitions(reference)[-len(got) :]
        await still_serving(client, base, sim)
