"""A gateway on Redis stops when asked, whatever its loops are awaiting at that moment.

On Python 3.11 redis-py can swallow a cancel (its socket writes go through
``asyncio.wait_for``; see gateway/aio.py). A loop that then carried on would
keep a node from ever finishing its shutdown. Here a gateway with busy lanes,
a Redis hub and a webhook dispatcher is stopped at random moments, many
times: every stop must complete.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import httpx

from gateway.config import parse_config
from gateway.service import Gateway
from tests.integration.conftest import create_sim_task
from tests.integration.gateway_server import sim_config
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (a fixture)

STOPS = 25
TASKS_PER_PROVIDER = 6
EVERY_50_MS = {"interval_s": 0.05, "max_interval_s": 0.05}


async def test_a_busy_redis_gateway_always_finishes_stopping(
    sim: str,
    client: httpx.AsyncClient,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    running = [{"at": 0, "state": "running", "progress": 1}]
    keys = [
        await create_sim_task(client, sim, provider, running)
        for provider in ("videoproc", "aholo", "genpic")
        for _ in range(TASKS_PER_PROVIDER)
    ]
    prefix = f"stop-{uuid.uuid4().hex[:8]}"
    doc = sim_config(
        sim,
        providers={p: EVERY_50_MS for p in ("videoproc", "aholo", "genpic")},
        backend={"kind": "redis", "url": redis_server.url, "prefix": prefix},
        webhooks={
            "secret": "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMmJ5dGVz",
            "allow_private": True,
            "poll_s": 0.01,
        },
    )
    config = parse_config(doc, env={})
    rng = random.Random(7)
    polls = 0
    for attempt in range(STOPS):
        gateway = Gateway(config)
        await gateway.start()
        for key in keys:
            await gateway.poller.watch(gateway.parse_key(key))
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        polls += sum(lane.requests_sent for lane in gateway.poller.lanes.values())
        stopping = asyncio.create_task(gateway.close())
        done, _ = await asyncio.wait({stopping}, timeout=10)
        assert done, f"stop {attempt + 1} of {STOPS} never finished"
        stopping.result()
    # The lanes really were at work on Redis when they were stopped.
    assert polls > STOPS * 10
