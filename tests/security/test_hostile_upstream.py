"""An upstream that echoes the gateway's credentials back, in every spelling.

The hostile server below answers every status request with the configured
credentials — raw, percent-encoded, base64, JSON-escaped — in the status
value, the message, the error texts, the result URLs and fields nobody
documented. A real ``pollcast serve`` polls it (one built-in adapter, one
declarative ``http`` provider with a header key and a query key); its SSE
events, REST snapshots, ``/metrics``, JSON logs and ``check-config --probe``
output must hold none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from websockets.asyncio.client import connect as ws_connect

from tests.integration.conftest import events_url
from tests.integration.gateway_server import FAST, GatewayProcess
from tests.integration.readers import read_sse
from tests.security.spellings import spellings

# Characters that every encoding spells differently: "/", "+", "=", "&", "~", " ".
AILAB_KEY = f"ak{secrets.token_hex(10)}/+=&~ {secrets.token_hex(3)}"
HEADER_KEY = f"hk{secrets.token_hex(10)}+/={secrets.token_hex(3)}"
QUERY_KEY = f"qk{secrets.token_hex(10)}/+=& {secrets.token_hex(3)}"
SECRETS = {"ailab": [AILAB_KEY], "hostile": [HEADER_KEY, QUERY_KEY]}


def echo(provider: str) -> str:
    return " | ".join(form for s in SECRETS[provider] for form in spellings(s))


def ailab_reply(task_id: str) -> tuple[int, dict[str, Any]]:
    text = echo("ailab")
    if task_id.startswith("fail"):
        return 200, {"error_code": 0, "task_status": -1, "error_msg": text, "leak": text}
    # An API error whose text is the key: a fault, a notice, a log line.
    return 200, {
        "error_code": 500,
        "error_msg": text,
        "error_detail": {"code": text, "message": text},
    }


def hostile_reply(task_id: str) -> tuple[int, dict[str, Any]]:
    text = echo("hostile")
    extra = {"unknown": text, "nested": [{"deeper": text}], text: 1}
    if task_id.startswith("done"):
        return 200, {
            "error_code": 0,
            "status": "done",
            "message": text,
            "extra": extra,
            "result": [f"https://cdn.example/{text}"],
        }
    if task_id.startswith("err"):
        return 200, {"error_code": 7, "error_msg": text}
    # A status no mapping knows, made of the credentials.
    return 200, {"error_code": 0, "status": text, "message": text, "extra": extra}


class Hostile(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        task_id = parse_qs(url.query).get("task_id", parse_qs(url.query).get("id", [""]))[0]
        if url.path.startswith("/ailab/"):
            status, body = ailab_reply(task_id)
        else:
            status, body = hostile_reply(task_id)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def hostile_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def config(upstream: str) -> dict[str, Any]:
    quick = {**FAST, "backoff_max_s": 0.5}
    return {
        "backend": {"kind": "local", "path": ":memory:"},
        "polling": {"grace_s": 5.0},
        "server": {"log_format": "json", "heartbeat_s": 0.3},
        "auth": {"mode": "open"},
        "providers": {
            "ailab": {
                "kind": "ailab",
                "base_url": f"{upstream}/ailab",
                "api_key": AILAB_KEY,
                **quick,
            },
            "hostile": {
                "kind": "http",
                "base_url": f"{upstream}/http",
                **quick,
                "request": {
                    "url": "{base}/status",
                    "headers": {"x-api-key": HEADER_KEY},
                    "query": {"key": QUERY_KEY, "id": "{task_id}"},
                },
                "map": {
                    "state": {"path": "status", "values": {"done": "succeeded"}},
                    "message": "message",
                    "upstream": {"status": "status", "extra": "extra"},
                    "result": {"urls": "result[*]"},
                },
                "api_error": {
                    "when": "error_code != 0",
                    "message": "error_msg",
                    "task": "error_code < 500",
                    "task_state": "failed",
                },
            },
        },
    }


TERMINAL = ["ailab:fail-1", "hostile:done-1", "hostile:err-1"]
ONGOING = ["ailab:apierr-1", "hostile:weird-1"]


async def emitted(client: httpx.AsyncClient, base: str) -> tuple[list[str], dict[str, Any]]:
    """Everything the gateway says about the hostile tasks, as text; the terminal
    events by task."""
    seen: list[str] = []
    ends: dict[str, Any] = {}
    for task in TERMINAL + ONGOING:
        provider, _, task_id = task.partition(":")
        reply = await client.post(
            f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id}
        )
        assert reply.status_code == 201, reply.text
        seen.append(reply.text)
    for task in TERMINAL:
        async with asyncio.timeout(20):
            events = await read_sse(client, events_url(base, task) + "?last_event_id=0")
        assert events[-1]["terminal"], events
        ends[task] = events[-1]
        seen.append(json.dumps(events))
    for task in ONGOING:
        # A snapshot, then whatever comes: notices of the failing polls, the odd status.
        seen.append(await read_for(client, events_url(base, task), seconds=2.0))
    for task in TERMINAL + ONGOING:
        provider, _, task_id = task.partition(":")
        seen.append((await client.get(f"{base}/v1/tasks/{provider}/{task_id}")).text)
    for path in ("/v1/tasks", "/v1/providers", "/metrics"):
        seen.append((await client.get(base + path)).text)
    # Errors quote what the client sent: a credential in it is redacted there too.
    bad = await client.get(f"{base}/v1/events", params={"tasks": HEADER_KEY})
    assert bad.status_code == 422 and "[redacted]" in bad.json()["detail"], bad.text
    seen.append(bad.text)
    async with ws_connect(base.replace("http", "ws", 1) + "/v1/ws", proxy=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "tasks": [HEADER_KEY]}))
        frame = json.loads(await ws.recv())
    assert frame["event"] == "error" and "[redacted]" in frame["message"], frame
    seen.append(json.dumps(frame))
    return seen, ends


async def read_for(client: httpx.AsyncClient, url: str, *, seconds: float) -> str:
    """The raw bytes of a stream that does not end, for ``seconds``."""
    chunks: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds), client.stream("GET", url) as reply:
            assert reply.status_code == 200
            async for chunk in reply.aiter_text():
                chunks.append(chunk)
    assert chunks, url
    return "".join(chunks)


def probe(config_path: Path, task: str) -> str:
    command = [sys.executable, "-m", "gateway.cli", "check-config", "-c", str(config_path)]
    run = subprocess.run(
        [*command, "--probe", task],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run.stdout + run.stderr


def leaks(text: str) -> list[str]:
    """The spellings of any credential found in ``text`` (a few characters of each)."""
    found = []
    for secret in [s for group in SECRETS.values() for s in group]:
        for form in spellings(secret):
            if form in text:
                found.append(form[:6] + "…")
    return found


async def test_credentials_echoed_by_an_upstream_reach_nothing_the_gateway_emits(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    with hostile_upstream() as upstream:
        gateway = GatewayProcess(config(upstream), tmp_path).start()
        try:
            seen, ends = await emitted(client, gateway.url)
        finally:
            gateway.stop()
        log = gateway.log()
        probes = {
            task: probe(gateway.config_path, task) for task in ("ailab:fail-1", "hostile:done-1")
        }

    events = "\n".join(seen)
    # The echoes did arrive, and were replaced.
    assert "[redacted]" in events
    done = ends["hostile:done-1"]
    assert done["state"] == "succeeded" and done["result"]["urls"], done
    assert done["upstream"]["extra"]["unknown"].startswith("[redacted]"), done
    assert ends["ailab:fail-1"]["error"]["message"].startswith("[redacted]")
    assert ends["hostile:err-1"]["state"] == "failed"
    assert "ailab API error" in log and '"level":"warning"' in log  # the faults were logged
    for task, out in probes.items():
        assert "HTTP 200 OK" in out and "[redacted]" in out, (task, out)
    assert "key=[redacted]" in probes["hostile:done-1"], probes["hostile:done-1"]

    assert leaks(events) == [], "events, snapshots or /metrics"
    assert leaks(log) == [], "logs"
    for task, out in probes.items():
        assert leaks(out) == [], f"check-config --probe {task}"
