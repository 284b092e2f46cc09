"""Upstream faults: the gateway keeps serving, backs off, says so, and recovers."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import httpx
import pytest

from tests.integration.conftest import create_sim_task, events_url, sim_stats
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse

BASE_S = 0.2
FAULT_S = 4.0
TIMEOUT_S = 0.3

# mode → (the notice it must cause, seconds each attempt costs besides the
# interval, how long the fault lasts). A timed-out attempt costs its timeout,
# so backoff needs a longer window to show against it.
MODES: dict[str, tuple[str, float, float]] = {
    "http500": ("upstream_server", 0.0, FAULT_S),
    "timeout": ("upstream_timeout", TIMEOUT_S, 7.0),
    "rate_limit": ("upstream_rate_limited", 0.0, FAULT_S),
    "malformed": ("upstream_malformed", 0.0, FAULT_S),
    "reset": ("upstream_network", 0.0, FAULT_S),
}


def config(sim: str) -> dict[str, Any]:
    return sim_config(
        sim,
        providers={
            "videoproc": {
                "interval_s": BASE_S,
                "max_interval_s": BASE_S,
                "timeout_s": TIMEOUT_S,
                "backoff_max_s": 1.5,
            }
        },
    )


async def _watch_through_fault(
    sim: str, client: httpx.AsyncClient, fault: dict[str, Any]
) -> tuple[list[dict[str, Any]], int, bool]:
    """Subscribe, inject ``fault``, return (events, requests during it, healthy)."""
    fault_s = fault["duration_s"]
    timeline = [
        {"at": 0, "state": "running", "progress": 10},
        {"at": fault_s + 3.0, "state": "running", "progress": 90},
        {"at": fault_s + 3.5, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "videoproc", timeline)
    with running_gateway(config(sim)) as (base, _gw):
        reader = asyncio.create_task(read_sse(client, events_url(base, task)))
        await asyncio.sleep(0.5)
        start = (await sim_stats(client, sim))["tasks"][task]
        await client.post(f"{sim}/_sim/faults", json={"provider": "videoproc", **fault})
        await asyncio.sleep(fault_s / 2)
        healthy = (await client.get(f"{base}/healthz")).status_code == 200
        healthy &= (await client.get(f"{base}/v1/providers")).status_code == 200
        await asyncio.sleep(fault_s / 2)
        during = (await sim_stats(client, sim))["tasks"][task] - start
        events = await asyncio.wait_for(reader, 30)
    return events, during, healthy


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_fault_is_noticed_backed_off_and_recovered(
    mode: str, sim: str, client: httpx.AsyncClient
) -> None:
    code, attempt_s, fault_s = MODES[mode]
    fault = {"mode": mode, "probability": 1.0, "duration_s": fault_s, "retry_after_s": 1}
    events, during, healthy = await _watch_through_fault(sim, client, fault)

    assert healthy
    notices = [e for e in events if e["event"] == "notice"]
    assert [n["code"] for n in notices][:2] == [code, "upstream_recovered"], notices
    assert "retrying in" in notices[0]["message"]
    assert events[-1]["state"] == "succeeded" and events[-1]["terminal"]
    assert [e["progress"] for e in events if e["event"] == "progress"] == [90]
    # Polling at the base interval would have sent fault_s / (BASE_S + attempt) requests.
    naive = fault_s / (BASE_S + attempt_s)
    assert 1 <= during <= 0.75 * naive, f"{during} requests during the fault, naive {naive:.0f}"


async def test_slow_upstream_is_noticed_and_never_overlapped(
    sim: str, client: httpx.AsyncClient
) -> None:
    fault = {"mode": "slow", "probability": 1.0, "duration_s": FAULT_S, "delay_s": 0.25}
    events, during, healthy = await _watch_through_fault(sim, client, fault)
    assert healthy
    codes = [e["code"] for e in events if e["event"] == "notice"]
    assert codes[:2] == ["upstream_slow", "upstream_recovered"]
    assert events[-1]["state"] == "succeeded"
    # One request in flight per task: never more than the fault window allows.
    assert during <= FAULT_S / 0.25 + 1


async def test_retry_after_is_respected_to_the_second(sim: str, client: httpx.AsyncClient) -> None:
    task = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    with running_gateway(config(sim)) as (base, _gw):
        reader = asyncio.create_task(read_sse(client, events_url(base, task), stop_after=2))
        await asyncio.sleep(0.5)
        await client.post(
            f"{sim}/_sim/faults",
            json={
                "provider": "videoproc",
                "mode": "rate_limit",
                "retry_after_s": 2,
                "duration_s": 4.5,
            },
        )
        # Sample the simulator's request count to time each request to ~20 ms.
        stamps: list[float] = []
        last = (await sim_stats(client, sim))["tasks"][task]
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            count = (await sim_stats(client, sim))["tasks"][task]
            stamps += [time.monotonic()] * (count - last)
            last = count
            await asyncio.sleep(0.02)
        reader.cancel()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(stamps) >= 3
    # Every request after a 429 waited out its Retry-After (2 s) — the first
    # two or three all fell inside the fault window.
    assert all(gap >= 1.95 for gap in gaps[:2]), gaps


async def test_wrong_credentials_stop_after_a_few_tries(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "running"}])
    doc = sim_config(sim, providers={"ailab": {"api_key": "wrong-key", "backoff_max_s": 0.3}})
    with running_gateway(doc) as (base, _gw):
        events = await asyncio.wait_for(read_sse(client, events_url(base, task)), 20)
        await asyncio.sleep(1.0)
        stats = await sim_stats(client, sim)
    assert events[-1]["state"] == "failed" and events[-1]["terminal"]
    assert events[-1]["error"]["code"] == "upstream_auth"
    assert "upstream_auth" in [e.get("code") for e in events if e["event"] == "notice"]
    assert stats["tasks"][task] == 3  # then it stopped: no hammering
    assert "wrong-key" not in str(events)
