"""``GET /asyncapi.json`` from a live gateway: valid AsyncAPI 3.0, true to the wire.

* The reference parser (``@asyncapi/parser``, run by ``validate.mjs`` under
  Node) parses the document a live gateway serves and reports no diagnostic of
  severity ``error``.
* Every frame a live gateway actually sends — SSE events, WebSocket frames
  (``subscribed``, events, ``pong``, ``error``, ``unsubscribed``) — and the
  body of a webhook POST validate against the document's own schemas.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
from websockets.asyncio.client import connect as ws_connect

from gateway.core.model import Event, EventKind, Result, State
from gateway.web.asyncapi import WebhookPayload, asyncapi_document
from gateway.webhooks.model import payload
from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse
from tests.integration.webhook_receiver import Receiver
from tests.npm_deps import ensure_node_modules

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
NODE_TIMEOUT_S = 60
TOKEN_AUTH = {
    "mode": "token",
    "api_keys": ["asyncapi-test-api-key"],
    "token_secret": "asyncapi-test-token-secret-0123456789abcdef",
}


def parse_with_reference_parser(url: str) -> tuple[int, list[dict[str, Any]]]:
    """Run ``validate.mjs`` on ``url``: its exit status and its JSON lines."""
    node = shutil.which("node")
    assert node is not None, "node (≥ 20) is needed: scripts/ensure-system-deps.sh installs it"
    ensure_node_modules(HERE)
    run = subprocess.run(
        [node, str(HERE / "validate.mjs"), url],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        env={"PATH": str(Path(node).parent), "NO_PROXY": "*"},
    )
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode in (0, 1), f"validate.mjs failed: {run.stdout}\n{run.stderr}"
    return run.returncode, lines


def validator(document: dict[str, Any], component: str) -> Any:
    """A JSON Schema validator of one of the document's schema components."""
    schema = {
        "$ref": f"#/components/schemas/{component}",
        "components": document["components"],
    }
    return jsonschema_rs.validator_for(schema)


def server_frame_validator(document: dict[str, Any]) -> Any:
    """Any of the messages the document says the server sends on ``/v1/ws``."""
    send = document["operations"]["sendWsFrames"]["messages"]
    names = [ref["$ref"].rsplit("/", 1)[1] for ref in send]
    channel = document["channels"]["ws"]["messages"]
    payloads = []
    for name in names:
        message_ref = channel[name]["$ref"].rsplit("/", 1)[1]
        payloads.append(document["components"]["messages"][message_ref]["payload"])
    schema = {"oneOf": payloads, "components": document["components"]}
    return jsonschema_rs.validator_for(schema)


@pytest.mark.parametrize("auth", ["open", "token"])
def test_reference_parser_accepts_the_live_document(sim: str, auth: str) -> None:
    doc = sim_config(sim, **({"auth": TOKEN_AUTH} if auth == "token" else {}))
    with running_gateway(doc) as (base, _gw):
        reply = httpx.get(f"{base}/asyncapi.json", timeout=5)
        code, lines = parse_with_reference_parser(f"{base}/asyncapi.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    document = reply.json()
    assert document["asyncapi"] == "3.0.0"
    assert document["servers"]["http"]["host"] == base.removeprefix("http://")
    assert bool(document["servers"]["ws"]["security"]) is (auth == "token")
    errors = [line for line in lines if line.get("severity") == "error"]
    assert code == 0 and not errors, lines
    [parsed] = [line for line in lines if line.get("parsed")]
    assert parsed["version"] == "3.0.0"
    assert set(parsed["channels"]) == {"taskEvents", "manyTasksEvents", "ws", "webhook"}
    assert {"event", "subscribe", "unsubscribe", "ping", "pong", "error"} <= set(parsed["messages"])


def test_reference_parser_reports_a_broken_document(tmp_path: Path) -> None:
    """The check can fail: a schema with a type AsyncAPI does not know is an error."""
    document = asyncapi_document(host="127.0.0.1:1")
    document["components"]["schemas"]["Event"]["properties"]["seq"] = {"type": "integr"}
    (tmp_path / "asyncapi.json").write_text(json.dumps(document))
    command = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]
    with subprocess.Popen(
        [*command, "--directory", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            port = server.stdout.readline().split("port ")[1].split()[0]
            code, lines = parse_with_reference_parser(f"http://127.0.0.1:{port}/asyncapi.json")
        finally:
            server.kill()
    assert code == 1
    assert any(
        line.get("severity") == "error" and "seq" in line.get("path", []) for line in lines
    ), lines


async def test_every_frame_the_gateway_sends_matches_the_document(
    sim: str, client: httpx.AsyncClient
) -> None:
    timeline = [
        {"at": 0, "state": "queued"},
        {"at": 0.5, "state": "running", "progress": 40, "message": "working"},
        {"at": 1.0, "state": "succeeded"},
    ]
    with running_gateway(sim_config(sim)) as (base, _gw):
        document = (await client.get(f"{base}/asyncapi.json")).json()
        event_schema = validator(document, "Event")
        frame_schema = server_frame_validator(document)
        task = await create_sim_task(client, sim, "videoproc", timeline)
        ws_url = base.replace("http://", "ws://") + "/v1/ws"
        frames: list[dict[str, Any]] = []
        async with ws_connect(ws_url, proxy=None, open_timeout=20) as ws:
            await ws.send(json.dumps({"op": "subscribe", "tasks": [task]}))
            while not (frames and frames[-1].get("terminal")):
                frames.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"op": "ping"}))
            frames.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"op": "subscribe", "tasks": "not a list"}))
            frames.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"op": "unsubscribe", "tasks": [task]}))
            frames.append(json.loads(await ws.recv()))
        sse = await read_sse(client, events_url(base, task) + "?last_event_id=0")

    kinds = [frame["event"] for frame in frames]
    assert kinds[0] == "subscribed" and kinds[-3:] == ["pong", "error", "unsubscribed"]
    assert "state" in kinds
    for frame in frames:
        frame_schema.validate(frame)
    assert [e["state"] for e in sse][-1] == "succeeded"
    for event in sse:
        event_schema.validate({k: v for k, v in event.items() if not k.startswith("_")})
    # And the schema is strict enough to refuse what the gateway never sends.
    assert not event_schema.is_valid({**sse[-1], "state": "done"})
    assert not frame_schema.is_valid({"event": "subscribed"})


def _event(kind: EventKind, state: State) -> Event:
    return Event(
        event=kind,
        task="videoproc:v1",
        seq=2,
        state=state,
        terminal=state.terminal,
        progress=100,
        position=None,
        message=None,
        result=Result(urls=("https://cdn.example/v.mp4",)),
        error=None,
        upstream={"status": "completed"},
        updated_at="2026-11-21T10:00:05.120Z",
        observed_at="2026-11-21T10:00:05.118Z",
    )


@pytest.mark.parametrize(
    ("kind", "state"), [(EventKind.STATE, State.SUCCEEDED), (EventKind.PROGRESS, State.RUNNING)]
)
def test_webhook_bodies_are_the_documented_payload(kind: EventKind, state: State) -> None:
    body = payload(_event(kind, state))
    # Strict decoding: no field the type does not name, each of the named type.
    decoded = msgspec.json.decode(body, type=WebhookPayload)
    assert decoded.data == _event(kind, state)
    document = asyncapi_document(host="127.0.0.1:8000")
    validator(document, "WebhookPayload").validate(json.loads(body))
    message = "taskState" if kind is EventKind.STATE else "taskProgress"
    headers = document["components"]["messages"][message]["headers"]
    assert set(headers["required"]) == {"webhook-id", "webhook-timestamp", "webhook-signature"}


WEBHOOKS: dict[str, Any] = {
    "secret": "whsec_" + "YXN5bmNhcGktdGVzdC13ZWJob29rLXNlY3JldC0zMiE=",
    "allowed_hosts": ["127.0.0.1"],
    "allow_private": True,
    "retry_base_s": 0.2,
    "retry_max_s": 1.0,
    "poll_s": 0.1,
}


async def test_webhook_posts_of_a_live_gateway_match_the_document(
    sim: str, client: httpx.AsyncClient
) -> None:
    timeline = [
        {"at": 0, "state": "running", "progress": 10},
        {"at": 0.5, "state": "running", "progress": 60},
        {"at": 1.0, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "videoproc", timeline)
    provider, _, task_id = task.partition(":")
    with (
        Receiver() as receiver,
        running_gateway(sim_config(sim, webhooks=WEBHOOKS)) as (base, _gw),
    ):
        document = (await client.get(f"{base}/asyncapi.json")).json()
        webhook = {"url": receiver.url, "events": ["state", "progress"]}
        reply = await client.post(
            f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id, "webhook": webhook}
        )
        assert reply.status_code == 201, reply.text
        await receiver.wait_for(accepted=3, timeout_s=20)
    messages = document["components"]["messages"]
    payload_schema = validator(document, "WebhookPayload")
    headers_schema = jsonschema_rs.validator_for(messages["taskState"]["headers"])
    kinds = set()
    for delivery in receiver.accepted:
        payload_schema.validate(delivery.json)
        headers_schema.validate(delivery.headers)
        kinds.add(delivery.json["type"])
    assert kinds == {"task.state", "task.progress"}
    assert receiver.accepted[-1].json["data"]["state"] == "succeeded"
