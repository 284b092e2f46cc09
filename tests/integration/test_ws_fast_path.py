"""WebSocket subscribers on the fast path: the event's one shared text frame,
written straight to every idle socket — and the same events, in the same
order, as SSE subscribers and as the plain path (ASGI ``send``) deliver.

Runs on both HTTP paths (tests/integration/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from gateway.service import Gateway
from tests.integration.conftest import create_sim_task, events_url, gateway_tasks
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse, read_ws, transitions

SUBSCRIBERS = 200  # of each kind
LIVE_STEPS = 8


def many_steps(start_s: float) -> list[dict[str, Any]]:
    """Queued while subscribers connect, then progress every 0.4 s (2 polls), then done."""
    steps: list[dict[str, Any]] = [{"at": 0, "state": "queued"}]
    for i in range(LIVE_STEPS):
        steps.append({"at": start_s + 0.4 * i, "state": "running", "progress": 10 * (i + 1)})
    steps.append({"at": start_s + 0.4 * LIVE_STEPS, "state": "succeeded"})
    return steps


async def test_200_ws_and_200_sse_subscribers_get_the_same_events_in_the_same_order(
    sim: str, client: httpx.AsyncClient, http_path: str
) -> None:
    task = await create_sim_task(client, sim, "videoproc", many_steps(start_s=6.0))
    with running_gateway(sim_config(sim)) as (base, gw):
        ws_url = base.replace("http", "ws") + "/v1/ws"
        # Polled once first, so that every subscriber starts from the same snapshot.
        first = (await client.get(events_url(base, task).rsplit("/", 1)[0])).json()
        assert first["event"] == "snapshot" and first["seq"] == 1
        sse = [
            asyncio.create_task(read_sse(client, events_url(base, task)))
            for _ in range(SUBSCRIBERS)
        ]
        ws = [asyncio.create_task(read_ws(ws_url, [task])) for _ in range(SUBSCRIBERS)]
        sse_results = await asyncio.wait_for(asyncio.gather(*sse), 60)
        ws_results = await asyncio.wait_for(asyncio.gather(*ws), 60)
        direct = gw.queue_stats.direct

    expected = transitions(sse_results[0])
    assert expected[0][0] == "snapshot" and expected[-1][2] == "succeeded"
    seqs = [t[1] for t in expected]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    live = len(expected) - 1
    assert live >= LIVE_STEPS  # most progress steps were seen by the poller
    for got in sse_results:
        assert transitions(got) == expected
    for frames in ws_results:
        assert frames[0] == {"event": "subscribed", "tasks": [task]}
        assert transitions(frames[1:]) == expected
    if http_path == "fast":
        # More direct writes than every SSE subscriber's live events: WebSockets took them too.
        assert direct > SUBSCRIBERS * live, (direct, live)
    else:
        assert direct == 0


class BreakingTransport:
    """The socket under one WebSocket, which starts failing every write once armed
    (what a transport whose peer reset it does mid-write); the rest passes through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.armed = False

    def write(self, data: bytes) -> None:
        if self.armed:
            raise ConnectionResetError("Connection reset by peer")
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def break_socket_of(gw: Gateway, task: str) -> BreakingTransport:
    """Put a breaking transport under the one WebSocket that follows ``task``."""
    (queue,) = gw.hub.fanout.queues(task)  # type: ignore[attr-defined]
    connection = queue.direct.__self__  # the socket's ws.Connection (its deliver_now)
    protocol = connection.direct.protocol
    broken = BreakingTransport(protocol.transport)
    protocol.transport = broken
    return broken


async def frames_until(ws: Any, done: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        out.append(frame)
        if done(frame):
            return out


@pytest.mark.fast_path_only  # about the direct writer
async def test_a_websocket_whose_direct_write_fails_is_dropped_and_resumes_with_since(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", many_steps(start_s=2.0))
    with running_gateway(sim_config(sim)) as (base, gw):
        ws_url = base.replace("http", "ws") + "/v1/ws"
        async with ws_connect(ws_url, proxy=None, open_timeout=10) as ws:
            await ws.send(json.dumps({"op": "subscribe", "tasks": [task]}))
            first = await frames_until(ws, lambda f: f.get("event") == "snapshot")
            assert first[0] == {"event": "subscribed", "tasks": [task]}
            breaking = break_socket_of(gw, task)
            # The next live event is written directly, and the write raises.
            got = await frames_until(ws, lambda f: f.get("event") == "progress")
            breaking.armed = True
            with pytest.raises(ConnectionClosed) as closed:
                await frames_until(ws, lambda f: False)
            last_seq = got[-1]["seq"]
        # Dropped without a close frame (a frame may have been cut short).
        assert closed.value.rcvd is None
        assert gw.queue_stats.direct_failures == 1
        # It resumes from the last seq it got: the rest, in order, nothing twice.
        rest = await asyncio.wait_for(read_ws(ws_url, [task], since={task: last_seq}), 20)
        snapshot = (await client.get(events_url(base, task).rsplit("/", 1)[0])).json()

    seqs = [f["seq"] for f in rest if "seq" in f]
    assert seqs == list(range(last_seq + 1, snapshot["seq"] + 1)), seqs
    assert rest[-1]["state"] == "succeeded"


SOCKETS = 20


async def test_an_idle_websocket_holds_one_task_on_the_fast_path_and_still_answers_frames(
    sim: str, client: httpx.AsyncClient, http_path: str
) -> None:
    """Every open socket keeps its tasks: the fast path serves frames and events
    on one, woken by the protocol's inbox; the plain path reads on a second."""
    quiet = [{"at": 0, "state": "running", "progress": 5}, {"at": 120, "state": "succeeded"}]
    task = await create_sim_task(client, sim, "videoproc", quiet)
    with running_gateway(sim_config(sim)) as (base, gw):
        ws_url = base.replace("http", "ws") + "/v1/ws"
        async with contextlib.AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(ws_connect(ws_url, proxy=None, open_timeout=20))
                for _ in range(SOCKETS)
            ]
            for ws in sockets:  # subscribed and caught up: idle, waiting for events
                await ws.send(json.dumps({"op": "subscribe", "tasks": [task]}))
                assert json.loads(await ws.recv())["event"] == "subscribed"
                assert json.loads(await ws.recv())["event"] == "snapshot"
            before_close = gateway_tasks(gw)
            # An idle socket's task is waiting for events: a frame must wake it.
            for ws in sockets:
                await ws.send(json.dumps({"op": "ping"}))
            for ws in sockets:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                while frame.get("event") in ("state", "progress"):  # the task's own news
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert frame == {"event": "pong"}
        # The sockets are closed: their tasks end with them. Counted once the
        # count has held still for half a second (every socket's tasks ended).
        counts = [gateway_tasks(gw)]
        for _ in range(200):
            await asyncio.sleep(0.05)
            counts.append(gateway_tasks(gw))
            if len(set(counts[-10:])) == 1 and len(counts) >= 10:
                break

    gone = before_close - counts[-1]
    per_socket = 1 if http_path == "fast" else 2
    # A poll or two in flight at either count may add or take a task.
    assert abs(gone - per_socket * SOCKETS) <= 3, (before_close, counts[-10:])
