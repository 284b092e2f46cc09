"""Bad input gets a precise error, and the gateway stays healthy for the next client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse


@pytest.fixture
def gateway(sim: str) -> Any:
    doc = sim_config(sim, server={"max_tasks_per_ws": 3, "max_tasks_per_stream": 4})
    with running_gateway(doc) as (base, _gw):
        yield base


def problem(reply: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = reply.json()
    assert body["status"] == status and body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.mark.parametrize(
    ("path", "status", "code", "says"),
    [
        ("/v1/tasks/nope/abc", 404, "unknown_provider", "no provider named 'nope'"),
        ("/v1/tasks/nope/abc/events", 404, "unknown_provider", "configured: aholo, ailab"),
        ("/v1/tasks/Bad_Name/abc", 422, "invalid_task", "must match"),
        ("/v1/tasks/ailab/" + "x" * 257, 422, "invalid_task", "257 characters long"),
        ("/v1/tasks/ailab/ab%01cd", 422, "invalid_task", "control characters"),
        ("/v1/tasks/ailab/ab%20cd/events", 422, "invalid_task", "whitespace"),
        ("/v1/tasks/tryon/not-a-number", 422, "invalid_task", "integers"),
        ("/v1/tasks/videoproc/abc/events?last_event_id=-1", 400, "invalid_cursor", "seq"),
        ("/v1/tasks/videoproc/abc/events?last_event_id=1e9", 400, "invalid_cursor", "seq"),
        ("/v1/events?tasks=videoproc:a&cursor=garbage", 400, "invalid_cursor", "c1."),
        ("/v1/events?tasks=videoproc:a,videoproc:b&cursor=c1.3", 400, "invalid_cursor", "covers"),
        ("/v1/events?tasks=a:1,a:2,a:3,a:4,a:5", 400, "too_many_tasks", "limit is 4"),
        ("/v1/events?tasks=nocolon", 422, "invalid_task", "provider:task_id"),
        ("/v1/events?tasks=,,", 400, "bad_request", "at least one"),
        ("/v1/events", 400, None, "tasks"),
    ],
)
async def test_http_bad_input(
    gateway: str, client: httpx.AsyncClient, path: str, status: int, code: str | None, says: str
) -> None:
    body = problem(await client.get(gateway + path), status, code)
    assert says in body["detail"]


async def test_bad_last_event_id_header(gateway: str, client: httpx.AsyncClient) -> None:
    reply = await client.get(
        gateway + "/v1/tasks/videoproc/abc/events", headers={"Last-Event-ID": "DROP TABLE"}
    )
    problem(reply, 400, "invalid_cursor")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "JSON"),
        (b'{"provider": "ailab"}', "task_id"),
        (b'{"provider": "ailab", "task_id": "x", "deadline_s": -5}', "deadline_s"),
        (b'{"provider": "ailab", "task_id": "x", "extra": 1}', "extra"),
        (b'{"provider": "nope", "task_id": "x"}', "no provider named"),
    ],
)
async def test_watch_bad_bodies(
    gateway: str, client: httpx.AsyncClient, body: bytes, says: str
) -> None:
    reply = await client.post(
        gateway + "/v1/tasks", content=body, headers={"content-type": "application/json"}
    )
    assert 400 <= reply.status_code < 500
    assert says in reply.json()["detail"]


async def test_ws_bad_frames_get_error_frames_and_the_connection_stays_open(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    url = gateway.replace("http", "ws") + "/v1/ws"
    async with ws_connect(url, proxy=None, max_size=2**22) as ws:

        async def answer(frame: str | bytes) -> dict[str, Any]:
            """The reply to ``frame``, skipping task events that interleave with it."""
            await ws.send(frame)
            while True:
                reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if reply["event"] not in ("snapshot", "state", "progress", "notice"):
                    return reply

        assert (await answer("not json"))["code"] == "bad_frame"
        assert (await answer("[]"))["code"] == "bad_frame"
        assert (await answer('{"op": "explode"}'))["code"] == "bad_frame"
        assert "tasks" in (await answer('{"op": "subscribe", "tasks": "ailab:x"}'))["message"]
        nested = '{"tasks": ' + "[" * 5000 + "]" * 5000 + ', "op": "subscribe"}'
        assert (await answer(nested))["code"] == "bad_frame"
        big = await answer(json.dumps({"op": "subscribe", "tasks": ["a:" + "x" * 100_000]}))
        assert big["code"] == "frame_too_large"
        bad = await answer('{"op": "subscribe", "tasks": ["nope:1"]}')
        assert bad == {
            "event": "error",
            "code": "unknown_provider",
            "message": bad["message"],
            "task": "nope:1",
        }
        assert (await answer(b'{"op": "ping"}')) == {"event": "pong"}

        # Three subscriptions fit; the fourth is refused by name.
        tasks = [task, "videoproc:b", "videoproc:c"]
        for t in tasks:
            assert await answer(json.dumps({"op": "subscribe", "tasks": [t]})) == {
                "event": "subscribed",
                "tasks": [t],
            }
        refused = await answer('{"op": "subscribe", "tasks": ["videoproc:d"]}')
        assert refused["code"] == "too_many_tasks" and refused["task"] == "videoproc:d"
        assert await answer('{"op": "unsubscribe", "tasks": ["videoproc:c", "x:y"]}') == {
            "event": "unsubscribed",
            "tasks": ["videoproc:c"],
        }
        assert await answer('{"op": "ping"}') == {"event": "pong"}

    # The server is fine for the next client.
    assert (await client.get(gateway + "/healthz")).json()["status"] == "ok"
    assert (await client.get(gateway + "/readyz")).status_code == 200
    # Its snapshot, then (when the task's first poll has not landed yet on a busy
    # machine: an ``unknown`` snapshot) the state that poll finds.
    events = await asyncio.wait_for(
        read_sse(client, events_url(gateway, task), until=lambda e: e["state"] == "running"), 10
    )
    assert events[0]["event"] == "snapshot" and events[-1]["state"] == "running"
    assert [e["state"] for e in events[:-1]] in ([], ["unknown"]), events
