from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.integration.sim_server import running_sim


@pytest.fixture
def sim() -> Iterator[str]:
    """A live simulator (its own, fresh) for this test."""
    with running_sim() as url:
        yield url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as c:
        yield c


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
