"""Reconnect and resume: Last-Event-ID, the multiplexed cursor, WS ``since``, a restart."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import GatewayProcess, running_gateway, sim_config
from tests.integration.readers import read_sse, read_ws, transitions


def stepped(n: int = 6, gap: float = 0.5, start: float = 0.0) -> list[dict[str, Any]]:
    """running 10 %, 20 %, … every ``gap`` seconds, then succeeded."""
    steps: list[dict[str, Any]] = [
        {"at": start + i * gap, "state": "running", "progress": 10 * (i + 1)} for i in range(n)
    ]
    steps.append({"at": start + n * gap, "state": "succeeded"})
    return steps


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events if e["event"] in ("state", "progress")]


async def test_sse_resume_replays_exactly_the_missed_events(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", stepped())
    with running_gateway(sim_config(sim)) as (base, _gw):
        url = events_url(base, task)
        first = await read_sse(client, url, stop_after=3)
        last = int(first[-1]["_id"])
        await asyncio.sleep(1.2)  # transitions happen while we are away
        rest = await read_sse(client, url, headers={"Last-Event-ID": str(last)})
        full = await read_sse(client, url + "?last_event_id=0")
        terminal = full[-1]["seq"]
        gone = await client.get(url, headers={"Last-Event-ID": str(terminal)})

    assert first[0]["_event"] == "snapshot"
    assert seqs(rest) == list(range(last + 1, terminal + 1))
    assert all(e["_id"] == str(e["seq"]) for e in rest)
    assert rest[-1]["state"] == "succeeded" and rest[-1]["terminal"] is True
    assert seqs(full) == list(range(1, terminal + 1))
    # What the first connection saw is what history says happened.
    assert transitions([e for e in first if e["event"] != "snapshot"]) == transitions(
        [e for e in full if e["seq"] in seqs(first)]
    )
    assert [e["progress"] for e in full if e["event"] == "progress"] == sorted(
        e["progress"] for e in full if e["event"] == "progress"
    )
    assert gone.status_code == 204


async def test_ndjson_stream_carries_the_same_events(sim: str, client: httpx.AsyncClient) -> None:
    task = await create_sim_task(client, sim, "videoproc", stepped(3, 0.4))
    with running_gateway(sim_config(sim)) as (base, _gw):
        lines = []
        async with client.stream(
            "GET", events_url(base, task), headers={"Accept": "application/x-ndjson"}
        ) as reply:
            assert reply.headers["content-type"].startswith("application/x-ndjson")
            async for line in reply.aiter_lines():
                if line.strip():
                    lines.append(json.loads(line))
        sse = await read_sse(client, events_url(base, task) + "?last_event_id=0")

    assert lines[0]["event"] == "snapshot"
    assert lines[-1]["state"] == "succeeded"
    assert transitions(lines[1:]) == transitions(sse)[-len(lines[1:]) :]


async def test_multiplexed_cursor_resumes_every_task(sim: str, client: httpx.AsyncClient) -> None:
    a = await create_sim_task(client, sim, "videoproc", stepped(6, 0.5))
    b = await create_sim_task(
        client,
        sim,
        "ailab",
        [
            {"at": 0, "state": "queued"},
            {"at": 1.0, "state": "running"},
            {"at": 3.2, "state": "succeeded"},
        ],
    )
    with running_gateway(sim_config(sim)) as (base, _gw):
        url = f"{base}/v1/events?tasks={a},{b}"
        first = await read_sse(client, url, stop_after=4)
        cursor = next(e["_id"] for e in reversed(first) if e["_id"])
        held = {e["task"]: e["seq"] for e in first}
        await asyncio.sleep(1.0)
        rest = await read_sse(client, url, headers={"Last-Event-ID": cursor})
        fresh = await read_sse(client, url)

    assert cursor.startswith("c1.")
    for task in (a, b):
        got = [e["seq"] for e in rest if e["task"] == task and e["event"] != "notice"]
        final = next(e["seq"] for e in fresh if e["task"] == task and e["event"] == "snapshot")
        assert got == list(range(held[task] + 1, final + 1)), task
    assert {e["task"] for e in rest if e.get("terminal")} == {a, b}
    # Every id is a cursor that would resume from that very message.
    last_ids = [e["_id"] for e in rest if e["_id"]]
    assert last_ids == sorted(last_ids, key=lambda c: [int(x) for x in c[3:].split(".")])


async def test_ws_since_resumes_a_subscription(sim: str, client: httpx.AsyncClient) -> None:
    task = await create_sim_task(client, sim, "videoproc", stepped(4, 0.4))
    with running_gateway(sim_config(sim)) as (base, _gw):
        ws_url = base.replace("http", "ws") + "/v1/ws"
        full = await read_ws(ws_url, [task])
        terminal = full[-1]["seq"]
        resumed = await read_ws(ws_url, [task], since={task: 2})
    assert resumed[0] == {"event": "subscribed", "tasks": [task]}
    assert seqs(resumed[1:]) == list(range(3, terminal + 1))


async def test_resume_survives_a_gateway_restart(
    sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    doc = sim_config(sim, backend={"kind": "local", "path": str(tmp_path / "state.db")})
    gateway = GatewayProcess(doc, tmp_path).start()
    try:
        # Made once the gateway is up: a slow start must not end the timeline
        # before the restart it is there to straddle.
        task = await create_sim_task(client, sim, "videoproc", stepped(8, 0.5, start=0.5))
        url = events_url(gateway.url, task)
        mux = f"{gateway.url}/v1/events?tasks={task}"
        before = await read_sse(client, url, stop_after=3)
        mux_before = await read_sse(client, mux, stop_after=2)
        last = int(before[-1]["_id"])
        cursor = mux_before[-1]["_id"]
        gateway.signal(signal.SIGTERM)
        assert gateway.wait(10) == 0
        await asyncio.sleep(0.8)
        gateway.start()
        after = await read_sse(client, url, headers={"Last-Event-ID": str(last)})
        mux_after = await read_sse(client, mux, headers={"Last-Event-ID": cursor})
        history = await read_sse(client, url + "?last_event_id=0")
    finally:
        gateway.stop()

    terminal = history[-1]["seq"]
    assert history[-1]["state"] == "succeeded"
    assert seqs(history) == list(range(1, terminal + 1))
    assert seqs(after) == list(range(last + 1, terminal + 1))
    assert seqs(mux_after) == list(range(int(cursor[3:]) + 1, terminal + 1))
    kept = {e["seq"]: transitions([e]) for e in history}
    assert all(kept[e["seq"]] == transitions([e]) for e in before if e["event"] != "snapshot")


async def test_sigterm_drains_open_streams_with_a_notice(
    sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    task = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "running"}])
    gateway = GatewayProcess(sim_config(sim), tmp_path).start()
    try:
        reader = asyncio.create_task(read_sse(client, events_url(gateway.url, task)))
        await asyncio.sleep(0.8)
        gateway.signal(signal.SIGTERM)
        got = await asyncio.wait_for(reader, 10)
        code = gateway.wait(10)
    finally:
        gateway.stop()
    assert got[0]["event"] == "snapshot"
    assert got[-1]["event"] == "notice" and got[-1]["code"] == "server_draining"
    # The notice carries no id: the resume point stays the last seq (WHATWG SSE).
    assert got[-1]["_id"] == got[-2]["_id"] == str(got[-2]["seq"])
    assert code == 0
