"""No credential leaves the gateway: not in events, errors, headers, logs, metrics or /v1/providers.

A real ``pollcast serve`` process gets distinctive random credentials (ours
and the upstreams', which the simulator is configured to accept), is driven
through every endpoint, every framing, every upstream fault and its drain;
then everything it emitted is searched for each secret value.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
from pathlib import Path
from typing import Any

import httpx
import msgspec
from websockets.asyncio.client import connect as ws_connect

from gateway.config import parse_config
from gateway.sim import SimConfig
from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import GatewayProcess, sim_config
from tests.integration.readers import read_ws
from tests.integration.sim_server import running_sim
from tests.security.spellings import spellings

FAULTS = ["http500", "malformed", "rate_limit", "reset", "timeout", "slow"]
PROVIDERS = ["ailab", "aholo", "tryon", "genpic", "videoproc"]


def timeline(n: int, ending: str = "succeeded", end_at: float = 1.2) -> list[dict[str, Any]]:
    return [
        {"at": 0, "state": "queued", "position": 2},
        {"at": end_at / 2, "state": "running", "progress": 10 + n},
        {"at": end_at, "state": ending},
    ]


class Recorder:
    """Everything the gateway sent us, as text."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.seen: list[str] = []

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        reply = await self.client.request(method, url, **kwargs)
        self.keep(reply)
        return reply

    def keep(self, reply: httpx.Response) -> None:
        self.seen.append(f"{reply.status_code} {reply.headers.multi_items()} {reply.text}")

    async def stream(self, url: str, **kwargs: Any) -> str:
        """A whole stream (SSE or NDJSON), headers and body, until the server ends it."""
        async with self.client.stream("GET", url, **kwargs) as reply:
            body = "".join([chunk async for chunk in reply.aiter_text()])
        self.seen.append(f"{reply.status_code} {reply.headers.multi_items()} {body}")
        return body


async def test_no_secret_in_anything_the_gateway_emits(tmp_path: Path) -> None:
    ours = {
        "api_key": secrets.token_hex(16),
        "old_api_key": secrets.token_hex(16),
        "token_secret": secrets.token_hex(32),
        "old_token_secret": secrets.token_hex(32),
    }
    upstream = SimConfig(
        ailab_api_key=secrets.token_hex(16),
        aholo_app_key=secrets.token_hex(16),
        aholo_app_secret=secrets.token_hex(16),
        aholo_appuid=secrets.token_hex(16),
        tryon_open_id=secrets.token_hex(16),
        tryon_api_key=secrets.token_hex(16),
        genpic_public_key=secrets.token_hex(16),
        genpic_private_key=secrets.token_hex(16),
        timeout_hold_s=2.0,
    )
    refused_key = secrets.token_hex(16)  # an upstream credential the simulator rejects
    with running_sim(upstream) as sim:
        creds = upstream.provider_credentials(sim)
        quick = {"timeout_s": 0.5, "backoff_max_s": 0.5}
        doc = sim_config(
            sim,
            providers={kind: {**creds[kind], **quick} for kind in PROVIDERS},
            auth={
                "mode": "token",
                "api_keys": [ours["api_key"], ours["old_api_key"]],
                "token_secret": ours["token_secret"],
                "previous_token_secrets": [ours["old_token_secret"]],
            },
            server={"log_format": "json", "heartbeat_s": 0.3, "shutdown_timeout_s": 2},
        )
        doc["providers"]["ailab-refused"] = {
            **doc["providers"]["ailab"],
            "api_key": refused_key,
        }
        # The gateway's own list of what to keep secret misses none of them.
        upstream_values = {
            v for v in msgspec.structs.asdict(upstream).values() if isinstance(v, str)
        }
        every_secret = {*ours.values(), *upstream_values, refused_key}
        assert set(parse_config(doc, env={}).secret_values()) == every_secret

        gateway = start_gateway(doc, tmp_path)
        try:
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                rec = Recorder(client)
                open_stream = await drive(
                    rec, gateway.url, sim, ours["api_key"], ours["old_api_key"]
                )
                gateway.signal(signal.SIGTERM)  # drain: the open stream gets a last notice
                await asyncio.wait_for(open_stream, 10)
            assert gateway.wait(15) == 0
        finally:
            gateway.stop()
        log = gateway.log()
        seen = rec.seen

    assert "draining" in log  # the log is the real thing, and it got this far
    haystack = "\n".join([log, *seen])
    # It saw the whole range: drain, refused credentials, upstream faults of each kind.
    for code in (
        "server_draining",
        "upstream_auth",
        "upstream_server",
        "upstream_malformed",
        "upstream_rate_limited",
        "upstream_network",
        "upstream_timeout",
        "forbidden",
        "not_watched",
        "invalid_token",
        "unauthorized",
        "upstream_requests_total",
    ):
        assert code in haystack, code
    # Subscriber tokens are credentials too: handed out in bodies, never logged.
    assert "WebSocket /v1/ws?token=[redacted]" in log
    assert not re.search(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+", log)
    for value in sorted(every_secret):
        # Raw, percent-encoded, base64, JSON-escaped: and the first half of it.
        for needle in (*spellings(value), value[:16]):
            assert needle not in haystack, f"a secret ({needle[:4]}…) was emitted"


def start_gateway(doc: dict[str, Any], workdir: Path) -> GatewayProcess:
    """A ready ``pollcast serve``; another free port if the first one was taken meanwhile."""
    for _ in range(4):
        gateway = GatewayProcess(doc, workdir)
        try:
            return gateway.start()
        except RuntimeError:
            gateway.stop()
            if "address already in use" not in gateway.log():
                raise
    raise RuntimeError("no free port for the gateway")


async def drive(
    rec: Recorder, base: str, sim: str, api_key: str, old_api_key: str
) -> asyncio.Task[str]:
    """Every endpoint, framing, credential form, error and upstream fault; the
    task reading a stream that is still open at the end."""
    client = rec.client
    backend = {"Authorization": f"Bearer {api_key}"}
    # Tasks on every provider, some ending badly, one on refused credentials.
    tasks = [
        await create_sim_task(client, sim, kind, timeline(i, "failed" if i % 2 else "succeeded"))
        for i, kind in enumerate(PROVIDERS)
    ]
    refused = (
        "ailab-refused:"
        + (await create_sim_task(client, sim, "ailab", timeline(9))).partition(":")[2]
    )
    grants = {}
    for task in [*tasks, refused]:
        provider, _, task_id = task.partition(":")
        reply = await rec.request(
            "POST",
            f"{base}/v1/tasks",
            json={"provider": provider, "task_id": task_id},
            headers=backend,
        )
        assert reply.status_code == 201, reply.text
        grants[task] = reply.json()["token"]
    mux = (
        await rec.request("POST", f"{base}/v1/tokens", json={"tasks": tasks}, headers=backend)
    ).json()["token"]

    # Every framing, every way of presenting a token, to the end.
    readers = [
        rec.stream(f"{events_url(base, t)}?token={grants[t]}&last_event_id=0") for t in tasks
    ]
    readers.append(
        rec.stream(
            events_url(base, tasks[0]),
            headers={
                "Authorization": f"Bearer {grants[tasks[0]]}",
                "Accept": "application/x-ndjson",
            },
        )
    )
    readers.append(
        rec.stream(
            f"{base}/v1/events?tasks={','.join(tasks)}", headers={"Cookie": f"pollcast_token={mux}"}
        )
    )
    readers.append(rec.stream(f"{events_url(base, refused)}?token={grants[refused]}"))
    ws_frames = read_ws(base.replace("http", "ws") + f"/v1/ws?token={mux}", tasks)
    results = await asyncio.wait_for(asyncio.gather(*readers, ws_frames), 30)
    rec.seen.append(json.dumps(results[-1]))

    # Upstream faults of every kind, on every provider, while tasks are polled.
    faulty = [
        await create_sim_task(client, sim, kind, timeline(0, end_at=4.0)) for kind in PROVIDERS
    ]
    for task in faulty:
        provider, _, task_id = task.partition(":")
        grants[task] = (
            await rec.request(
                "POST",
                f"{base}/v1/tasks",
                json={"provider": provider, "task_id": task_id},
                headers=backend,
            )
        ).json()["token"]
    streams = [
        asyncio.create_task(rec.stream(f"{events_url(base, t)}?token={grants[t]}")) for t in faulty
    ]
    for round_ in range(2):
        for i, kind in enumerate(PROVIDERS):
            mode = FAULTS[(i + round_ * 3) % len(FAULTS)]
            fault = {
                "provider": kind,
                "mode": mode,
                "duration_s": 0.9,
                "delay_s": 0.6,
                "retry_after_s": 1,
            }
            (await client.post(f"{sim}/_sim/faults", json=fault)).raise_for_status()
        await asyncio.sleep(1.0)
    await asyncio.wait_for(asyncio.gather(*streams), 20)

    # Every other endpoint, and the error paths.
    provider, _, task_id = tasks[0].partition(":")
    for method, path, kwargs in [
        ("GET", f"/v1/tasks/{provider}/{task_id}", {"headers": backend}),
        ("GET", f"/v1/tasks/{provider}/{task_id}?token={grants[tasks[0]]}", {}),
        ("GET", "/v1/tasks", {"headers": backend}),
        ("GET", "/v1/providers", {"headers": backend}),
        ("GET", "/v1/providers", {"headers": {"Authorization": f"Bearer {old_api_key}"}}),
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/metrics", {}),
        ("GET", "/schema/openapi.json", {}),
        ("GET", "/", {}),
        ("GET", "/v1/providers", {}),  # 401
        ("GET", "/v1/providers", {"headers": {"Authorization": "Bearer nope"}}),  # 401
        ("GET", f"/v1/providers?token={api_key}", {}),  # a key where a token goes: 401
        ("GET", f"{events_url('', tasks[1])}?token={grants[tasks[0]]}", {}),  # 403
        (
            "POST",
            "/v1/tasks",
            {"json": {"provider": "nope", "task_id": "1"}, "headers": backend},
        ),  # 404
        (
            "POST",
            "/v1/tasks",
            {"json": {"provider": "tryon", "task_id": "x"}, "headers": backend},
        ),  # 422
        ("DELETE", f"/v1/tasks/{provider}/{task_id}", {"headers": backend}),
    ]:
        await rec.request(method, base + path, **kwargs)

    # A stream open while the gateway drains gets the last notice.
    last = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    provider, _, task_id = last.partition(":")
    token = (
        await rec.request(
            "POST",
            f"{base}/v1/tasks",
            json={"provider": provider, "task_id": task_id},
            headers=backend,
        )
    ).json()["token"]
    open_stream = asyncio.create_task(rec.stream(f"{events_url(base, last)}?token={token}"))
    async with ws_connect(base.replace("http", "ws") + "/v1/ws", proxy=None) as ws:
        rec.seen.append(str(await ws.recv()))  # refused: no credentials
    await asyncio.sleep(0.5)
    return open_stream
