"""Helpers for live-server tests (fixtures live in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import httpx


async def create_sim_task(
    client: httpx.AsyncClient, sim: str, provider: str, timeline: list[dict[str, Any]], **extra: Any
) -> str:
    """Create a simulator task; return its gateway task key ``provider:id``."""
    reply = await client.post(
        f"{sim}/_sim/tasks", json={"provider": provider, "timeline": timeline, **extra}
    )
    reply.raise_for_status()
    return f"{provider}:{reply.json()['task_id']}"


async def sim_stats(client: httpx.AsyncClient, sim: str) -> dict[str, Any]:
    reply = await client.get(f"{sim}/_sim/stats")
    reply.raise_for_status()
    stats: dict[str, Any] = reply.json()
    return stats


def events_url(base: str, task: str) -> str:
    provider, _, task_id = task.partition(":")
    return f"{base}/v1/tasks/{provider}/{task_id}/events"
