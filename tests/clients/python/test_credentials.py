"""Tokens reach a gateway in auth mode ``token``, over SSE and WebSocket alike."""

from __future__ import annotations

import asyncio

import httpx
import pollcast_client as pc
import pytest

from tests.clients.python.conftest import create_sim_task
from tests.integration.gateway_server import running_gateway, sim_config

API_KEY = "client-test-key"


async def test_the_token_is_sent_as_a_bearer_credential(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(
        client, sim, "videoproc", [{"at": 0, "state": "running"}, {"at": 0.6, "state": "succeeded"}]
    )
    doc = sim_config(sim, auth={"mode": "token", "api_keys": [API_KEY], "token_secret": "s" * 40})
    with running_gateway(doc) as (base, _gw):
        final = await pc.wait(base, task, token=API_KEY, timeout=20)
        async with asyncio.timeout(20), pc.connect(base, token=API_KEY) as ws:
            await ws.subscribe([task])
            over_ws = [event async for event in ws]
        with pytest.raises(pc.Unauthorized) as sse_refused:
            await pc.wait(base, task, token="not-a-key", timeout=20)
        with pytest.raises(pc.Unauthorized) as ws_refused:
            async with asyncio.timeout(20), pc.connect(base) as ws:
                await ws.subscribe([task])

    assert final.state is pc.State.SUCCEEDED
    assert over_ws[-1].state is pc.State.SUCCEEDED and over_ws[-1].terminal
    assert sse_refused.value.status == 401
    # Refused after the handshake (close code 4401): a typed error, no retrying.
    assert ws_refused.value.status == 401 and ws_refused.value.code == "unauthorized"
