"""Hostile input from authenticated callers: forged cursors, huge and strange ids.

Each gets its documented 4xx problem (or WebSocket error frame), never a 5xx,
and reaches no upstream.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import connect as ws_connect

from tests.integration.conftest import events_url
from tests.security.conftest import (
    RUNNING,
    backend,
    bearer,
    create_sim_task,
    problem,
    register,
    sim_stats,
    still_serving,
)

HUGE_ID = "x" * 10_000

FORGED_LAST_EVENT_IDS = [
    "-1",
    "1e9",
    "0x10",
    "１２",  # fullwidth digits: isdigit() but not ASCII
    "9" * 21,
    str(2**53 + 1),
    "c1.3.4",
    "3; DROP TABLE",
    "\u00ff\u00fe",
]
FORGED_CURSORS = [
    "garbage",
    "c1.",
    "c1.1",  # covers one task, the stream has two
    "c1.1.2.3",
    "c1.-1.2",
    "c1.1." + "9" * 17,
    "c2.1.2",
    "c1." + ".".join(["1"] * 5000),
    "c1.1.\u0661",  # Arabic-Indic digit one
]


async def test_forged_last_event_ids_and_cursors_are_400(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    a = await create_sim_task(client, sim, "videoproc", RUNNING)
    b = await create_sim_task(client, sim, "videoproc", RUNNING)
    token = (await register(client, gateway, a))["token"]
    await register(client, gateway, b)
    both = await client.post(f"{gateway}/v1/tokens", json={"tasks": [a, b]}, headers=backend)
    mux_token = both.json()["token"]

    async def attempts() -> list[httpx.Response]:
        replies = []
        for raw in FORGED_LAST_EVENT_IDS:
            replies.append(
                await client.get(
                    events_url(gateway, a),
                    headers={**bearer(token), "Last-Event-ID": raw.encode()},
                )
            )
            replies.append(
                await client.get(
                    events_url(gateway, a), params={"last_event_id": raw, "token": token}
                )
            )
        for raw in FORGED_CURSORS:
            replies.append(
                await client.get(
                    f"{gateway}/v1/events",
                    params={"tasks": f"{a},{b}", "cursor": raw, "token": mux_token},
                )
            )
            replies.append(
                await client.get(
                    f"{gateway}/v1/events?tasks={a},{b}",
                    headers={**bearer(mux_token), "Last-Event-ID": raw.encode()},
                )
            )
        return replies

    for reply in await attempts():
        body = problem(reply, 400, "invalid_cursor")
        assert body["field"] in ("last_event_id", "cursor")
    # Raw bytes that are not even text.
    raw_header = await client.get(
        events_url(gateway, a), headers={**backend, "Last-Event-ID": b"\xff\x80\xfe"}
    )
    problem(raw_header, 400, "invalid_cursor")
    await still_serving(client, gateway, sim)


HOSTILE_PATHS: list[tuple[str, int, str | None]] = [
    (f"/v1/tasks/videoproc/{HUGE_ID}", 422, "invalid_task"),
    (f"/v1/tasks/videoproc/{HUGE_ID}/events", 422, "invalid_task"),
    (f"/v1/events?tasks=videoproc:{HUGE_ID}", 422, "invalid_task"),
    (f"/v1/tasks/{'p' * 10_000}/1", 422, "invalid_task"),
    ("/v1/tasks/videoproc/ab%00cd", 422, "invalid_task"),
    ("/v1/tasks/videoproc/ab%1bcd/events", 422, "invalid_task"),
    ("/v1/tasks/videoproc/ab%0d%0aSet-Cookie:x", 422, "invalid_task"),
    ("/v1/tasks/videoproc/%e2%80%8b", 422, "invalid_task"),  # zero-width space
    # Dot segments are resolved (RFC 3986 §5.2.4) before routing: no escape.
    ("/v1/tasks/videoproc/../../../etc/passwd", 404, None),
    ("/v1/tasks/videoproc/%2e%2e", 422, "invalid_task"),
    ("/v1/events?tasks=videoproc:..", 422, "invalid_task"),
    ("/v1/tasks/videoproc/..%2F..%2Fetc%2Fpasswd", 404, None),  # not a route: no such path
    ("/v1/tasks/videoproc/a/../../../../etc/passwd", 404, None),
    ("/v1/tasks/nope/1", 404, "unknown_provider"),
    ("/v1/tasks/nope/1/events", 404, "unknown_provider"),
    ("/v1/events?tasks=nope:1,videoproc:2", 404, "unknown_provider"),
    ("/v1/events?tasks=NOPE:1", 422, "invalid_task"),
    (
        "/v1/events?tasks=" + ",".join(f"videoproc:{i}" for i in range(101)),
        400,
        "too_many_tasks",
    ),
    ("/v1/tasks/tryon/1%3B2", 422, "invalid_task"),
]


async def test_hostile_ids_and_paths(gateway: str, sim: str, client: httpx.AsyncClient) -> None:
    for path, status, code in HOSTILE_PATHS:
        # A raw target: httpx would otherwise normalize dot segments away.
        request = client.build_request("GET", gateway + "/", headers=backend)
        request.url = request.url.copy_with(raw_path=path.encode())
        reply = await client.send(request)
        try:
            problem(reply, status, code)
        except AssertionError as exc:
            raise AssertionError(f"{path[:80]}: {exc}") from None
    stats = await sim_stats(client, sim)
    assert sum(stats["requests"].values()) == 0  # nothing reached an upstream


async def test_hostile_ids_in_bodies_and_frames(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    bodies: list[tuple[dict[str, Any], int, str]] = [
        ({"provider": "videoproc", "task_id": HUGE_ID}, 422, "invalid_task"),
        ({"provider": "videoproc", "task_id": "a\u0000b"}, 422, "invalid_task"),
        ({"provider": "videoproc", "task_id": "a\u2028b"}, 422, "invalid_task"),
        ({"provider": "../videoproc", "task_id": "a"}, 422, "invalid_task"),
        ({"provider": "nope", "task_id": "a"}, 404, "unknown_provider"),
        ({"provider": "tryon", "task_id": "1 OR 1=1"}, 422, "invalid_task"),
    ]
    for body, status, code in bodies:
        problem(await client.post(f"{gateway}/v1/tasks", json=body, headers=backend), status, code)

    frames = [
        ([f"videoproc:{HUGE_ID}"], "invalid_task"),
        (["videoproc:a\u0007b"], "invalid_task"),
        (["videoproc:.."], "invalid_task"),
        (["nope:1"], "unknown_provider"),
        (["no-colon"], "invalid_task"),
    ]
    url = gateway.replace("http", "ws") + "/v1/ws"
    async with ws_connect(url, proxy=None, additional_headers=backend) as ws:
        for tasks, code in frames:
            await ws.send(json.dumps({"op": "subscribe", "tasks": tasks}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["event"] == "error" and reply["code"] == code, reply
            assert len(reply["task"]) <= 300  # echoed, but clipped
        await ws.send('{"op": "subscribe", "tasks": ["videoproc:1"], "since": {"videoproc:1": -5}}')
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["code"] == "invalid_cursor"
        await ws.send('{"op": "ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"event": "pong"}
    stats = await sim_stats(client, sim)
    assert sum(stats["requests"].values()) == 0
    await still_serving(client, gateway, sim)
