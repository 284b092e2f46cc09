"""Real clients reading the gateway's streams, as a user's code would."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect as ws_connect


async def read_sse(
    client: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    until: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """SSE events (``data`` parsed, plus ``_id``/``_event``) until the stream ends,
    ``stop_after`` events were read or one satisfies ``until`` (then the
    connection is dropped)."""
    out: list[dict[str, Any]] = []
    async with aconnect_sse(client, "GET", url, headers=dict(headers or {})) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            if not sse.data:
                # A block with only "retry:" dispatches nothing in a browser
                # (WHATWG: empty data buffer → no event); httpx-sse yields it.
                continue
            event = json.loads(sse.data)
            event["_id"] = sse.id
            event["_event"] = sse.event
            out.append(event)
            if stop_after is not None and len(out) >= stop_after:
                break
            if until is not None and until(event):
                break
    return out


async def read_ws(
    url: str, tasks: list[str], since: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """Subscribe over WebSocket; frames until every task delivered its terminal event."""
    out: list[dict[str, Any]] = []
    pending = set(tasks)
    async with ws_connect(url, proxy=None, open_timeout=20) as ws:
        msg: dict[str, Any] = {"op": "subscribe", "tasks": tasks}
        if since:
            msg["since"] = since
        await ws.send(json.dumps(msg))
        while pending:
            frame = json.loads(await ws.recv())
            out.append(frame)
            if frame.get("terminal") and frame.get("event") in ("state", "snapshot"):
                pending.discard(frame["task"])
    return out


def transitions(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What must match between subscribers: kind, seq, state, progress, position."""
    return [
        (e["event"], e["seq"], e["state"], e["progress"], e["position"])
        for e in events
        if e.get("event") in ("snapshot", "state", "progress")
    ]
