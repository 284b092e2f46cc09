"""The SSE envelope: retry first, heartbeat comments while idle, the right headers."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.integration.conftest import create_sim_task, events_url, gateway_tasks
from tests.integration.gateway_server import running_gateway, sim_config


async def test_idle_streams_get_ping_comments_and_no_caching_headers(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "running"}])
    doc = sim_config(sim, server={"heartbeat_s": 0.3, "retry_ms": 1234})
    with running_gateway(doc) as (base, _gw):
        raw = b""
        async with client.stream("GET", events_url(base, task)) as reply:
            headers = reply.headers
            started = time.monotonic()
            async for chunk in reply.aiter_bytes():
                raw += chunk
                if time.monotonic() - started > 1.5:
                    break
        ndjson = b""
        async with client.stream(
            "GET", events_url(base, task), headers={"Accept": "application/x-ndjson"}
        ) as reply:
            started = time.monotonic()
            async for chunk in reply.aiter_bytes():
                ndjson += chunk
                if time.monotonic() - started > 1.0:
                    break
        await asyncio.sleep(0)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert raw.startswith(b"retry: 1234\n\n")
    assert raw.count(b": ping\n\n") >= 3  # every 0.3 s while nothing happens
    assert b"event: snapshot\n" in raw
    # NDJSON's heartbeat is a bare newline: every non-empty line is JSON.
    lines = ndjson.split(b"\n")
    assert lines.count(b"") >= 3
    assert all(line.startswith(b"{") for line in lines if line)


STREAMS = 20


async def test_a_stream_holds_one_task_on_the_fast_path_and_ends_when_its_client_leaves(
    sim: str, client: httpx.AsyncClient, http_path: str
) -> None:
    """The fast path hears of a client leaving from uvicorn's request state, with
    no task per stream awaiting ``receive()``; the plain path has that task. Both
    end the stream at once, long before a heartbeat (60 s here) would."""
    quiet = [{"at": 0, "state": "running"}, {"at": 120, "state": "succeeded"}]
    task = await create_sim_task(client, sim, "ailab", quiet)
    doc = sim_config(sim, server={"heartbeat_s": 60.0})
    with running_gateway(doc) as (base, gw):
        host, port = base.removeprefix("http://").split(":")
        path = events_url(base, task).removeprefix(base)
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        streams = []
        for _ in range(STREAMS):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(head.encode())
            got = b""
            while b"event: snapshot" not in got:
                got += await asyncio.wait_for(reader.read(4096), 10)
            streams.append(writer)
        before = gateway_tasks(gw)
        assert len(gw.feeds) == STREAMS
        for writer in streams:
            writer.close()
        started = time.monotonic()
        for _ in range(500):
            if not gw.feeds:
                break
            await asyncio.sleep(0.02)
        ended_s = time.monotonic() - started
        assert not gw.feeds, f"{len(gw.feeds)} streams on {ended_s:.1f} s after their clients left"
        await asyncio.sleep(0.2)  # the handlers' last steps
        after = gateway_tasks(gw)

    per_stream = 1 if http_path == "fast" else 2
    # A poll in flight at either count may add or take a task.
    assert abs(before - after - per_stream * STREAMS) <= 3, (before, after)
    assert ended_s < 5.0
