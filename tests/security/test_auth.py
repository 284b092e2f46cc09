"""Who may read what: API keys, subscriber tokens, their expiry, rotation and tampering."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import events_url
from tests.integration.gateway_server import running_gateway
from tests.integration.readers import read_sse
from tests.security.conftest import (
    API_KEY,
    OLD_API_KEY,
    OLD_TOKEN_SECRET,
    RUNNING,
    TOKEN_SECRET,
    backend,
    bearer,
    create_sim_task,
    problem,
    register,
    secured_doc,
    sim_stats,
    still_serving,
)

SHORT = [
    {"at": 0, "state": "running", "progress": 10},
    {"at": 0.8, "state": "running", "progress": 60},
    {"at": 1.6, "state": "succeeded"},
]


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http", "ws", 1) + "/v1/ws" + query


async def mint(client: httpx.AsyncClient, base: str, tasks: list[str], **extra: Any) -> str:
    reply = await client.post(f"{base}/v1/tokens", json={"tasks": tasks, **extra}, headers=backend)
    assert reply.status_code == 201, reply.text
    token: str = reply.json()["token"]
    return token


async def frames_until(ws: Any, done: Any, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Frames until ``done(frame)`` holds (that frame included)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            frame = json.loads(await ws.recv())
            out.append(frame)
            if done(frame):
                return out


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(claims: dict[str, Any], secret: str, **header: Any) -> str:
    """An HS256 JWT signed by hand, so that any header or claim can be put in it."""
    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
        + "."
        + b64(json.dumps(claims).encode())
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


async def test_no_credentials_get_401_with_a_bearer_challenge(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", RUNNING)
    provider, _, task_id = task.partition(":")
    attempts = [
        client.get(events_url(gateway, task)),
        client.get(f"{gateway}/v1/events?tasks={task}"),
        client.get(f"{gateway}/v1/tasks/{provider}/{task_id}"),
        client.get(f"{gateway}/v1/providers"),
        client.get(f"{gateway}/v1/tasks"),
        client.post(f"{gateway}/v1/tasks", json={"provider": provider, "task_id": task_id}),
        client.post(f"{gateway}/v1/tokens", json={"tasks": [task]}),
        client.delete(f"{gateway}/v1/tasks/{provider}/{task_id}"),
    ]
    for reply in await asyncio.gather(*attempts):
        problem(reply, 401, "unauthorized")
        assert reply.headers["www-authenticate"] == 'Bearer realm="pollcast"'

    async with ws_connect(ws_url(gateway), proxy=None) as ws:
        frame = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert frame["event"] == "error" and frame["code"] == "unauthorized"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    # Nothing was polled for anybody; public pages stay public.
    assert task not in (await sim_stats(client, sim))["tasks"]
    assert (await client.get(f"{gateway}/healthz")).status_code == 200
    assert (await client.get(f"{gateway}/readyz")).status_code == 200
    assert (await client.get(f"{gateway}/schema/openapi.json")).status_code == 200
    assert (await client.get(f"{gateway}/")).status_code == 200  # the dashboard page


WRONG_AUTHORIZATIONS = [
    "Bearer not-a-key",
    f"Bearer {API_KEY}x",
    f"Bearer {API_KEY[:-1]}",
    f"Basic {API_KEY}",
    "Bearer",
    f"bearer{API_KEY}",
]


async def test_wrong_key_gets_401_invalid_token(gateway: str, client: httpx.AsyncClient) -> None:
    for authorization in WRONG_AUTHORIZATIONS:
        reply = await client.get(
            f"{gateway}/v1/providers", headers={"Authorization": authorization}
        )
        problem(reply, 401, "invalid_token")
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]


async def test_both_rotation_keys_work_and_keys_are_refused_outside_the_header(
    gateway: str, client: httpx.AsyncClient
) -> None:
    for key in (API_KEY, OLD_API_KEY):
        assert (await client.get(f"{gateway}/v1/providers", headers=bearer(key))).status_code == 200
    # An API key in a URL or a cookie would end up in logs and browsers: refused.
    problem(await client.get(f"{gateway}/v1/providers?token={API_KEY}"), 401, "invalid_token")
    cookie = {"Cookie": f"pollcast_token={API_KEY}"}
    problem(await client.get(f"{gateway}/v1/providers", headers=cookie), 401, "invalid_token")


async def test_token_for_one_task_cannot_read_or_start_another(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    mine = await create_sim_task(client, sim, "videoproc", RUNNING)
    other = await create_sim_task(client, sim, "videoproc", RUNNING)
    grant = await register(client, gateway, mine)
    await register(client, gateway, other)  # watched: the refusal is about the token
    token = grant["token"]
    provider, _, other_id = other.partition(":")

    for url in (
        events_url(gateway, other) + f"?token={token}",
        f"{gateway}/v1/tasks/{provider}/{other_id}?token={token}",
        f"{gateway}/v1/events?tasks={mine},{other}&token={token}",
    ):
        body = problem(await client.get(url), 403, "forbidden")
        assert other in body["detail"]

    # A subscriber never registers, unwatches or mints.
    as_subscriber = bearer(token)
    reply = await client.post(
        f"{gateway}/v1/tasks",
        json={"provider": provider, "task_id": other_id},
        headers=as_subscriber,
    )
    problem(reply, 403, "forbidden")
    problem(
        await client.post(f"{gateway}/v1/tokens", json={"tasks": [other]}, headers=as_subscriber),
        403,
        "forbidden",
    )
    problem(
        await client.delete(f"{gateway}/v1/tasks/{provider}/{other_id}", headers=as_subscriber),
        403,
    )

    # Over WebSocket: a refusal for that task, and the connection carries on.
    async with ws_connect(ws_url(gateway, f"?token={token}"), proxy=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "tasks": [other, mine]}))
        frames = await frames_until(ws, lambda f: f.get("event") == "snapshot")
        await ws.send(json.dumps({"op": "ping"}))
        pong = await frames_until(ws, lambda f: f.get("event") == "pong")
    assert frames[0] == {
        "event": "error",
        "code": "forbidden",
        "message": frames[0]["message"],
        "task": other,
    }
    assert frames[1] == {"event": "subscribed", "tasks": [mine]}
    assert frames[2]["task"] == mine
    assert pong[-1] == {"event": "pong"}

    # Listing the gateway's tasks takes an API key.
    problem(await client.get(f"{gateway}/v1/tasks", headers=as_subscriber), 403, "forbidden")


async def test_a_token_never_starts_polling_a_task_nobody_registered(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "tryon", [{"at": 0, "state": "queued"}])
    token = await mint(client, gateway, [task])  # a backend may mint for any task …
    provider, _, task_id = task.partition(":")
    for url in (
        events_url(gateway, task) + f"?token={token}",
        f"{gateway}/v1/tasks/{provider}/{task_id}?token={token}",
    ):
        problem(await client.get(url), 403, "not_watched")
    async with ws_connect(ws_url(gateway, f"?token={token}"), proxy=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "tasks": [task]}))
        (refused,) = await frames_until(ws, lambda f: True)
    assert refused["code"] == "not_watched" and refused["task"] == task
    await asyncio.sleep(0.5)
    # … but not one paid upstream call happened on its behalf.
    stats = await sim_stats(client, sim)
    assert task not in stats["tasks"] and stats["coins_spent"].get("tryon", 0) == 0

    await register(client, gateway, task)  # once a backend registers it, the token reads it
    events = await read_sse(client, events_url(gateway, task) + f"?token={token}", stop_after=1)
    assert events[0]["event"] == "snapshot" and events[0]["task"] == task


async def test_token_in_header_query_and_cookie_reads_to_the_end(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", SHORT)
    grant = await register(client, gateway, task)
    token = grant["token"]
    assert grant["ws_url"].endswith("/v1/ws")
    claims = jwt.decode(token, TOKEN_SECRET, algorithms=["HS256"])
    assert claims["tasks"] == [task] and claims["typ"] == "subscriber"
    assert claims["exp"] - claims["iat"] == pytest.approx(3600, abs=1)

    url = events_url(gateway, task)
    by_header, by_query, by_cookie = await asyncio.gather(
        read_sse(client, url, headers=bearer(token)),
        read_sse(client, f"{url}?token={token}"),
        read_sse(client, url, headers={"Cookie": f"pollcast_token={token}"}),
    )
    for events in (by_header, by_query, by_cookie):
        assert events[-1]["state"] == "succeeded" and events[-1]["terminal"]
        assert events[-1]["seq"] == by_query[-1]["seq"]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_expired_token_ends_streams_with_a_token_expired_notice(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", RUNNING)  # never ends
    await register(client, gateway, task)
    token = await mint(client, gateway, [task], ttl_s=1)
    exp = jwt.decode(token, TOKEN_SECRET, algorithms=["HS256"])["exp"]

    async def ndjson() -> list[dict[str, Any]]:
        async with client.stream(
            "GET",
            events_url(gateway, task),
            headers={**bearer(token), "Accept": "application/x-ndjson"},
        ) as reply:
            return [json.loads(line) async for line in reply.aiter_lines() if line.strip()]

    async def ws() -> tuple[list[dict[str, Any]], int | None]:
        async with ws_connect(ws_url(gateway), proxy=None, additional_headers=bearer(token)) as s:
            await s.send(json.dumps({"op": "subscribe", "tasks": [task]}))
            frames: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(json.loads(await s.recv()))
        return frames, closed.value.rcvd.code if closed.value.rcvd else None

    sse, lines, (frames, close_code) = await asyncio.wait_for(
        asyncio.gather(
            read_sse(client, f"{events_url(gateway, task)}?token={token}"), ndjson(), ws()
        ),
        10,
    )
    ended_at = time.time()
    assert ended_at >= exp - 0.2  # not before the token's exp …
    for stream in (sse, lines, frames[1:]):
        assert stream[0]["event"] == "snapshot"
        assert stream[-1]["event"] == "notice" and stream[-1]["code"] == "token_expired"
    assert sse[-1]["_event"] == "notice"
    assert close_code == 4401

    # … and the same token opens nothing any more.
    reply = await client.get(f"{events_url(gateway, task)}?token={token}")
    problem(reply, 401, "token_expired")
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]


async def test_tampered_and_foreign_tokens_are_refused(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    mine = await create_sim_task(client, sim, "videoproc", RUNNING)
    other = await create_sim_task(client, sim, "videoproc", RUNNING)
    token = (await register(client, gateway, mine))["token"]
    await register(client, gateway, other)
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    widened = b64(json.dumps({**claims, "tasks": [mine, other]}).encode())
    now = int(time.time())
    good = {"typ": "subscriber", "tasks": [other], "iat": now, "exp": now + 60}
    none_header = b64(b'{"alg":"none","typ":"JWT"}')
    tampered = [
        f"{head}.{widened}.{signature}",  # more tasks, old signature
        f"{head}.{payload}.{signature[:-2]}AA",  # broken signature
        f"{none_header}.{widened}.",  # alg "none"
        forge(good, "x" * 64),  # signed with a key we never had
        forge({**good, "typ": "admin"}, TOKEN_SECRET),  # not a subscriber token
        forge({"typ": "subscriber", "tasks": [other], "iat": now}, TOKEN_SECRET),  # no exp
        forge({**good, "tasks": "videoproc:*"}, TOKEN_SECRET),  # tasks not a list
        forge(good, TOKEN_SECRET, kid=["not", "a", "string"]),
        "not.a.token",
        "a" * 61_000,
    ]
    for bad in tampered:
        reply = await client.get(f"{events_url(gateway, other)}", headers=bearer(bad))
        problem(reply, 401, "invalid_token")

    # Rotation: a token signed with the previous secret still reads until it expires.
    rotated = forge({**good, "tasks": [other]}, OLD_TOKEN_SECRET)
    events = await read_sse(client, f"{events_url(gateway, other)}?token={rotated}", stop_after=1)
    assert events[0]["task"] == other
    await still_serving(client, gateway, sim)


async def test_minting_checks_its_input(gateway: str, sim: str, client: httpx.AsyncClient) -> None:
    task = await create_sim_task(client, sim, "videoproc", RUNNING)
    reply = await client.post(
        f"{gateway}/v1/tokens", json={"tasks": [task, task], "ttl_s": 30}, headers=backend
    )
    assert reply.status_code == 201
    grant = reply.json()
    assert grant["tasks"] == [task] and grant["expires_at"].endswith("Z")
    cases = [
        ({"tasks": []}, 400, "bad_request"),
        ({"tasks": ["nope:1"]}, 404, "unknown_provider"),
        ({"tasks": ["videoproc:" + "x" * 10_000]}, 422, "invalid_task"),
        ({"tasks": [task], "ttl_s": 10**9}, 400, "bad_request"),
        ({"tasks": [task], "ttl_s": -1}, 400, None),
        ({"tasks": [f"videoproc:t{i}" for i in range(101)]}, 400, "too_many_tasks"),
    ]
    for body, status, code in cases:
        reply = await client.post(f"{gateway}/v1/tokens", json=body, headers=backend)
        problem(reply, status, code)


async def test_cookie_credentials_from_a_foreign_page_cannot_open_a_websocket(
    sim: str, client: httpx.AsyncClient
) -> None:
    allowed = "https://app.example.com"
    with running_gateway(secured_doc(sim, server={"cors_origins": [allowed]})) as (base, _gw):
        task = await create_sim_task(client, sim, "videoproc", RUNNING)
        token = (await register(client, base, task))["token"]
        cookie = {"Cookie": f"pollcast_token={token}"}

        async def opened(origin: str, query: str = "") -> dict[str, Any]:
            async with ws_connect(
                ws_url(base, query),
                proxy=None,
                origin=origin,
                additional_headers=cookie,
            ) as ws:
                # A refused socket is closed at once: its error frame is already queued.
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"op": "ping"}))
                frame: dict[str, Any] = json.loads(await ws.recv())
                return frame

        refused = await opened("https://evil.example.net")
        assert refused["event"] == "error" and refused["code"] == "forbidden_origin"
        assert await opened(allowed) == {"event": "pong"}
        # An explicit token is no ambient credential: any page may use it.
        assert await opened("https://evil.example.net", f"?token={token}") == {"event": "pong"}

        # CORS for browser clients of the HTTP API, under token mode.
        preflight = await client.options(
            f"{base}/v1/events",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, last-event-id",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == allowed
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        assert preflight.headers["access-control-allow-credentials"] == "true"
        foreign = await client.options(
            f"{base}/v1/events",
            headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "GET"},
        )
        assert foreign.status_code == 400
        # Streams carry the CORS headers for the page that asked, and only for it.
        for origin in (allowed, None, allowed, "https://evil.example.net"):
            async with client.stream(
                "GET",
                f"{events_url(base, task)}?token={token}",
                headers={"Origin": origin} if origin else {},
            ) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                granted = stream.headers.get_list("access-control-allow-origin")
                assert granted == ([allowed] if origin == allowed else []), origin
        assert "access-control-allow-origin" not in foreign.headers
        read = await client.get(
            f"{base}/v1/tasks/{task.replace(':', '/')}",
            headers={**bearer(token), "Origin": allowed},
        )
        assert read.status_code == 200
        assert read.headers["access-control-allow-origin"] == allowed
