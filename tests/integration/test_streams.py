"""The SSE envelope: retry first, heartbeat comments while idle, the right headers."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.integration.conftest import create_sim_task, events_url
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
