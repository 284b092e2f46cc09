"""Status history as JSON, the task listing and watcher counts, on live servers.

``GET /v1/tasks/{provider}/{task_id}/history`` pages a task's kept events;
``GET /v1/tasks`` pages the followed tasks by an opaque cursor, each with its
open subscriptions (``watchers``), which the snapshot carries too. Real
clients (httpx, websockets) against a live gateway and the simulator; on
Redis, two gateways share one real redis-server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.integration.conftest import create_sim_task, events_url, sim_stats
from tests.integration.gateway_server import running_gateway, sim_config
from tests.redis_server import RedisServer
from tests.security.conftest import API_KEY, backend, bearer, secured_doc

# Six events (five progress steps, then the terminal state), 0.3 s apart.
STEPS = [
    {"at": 0, "state": "running", "progress": 0, "message": "start"},
    {"at": 0.3, "state": "running", "progress": 20},
    {"at": 0.6, "state": "running", "progress": 40},
    {"at": 0.9, "state": "running", "progress": 60},
    {"at": 1.2, "state": "running", "progress": 80},
    {"at": 1.5, "state": "succeeded"},
]
RUNNING = [{"at": 0, "state": "running", "progress": 10}]
QUEUED = [{"at": 0, "state": "queued", "position": 2}]


def path_of(task: str) -> str:
    provider, _, task_id = task.partition(":")
    return f"/v1/tasks/{provider}/{task_id}"


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 15.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def watch(
    client: httpx.AsyncClient, base: str, task: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    provider, _, task_id = task.partition(":")
    reply = await client.post(
        f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id}, headers=headers
    )
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def finished(
    client: httpx.AsyncClient, base: str, task: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The task's snapshot once it is terminal."""
    body: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal body
        body = (await client.get(base + path_of(task), headers=headers)).json()
        return bool(body["terminal"])

    await eventually(done, what=f"{task} to end")
    return body


def problem(reply: httpx.Response, status: int, code: str | None, field: str | None) -> str:
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/problem+json")
    body = reply.json()
    assert body.get("code") == code, body
    assert body.get("field") == field, body
    detail: str = body["detail"]
    return detail


@contextlib.asynccontextmanager
async def sse_subscriber(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[None]:
    """An open SSE stream, held until the block ends (its snapshot already read)."""
    async with client.stream("GET", url, headers=headers) as reply:
        assert reply.status_code == 200
        # Held, not dropped: a collected line iterator closes the response.
        lines = reply.aiter_lines()
        while not (await anext(lines)).startswith("data:"):
            pass
        yield
        await lines.aclose()


@contextlib.asynccontextmanager
async def ndjson_subscriber(client: httpx.AsyncClient, url: str) -> AsyncIterator[None]:
    headers = {"Accept": "application/x-ndjson"}
    async with client.stream("GET", url, headers=headers) as reply:
        assert reply.status_code == 200
        lines = reply.aiter_lines()
        while not (await anext(lines)).strip():
            pass
        yield
        await lines.aclose()


@contextlib.asynccontextmanager
async def ws_subscriber(base: str, tasks: list[str]) -> AsyncIterator[None]:
    async with ws_connect(base.replace("http", "ws", 1) + "/v1/ws", proxy=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "tasks": tasks}))
        seen: set[str] = set()
        while seen != set(tasks):
            frame = json.loads(await ws.recv())
            if frame.get("event") == "snapshot":
                seen.add(frame["task"])
        yield


async def listing(
    client: httpx.AsyncClient, base: str, headers: dict[str, str] | None = None, **params: Any
) -> dict[str, Any]:
    reply = await client.get(f"{base}/v1/tasks", params=params, headers=headers)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def every_page(
    client: httpx.AsyncClient, base: str, **params: Any
) -> list[list[dict[str, Any]]]:
    pages = []
    cursor = None
    while True:
        body = await listing(client, base, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(body["tasks"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def watcher_count(client: httpx.AsyncClient, base: str, task: str) -> int:
    """``watchers`` of ``task`` in the listing (0 when it is not listed)."""
    items = [t for page in await every_page(client, base) for t in page if t["task"] == task]
    return int(items[0]["watchers"]) if items else 0


@pytest.fixture
def gateway(sim: str) -> Iterator[str]:
    with running_gateway(sim_config(sim)) as (base, _gw):
        yield base


# -- history ----------------------------------------------------------------------


async def test_history_pages_every_event_and_ends_empty_at_the_terminal_seq(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", STEPS)
    await watch(client, gateway, task)
    final = await finished(client, gateway, task)
    assert final["seq"] >= 4

    url = gateway + path_of(task) + "/history"
    events: list[dict[str, Any]] = []
    after = 0
    pages = 0
    while True:
        reply = await client.get(url, params={"after": after, "limit": 2})
        assert reply.status_code == 200, reply.text
        page = reply.json()
        pages += 1
        assert page["task"] == task and page["gap"] is False
        assert page["latest_seq"] == final["seq"]
        assert len(page["events"]) <= 2
        events.extend(page["events"])
        after = page["next_after"]
        if not page["more"]:
            break
    assert [e["seq"] for e in events] == list(range(1, final["seq"] + 1))
    assert pages == (final["seq"] + 1) // 2
    assert all(e["event"] in ("state", "progress") for e in events)
    assert events[-1]["terminal"] is True and events[-1]["state"] == "succeeded"
    assert events[-1]["result"] == final["result"]
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and 40 in progress

    # The default page holds them all; after the terminal seq there is nothing.
    whole = (await client.get(url)).json()
    assert [e["seq"] for e in whole["events"]] == [e["seq"] for e in events]
    done = (await client.get(url, params={"after": final["seq"]})).json()
    assert done["events"] == [] and done["more"] is False and done["gap"] is False
    assert done["next_after"] == final["seq"]


async def test_history_marks_the_gap_when_the_window_no_longer_reaches_back(
    sim: str, client: httpx.AsyncClient
) -> None:
    doc = sim_config(sim, backend={"kind": "local", "path": ":memory:", "history_limit": 3})
    with running_gateway(doc) as (base, _gw):
        task = await create_sim_task(client, sim, "videoproc", STEPS)
        await watch(client, base, task)
        final = await finished(client, base, task)
        latest = final["seq"]
        url = base + path_of(task) + "/history"

        page = (await client.get(url, params={"after": 0, "limit": 2})).json()
        assert page["gap"] is True
        # The oldest events still kept, then the rest, without a gap.
        assert [e["seq"] for e in page["events"]] == [latest - 2, latest - 1]
        assert page["next_after"] == latest - 1 and page["more"] is True
        rest = (await client.get(url, params={"after": page["next_after"]})).json()
        assert [e["seq"] for e in rest["events"]] == [latest]
        assert rest["gap"] is False and rest["more"] is False

        reaching = (await client.get(url, params={"after": latest - 3})).json()
        assert reaching["gap"] is False and len(reaching["events"]) == 3


async def test_history_reads_the_store_for_a_token_and_never_polls(
    sim: str, client: httpx.AsyncClient
) -> None:
    with running_gateway(secured_doc(sim)) as (base, _gw):
        mine = await create_sim_task(client, sim, "videoproc", STEPS)
        other = await create_sim_task(client, sim, "videoproc", STEPS)
        never = await create_sim_task(client, sim, "tryon", RUNNING)
        token = (await watch(client, base, mine, headers=backend))["token"]
        await watch(client, base, other, headers=backend)
        await finished(client, base, mine, headers=backend)
        as_subscriber = bearer(token)
        url = base + path_of(mine) + "/history"
        mine_page = await client.get(url, headers=as_subscriber)
        assert mine_page.status_code == 200 and mine_page.json()["events"]
        by_query = await client.get(url, params={"token": token, "limit": 1})
        assert [e["seq"] for e in by_query.json()["events"]] == [1]

        other_reply = await client.get(base + path_of(other) + "/history", headers=as_subscriber)
        assert other in problem(other_reply, 403, "forbidden", "task")

        # A token for a task nobody registered: refused, and nothing asked upstream.
        grant = await client.post(f"{base}/v1/tokens", json={"tasks": [never]}, headers=backend)
        never_token = grant.json()["token"]
        reply = await client.get(base + path_of(never) + "/history", headers=bearer(never_token))
        problem(reply, 403, "not_watched", "task")
        await asyncio.sleep(0.5)
        assert never not in (await sim_stats(client, sim))["tasks"]

        # Without a credential: 401; an API key reads any task.
        assert (await client.get(url)).status_code == 401
        assert (await client.get(url, headers=bearer(API_KEY))).status_code == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "abc"}, "after"),
        ({"after": "1.5"}, "after"),
        ({"after": str(2**53 + 1)}, "after"),
        ({"after": "9" * 30}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
async def test_history_refuses_a_bad_after_or_limit(
    gateway: str, sim: str, client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    task = await create_sim_task(client, sim, "ailab", RUNNING)
    await watch(client, gateway, task)
    reply = await client.get(gateway + path_of(task) + "/history", params=params)
    problem(reply, 400, "bad_request", field)


async def test_history_of_an_unknown_task_or_provider_is_404(
    gateway: str, client: httpx.AsyncClient
) -> None:
    reply = await client.get(f"{gateway}/v1/tasks/ailab/never-seen/history")
    assert "ailab:never-seen" in problem(reply, 404, "unknown_task", "task")
    reply = await client.get(f"{gateway}/v1/tasks/nosuch/1/history")
    problem(reply, 404, "unknown_provider", "provider")


# -- listing ----------------------------------------------------------------------


async def test_listing_pages_by_cursor_without_duplicates_while_tasks_are_added(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    async def add(task_id: str) -> str:
        spec = {"provider": "ailab", "task_id": task_id, "timeline": RUNNING}
        (await client.post(f"{sim}/_sim/tasks", json=spec)).raise_for_status()
        await watch(client, gateway, f"ailab:{task_id}")
        return f"ailab:{task_id}"

    original = [await add(f"t-{n:02d}") for n in range(0, 40, 2)]  # t-00, t-02 … t-38
    seen: list[str] = []
    cursor = None
    added_after: list[str] = []
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 6, **({"cursor": cursor} if cursor else {})}
        body = await listing(client, gateway, **params)
        pages += 1
        assert len(body["tasks"]) <= 6
        seen.extend(item["task"] for item in body["tasks"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor.isascii()
        if pages == 1:
            # One before the cursor (this walk will not see it), one after (it will).
            await add("t-01")
            added_after.append(await add("t-39"))
        if pages == 2:
            added_after.append(await add("t-37"))
    assert len(seen) == len(set(seen)), seen  # no task twice
    assert set(original) <= set(seen)  # none of those there all along is missed
    assert set(added_after) <= set(seen)
    assert seen == sorted(seen)
    assert pages == 4  # 22 tasks in pages of 6

    # A fresh walk sees all 23; every item carries its summary.
    everything = [t for page in await every_page(client, gateway, limit=1000) for t in page]
    assert len(everything) == 23
    item = everything[0]
    assert set(item) == {
        "task",
        "watched",
        "watchers",
        "state",
        "terminal",
        "progress",
        "position",
        "seq",
        "updated_at",
    }
    assert item["watched"] is True and item["watchers"] == 0
    assert item["state"] == "running" and item["seq"] >= 1 and item["updated_at"]


async def test_listing_filters_by_provider_and_state(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    running = [await create_sim_task(client, sim, "ailab", RUNNING) for _ in range(3)]
    queued = [await create_sim_task(client, sim, "tryon", QUEUED) for _ in range(2)]
    done = await create_sim_task(client, sim, "genpic", [{"at": 0, "state": "succeeded"}])
    for task in [*running, *queued, done]:
        await watch(client, gateway, task)
    await finished(client, gateway, done)

    def names(pages: list[list[dict[str, Any]]]) -> set[str]:
        return {t["task"] for page in pages for t in page}

    assert names(await every_page(client, gateway, provider="ailab", limit=2)) == set(running)
    queued_pages = await every_page(client, gateway, state="queued", limit=1)
    assert names(queued_pages) == set(queued)
    assert all(t["position"] == 2 for page in queued_pages for t in page)
    assert names(await every_page(client, gateway, provider="tryon", state="running")) == set()
    # A finished watched task is no longer followed.
    assert done not in names(await every_page(client, gateway))
    assert names(await every_page(client, gateway)) == {*running, *queued}


async def test_listing_refuses_bad_filters_limits_and_cursors(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    for n in range(3):
        spec = {"provider": "ailab", "task_id": f"bad-{n}", "timeline": RUNNING}
        (await client.post(f"{sim}/_sim/tasks", json=spec)).raise_for_status()
        await watch(client, gateway, f"ailab:bad-{n}")
    url = f"{gateway}/v1/tasks"
    problem(
        await client.get(url, params={"provider": "nosuch"}), 404, "unknown_provider", "provider"
    )
    detail = problem(await client.get(url, params={"state": "done"}), 400, "bad_request", "state")
    assert "running" in detail
    for limit in ("0", "1001", "-3", "x"):
        problem(await client.get(url, params={"limit": limit}), 400, "bad_request", "limit")

    cursor = (await listing(client, gateway, limit=1))["next_cursor"]
    assert cursor
    forged = base64.urlsafe_b64encode(msgspec.msgpack.encode([1, "no colon", None, None]))
    for garbage in (
        "garbage!",
        "AAAA",
        cursor[:-3],
        cursor + "x" * 2000,
        forged.decode().rstrip("="),
        base64.urlsafe_b64encode(msgspec.msgpack.encode([2, "ailab:x", None, None])).decode(),
    ):
        reply = await client.get(url, params={"cursor": garbage})
        problem(reply, 400, "invalid_cursor", "cursor")
    # A cursor only goes with the filters it was issued for.
    other = await client.get(url, params={"cursor": cursor, "provider": "ailab"})
    assert "filters" in problem(other, 400, "invalid_cursor", "cursor")
    good = await client.get(url, params={"cursor": cursor, "limit": 1})
    assert good.status_code == 200 and good.json()["tasks"][0]["task"] == "ailab:bad-1"


async def test_listing_takes_an_api_key_and_refuses_a_subscriber_token(
    sim: str, client: httpx.AsyncClient
) -> None:
    with running_gateway(secured_doc(sim)) as (base, _gw):
        task = await create_sim_task(client, sim, "ailab", RUNNING)
        token = (await watch(client, base, task, headers=backend))["token"]
        listed = await listing(client, base, headers=backend)
        assert [t["task"] for t in listed["tasks"]] == [task]
        refused = await client.get(f"{base}/v1/tasks", headers=bearer(token))
        assert refused.status_code == 403
        assert refused.json()["code"] == "forbidden"
        assert (await client.get(f"{base}/v1/tasks")).status_code == 401


async def test_watchers_go_up_and_down_with_subscribers_of_every_transport(
    gateway: str, sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "ailab", RUNNING)
    quiet = await create_sim_task(client, sim, "ailab", RUNNING)
    await watch(client, gateway, quiet)
    url = events_url(gateway, task)

    async def counts() -> tuple[int, int, int]:
        snap = (await client.get(gateway + path_of(task))).json()
        quiet_snap = (await client.get(gateway + path_of(quiet))).json()
        return (
            await watcher_count(client, gateway, task),
            int(snap["watchers"]),
            int(quiet_snap["watchers"]),
        )

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(sse_subscriber(client, url))
        # Subscribed, not watched: listed all the same.
        assert await counts() == (1, 1, 0)
        await stack.enter_async_context(sse_subscriber(client, url))
        await stack.enter_async_context(ndjson_subscriber(client, url))
        await stack.enter_async_context(ws_subscriber(gateway, [task, quiet]))
        assert await counts() == (4, 4, 1)
        async with sse_subscriber(client, url):
            assert await counts() == (5, 5, 1)
        # The client went away: the count follows once the gateway sees it.
        await eventually(lambda: _is(counts(), (4, 4, 1)), what="the count to drop")
    await eventually(lambda: _is(counts(), (0, 0, 0)), what="every subscriber to leave")
    names = {t["task"] for page in await every_page(client, gateway) for t in page}
    assert task not in names and quiet in names  # no subscriber, not watched: not followed


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


# -- on Redis, two nodes ----------------------------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with RedisServer(tmp_path / "redis") as server:
        yield server.url


async def test_watchers_are_counted_cluster_wide_on_redis(
    sim: str, redis_url: str, client: httpx.AsyncClient
) -> None:
    doc = sim_config(
        sim, backend={"kind": "redis", "url": redis_url, "prefix": f"hl-{uuid.uuid4().hex[:6]}"}
    )
    with running_gateway(doc) as (a, _ga), running_gateway(doc) as (b, _gb):
        task = await create_sim_task(client, sim, "videoproc", RUNNING)
        watched = await create_sim_task(client, sim, "ailab", RUNNING)
        await watch(client, a, watched)  # through node a: node b lists it too
        url_a, url_b = events_url(a, task), events_url(b, task)

        async def everywhere(expected: int) -> bool:
            counts = [await watcher_count(client, node, task) for node in (a, b)]
            snaps = [(await client.get(node + path_of(task))).json() for node in (a, b)]
            return counts == [expected, expected] and all(s["watchers"] == expected for s in snaps)

        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(sse_subscriber(client, url_a))
            await stack.enter_async_context(sse_subscriber(client, url_a))
            await eventually(lambda: everywhere(2), what="2 watchers on both nodes")
            async with sse_subscriber(client, url_b):
                await eventually(lambda: everywhere(3), what="3 watchers on both nodes")
            await eventually(lambda: everywhere(2), what="node b's watcher to leave")
        await eventually(lambda: everywhere(0), what="every watcher to leave")

        for node in (a, b):
            names = {t["task"] for page in await every_page(client, node) for t in page}
            assert names == {watched}, node


async def test_listing_pages_across_nodes_on_redis(
    sim: str, redis_url: str, client: httpx.AsyncClient
) -> None:
    doc = sim_config(
        sim, backend={"kind": "redis", "url": redis_url, "prefix": f"hl-{uuid.uuid4().hex[:6]}"}
    )
    with running_gateway(doc) as (a, _ga), running_gateway(doc) as (b, _gb):
        tasks = []
        for n in range(12):
            spec = {"provider": "ailab", "task_id": f"r-{n:02d}", "timeline": RUNNING}
            (await client.post(f"{sim}/_sim/tasks", json=spec)).raise_for_status()
            await watch(client, (a, b)[n % 2], f"ailab:r-{n:02d}")  # half through each node
            tasks.append(f"ailab:r-{n:02d}")
        # A cursor from one node is good on the other: pages alternate between them.
        seen: list[str] = []
        cursor = None
        for turn in range(10):
            params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
            body = await listing(client, (a, b)[turn % 2], **params)
            seen.extend(t["task"] for t in body["tasks"])
            assert all(t["watched"] for t in body["tasks"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == tasks
        state_filtered = await every_page(client, b, state="running", provider="ailab", limit=4)
        assert [t["task"] for page in state_filtered for t in page] == tasks


async def test_a_lost_redis_is_503_with_retry_after_and_the_gateway_recovers(
    sim: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        doc = sim_config(sim, backend={"kind": "redis", "url": server.url, "prefix": "hl-down"})
        with running_gateway(doc) as (base, _gw):
            task = await create_sim_task(client, sim, "ailab", RUNNING)
            await watch(client, base, task)
            assert [t["task"] for t in (await listing(client, base))["tasks"]] == [task]
            server.kill()
            for path in ("/v1/tasks", path_of(task) + "/history"):
                reply = await client.get(base + path)
                assert reply.status_code == 503, (path, reply.text)
                assert reply.json()["code"] == "backend_unavailable"
                assert int(reply.headers["retry-after"]) >= 1
                assert "redis://" not in reply.text
            server.start()  # the same port, persisted: the gateway carries on

            async def listed_again() -> bool:
                reply = await client.get(f"{base}/v1/tasks")
                return reply.status_code == 200 and [t["task"] for t in reply.json()["tasks"]] == [
                    task
                ]

            await eventually(listed_again, what="the listing to answer again")
            history = await client.get(base + path_of(task) + "/history")
            assert history.status_code == 200 and history.json()["events"]
    finally:
        server.kill()
