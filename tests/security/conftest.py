"""A token-mode gateway on the simulator, and what an attacker and a backend hold.

Every test here talks to a live server over real sockets; after each attack
it checks that the server is still fine for a normal client. (``sim`` and
``client`` come from tests/conftest.py.)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import create_sim_task, sim_stats
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse

__all__ = [
    "API_KEY",
    "OLD_API_KEY",
    "OLD_TOKEN_SECRET",
    "TOKEN_SECRET",
    "backend",
    "bearer",
    "create_sim_task",
    "problem",
    "register",
    "secured_doc",
    "sim_stats",
    "still_serving",
]

API_KEY = secrets.token_hex(16)
OLD_API_KEY = secrets.token_hex(16)  # still configured: being rotated out
TOKEN_SECRET = secrets.token_hex(32)
OLD_TOKEN_SECRET = secrets.token_hex(32)  # in previous_token_secrets

RUNNING = [{"at": 0, "state": "running", "progress": 10}]


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


backend = bearer(API_KEY)


def secured_doc(
    sim_url: str, *, server: dict[str, Any] | None = None, **auth: Any
) -> dict[str, Any]:
    """Token mode with two live API keys and a rotated token secret."""
    return sim_config(
        sim_url,
        auth={
            "mode": "token",
            "api_keys": [API_KEY, OLD_API_KEY],
            "token_secret": TOKEN_SECRET,
            "previous_token_secrets": [OLD_TOKEN_SECRET],
            **auth,
        },
        server={"heartbeat_s": 0.5, **(server or {})},
    )


@pytest.fixture
def gateway(sim: str) -> Iterator[str]:
    """A token-mode gateway with default limits; its base URL."""
    with running_gateway(secured_doc(sim)) as (base, _gw):
        yield base


def problem(reply: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem with this status (and code); return its body."""
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/problem+json"), reply.headers
    body: dict[str, Any] = reply.json()
    assert body["status"] == status and body["detail"], body
    if code is not None:
        assert body["code"] == code, body
    return body


async def register(client: httpx.AsyncClient, base: str, task: str, **extra: Any) -> dict[str, Any]:
    """``POST /v1/tasks`` as a backend; the reply (with its subscriber ``token``)."""
    provider, _, task_id = task.partition(":")
    reply = await client.post(
        f"{base}/v1/tasks",
        json={"provider": provider, "task_id": task_id, **extra},
        headers=backend,
    )
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def still_serving(client: httpx.AsyncClient, base: str, sim_url: str) -> None:
    """A normal client right after an attack: register a task, stream it with its token."""
    assert (await client.get(f"{base}/healthz")).json()["status"] == "ok"
    task = await create_sim_task(
        client,
        sim_url,
        "videoproc",
        [{"at": 0, "state": "running", "progress": 50}, {"at": 0.6, "state": "succeeded"}],
    )
    grant = await register(client, base, task)
    events = await read_sse(client, f"{grant['events_url']}?token={grant['token']}")
    assert events[0]["event"] == "snapshot"
    assert events[-1]["state"] == "succeeded" and events[-1]["terminal"]
