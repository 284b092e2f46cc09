"""Logs: JSON lines in production; a line per upstream error, none per event, no secrets."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx

from gateway.sim.credentials import SIM_CREDENTIALS
from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import GatewayProcess, sim_config
from tests.integration.readers import read_sse


async def test_json_logs_name_provider_and_task_and_nothing_secret(
    sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    steps = [{"at": 0.2 * i, "state": "running", "progress": 5 * i} for i in range(1, 15)]
    busy = await create_sim_task(
        client, sim, "videoproc", [*steps, {"at": 3.2, "state": "succeeded"}]
    )
    failing = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "running"}])
    doc = sim_config(
        sim,
        server={"log_format": "json"},
        providers={"videoproc": {"interval_s": 0.1, "max_interval_s": 0.1}},
    )
    gateway = GatewayProcess(doc, tmp_path).start()
    try:
        await client.post(
            f"{sim}/_sim/faults",
            json={"provider": "ailab", "mode": "http500", "duration_s": 1.5},
        )
        streams = [read_sse(client, events_url(gateway.url, busy)) for _ in range(20)]
        failing_stream = asyncio.create_task(
            read_sse(client, events_url(gateway.url, failing), stop_after=3)
        )
        events = await asyncio.gather(*streams)
        await asyncio.wait_for(failing_stream, 10)
        gateway.signal(signal.SIGTERM)
        gateway.wait(10)
    finally:
        gateway.stop()

    lines = [line for line in gateway.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    errors = [r for r in records if r["msg"] == "upstream error"]
    assert errors and all(r["provider"] == "ailab" and r["task"] == failing for r in errors)
    assert all(r["fault"] == "server" and "retry_in_s" in r for r in errors)
    # 20 subscribers × ~15 events were delivered; the log did not grow with them.
    delivered = sum(len(e) for e in events)
    assert delivered >= 20 * 5
    assert len(records) < 40
    text = "\n".join(lines)
    for secret in (
        SIM_CREDENTIALS.ailab_api_key,
        SIM_CREDENTIALS.aholo_app_secret,
        SIM_CREDENTIALS.tryon_api_key,
        SIM_CREDENTIALS.genpic_private_key,
    ):
        assert secret not in text
