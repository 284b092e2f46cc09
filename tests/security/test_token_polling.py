"""A subscriber token reads what is stored; it never makes the gateway poll.

The scenario: a backend registers a task (and hands its token to a browser),
then deletes the watch. Once the grace period is over the upstream is no
longer asked about that task — and the token's holder opening an SSE stream,
a WebSocket subscription or a snapshot must not start the upstream calls
again. The simulator's request counter is the witness.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect as ws_connect

from tests.integration.conftest import events_url
from tests.integration.gateway_server import running_gateway
from tests.integration.readers import read_sse
from tests.security.conftest import (
    RUNNING,
    backend,
    bearer,
    create_sim_task,
    register,
    secured_doc,
    sim_stats,
)

GRACE_S = 0.5
INTERVAL_S = 0.2  # tests.integration.gateway_server.FAST
# Long enough for several polls at INTERVAL_S, were the task being polled.
WATCH_S = 1.5


@pytest.fixture
def gateway(sim: str) -> Iterator[str]:
    doc = secured_doc(sim)
    doc["polling"] = {**doc.get("polling", {}), "grace_s": GRACE_S}
    with running_gateway(doc) as (base, _gw):
        yield base


async def polls_of(client: httpx.AsyncClient, sim: str, task: str) -> int:
    count: int = (await sim_stats(client, sim))["tasks"].get(task, 0)
    return count


async def until_polling_stops(client: httpx.AsyncClient, sim: str, task: str) -> int:
    """Wait until the upstream is no longer asked about ``task``; the count then."""
    async with asyncio.timeout(15):
        while True:
            before = await polls_of(client, sim, task)
            await asyncio.sleep(GRACE_S + 4 * INTERVAL_S)
            after = await polls_of(client, sim, task)
            if after == before:
                return after


@asynccontextmanager
async def sse_open(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """An SSE stream held open; yields its first event."""
    async with aconnect_sse(client, "GET", url, headers=headers or {}) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            if sse.data:
                yield json.loads(sse.data)
                return
        raise AssertionError("the stream ended without an event")


async def deleted_watch(client: httpx.AsyncClient, gateway: str, sim: str) -> tuple[str, str, int]:
    """A running task registered, its watch deleted and no longer polled: (task, token, polls)."""
    task = await create_sim_task(client, sim, "ailab", RUNNING)
    grant = await register(client, gateway, task)
    assert grant["snapshot"]["state"] == "running", grant
    provider, _, task_id = task.partition(":")
    reply = await client.delete(f"{gateway}/v1/tasks/{provider}/{task_id}", headers=backend)
    assert reply.status_code == 204, reply.text
    polls = await until_polling_stops(client, sim, task)
    assert polls >= 1
    return task, grant["token"], polls


async def test_a_token_reads_a_deleted_watch_without_polling_it_again(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    task, token, polls = await deleted_watch(client, gateway, sim)
    provider, _, task_id = task.partition(":")
    as_subscriber = bearer(token)

    # The stored snapshot, over REST …
    reply = await client.get(f"{gateway}/v1/tasks/{provider}/{task_id}", headers=as_subscriber)
    assert reply.status_code == 200, reply.text
    assert reply.json()["state"] == "running" and reply.json()["event"] == "snapshot"

    # … over SSE (token in the query) and over the WebSocket, both held open.
    ws_base = gateway.replace("http", "ws", 1)
    async with sse_open(client, events_url(gateway, task) + f"?token={token}") as first:
        assert first["event"] == "snapshot" and first["state"] == "running", first
        async with ws_connect(f"{ws_base}/v1/ws?token={token}", proxy=None) as ws:
            await ws.send(json.dumps({"op": "subscribe", "tasks": [task]}))
            subscribed = json.loads(await ws.recv())
            snapshot = json.loads(await ws.recv())
            assert subscribed == {"event": "subscribed", "tasks": [task]}, subscribed
            assert snapshot["event"] == "snapshot" and snapshot["state"] == "running"
            await asyncio.sleep(WATCH_S)
            # A history replay reads the store too.
            replay = await read_sse(
                client,
                events_url(gateway, task) + f"?token={token}",
                headers={"Last-Event-ID": "0"},
                stop_after=1,
            )
            assert replay[0]["event"] == "state" and replay[0]["seq"] == 1, replay
    await asyncio.sleep(GRACE_S + 2 * INTERVAL_S)
    assert await polls_of(client, sim, task) == polls, "a subscriber token restarted polling"


async def test_an_api_key_stream_does_poll_and_a_token_stream_sees_its_events(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    """The counter above can move: a backend's stream makes the gateway poll again,
    and a token stream open alongside gets the live events that polling produces."""
    steps = [{"at": i * 0.5, "state": "running", "progress": i + 1} for i in range(90)]
    task = await create_sim_task(client, sim, "videoproc", steps)
    grant = await register(client, gateway, task)
    provider, _, task_id = task.partition(":")
    reply = await client.delete(f"{gateway}/v1/tasks/{provider}/{task_id}", headers=backend)
    assert reply.status_code == 204
    polls = await until_polling_stops(client, sim, task)

    token_url = events_url(gateway, task) + f"?token={grant['token']}"
    async with sse_open(client, events_url(gateway, task), headers=backend) as first:
        assert first["event"] == "snapshot"
        async with asyncio.timeout(10):
            seen = await read_sse(client, token_url, stop_after=2)
    assert [e["event"] for e in seen] == ["snapshot", "progress"], seen
    assert seen[1]["progress"] > seen[0]["progress"]
    assert await polls_of(client, sim, task) > polls, "an API key's stream did not poll"


async def test_token_snapshots_of_a_task_never_observed_do_not_keep_it_polled(
    sim: str, client: httpx.AsyncClient
) -> None:
    """A task whose polls all fail has nothing stored; a snapshot request used to poll
    it "first" and so kept it wanted. A token asking again and again must not."""
    doc = secured_doc(sim)
    doc["polling"] = {**doc.get("polling", {}), "grace_s": GRACE_S}
    doc["providers"]["ailab"] = {**doc["providers"]["ailab"], "backoff_max_s": 0.2}
    fault = {"provider": "ailab", "mode": "http500", "probability": 1.0, "duration_s": 60}
    with running_gateway(doc) as (gateway, _gw):
        task = await create_sim_task(client, sim, "ailab", RUNNING)
        (await client.post(f"{sim}/_sim/faults", json=fault)).raise_for_status()
        grant = await register(client, gateway, task)
        assert grant["snapshot"]["state"] == "unknown", grant
        provider, _, task_id = task.partition(":")
        reply = await client.delete(f"{gateway}/v1/tasks/{provider}/{task_id}", headers=backend)
        assert reply.status_code == 204

        snapshot_url = f"{gateway}/v1/tasks/{provider}/{task_id}"
        counts = []
        answers = set()
        for _ in range(12):
            reply = await client.get(snapshot_url, headers=bearer(grant["token"]))
            assert reply.status_code in (200, 403), reply.text
            if reply.status_code == 200:
                assert reply.json()["state"] == "unknown"
            answers.add(reply.status_code)
            counts.append(await polls_of(client, sim, task))
            await asyncio.sleep(0.25)
        # Polling ended within the grace period, though the token kept asking …
        assert counts[-1] == counts[-5], counts
        # … and once it had, the task was no longer the token's to read.
        assert 403 in answers
