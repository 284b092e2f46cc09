"""Signed webhooks end to end: live gateway, live simulator, a real receiver.

* a receiver that fails the first three deliveries gets exactly one accepted
  delivery, correctly signed (checked with ``hmac`` here, not with our code);
* killing the gateway between failures and starting it again on the same
  state file still ends in exactly one accepted delivery;
* URLs outside the allow-list, private addresses and other schemes are refused
  when the task is registered;
* on the ``redis`` backend the outbox lives in Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.webhooks.redis_outbox import RedisOutbox
from gateway.webhooks.signing import decode_secret
from tests.integration.conftest import create_sim_task
from tests.integration.gateway_server import GatewayProcess, running_gateway, sim_config
from tests.integration.webhook_receiver import Received, Receiver, standard_signature
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

SECRET = "whsec_" + "aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQtMzItYnl0ZXM="
KEY = decode_secret(SECRET)
OTHER_SECRET = "whsec_" + "YW5vdGhlci1rZXktb2YtMzItYnl0ZXMtZm9yLXRlc3Q="
# The receivers listen on 127.0.0.1: allow it, and only it.
WEBHOOKS: dict[str, Any] = {
    "secret": SECRET,
    "allowed_hosts": ["127.0.0.1"],
    "allow_private": True,
    "retry_base_s": 0.2,
    "retry_max_s": 1.0,
    "poll_s": 0.1,
    "timeout_s": 2.0,
}
QUICK_SUCCESS = [
    {"at": 0, "state": "running", "progress": 10},
    {"at": 0.5, "state": "succeeded"},
]


async def watch(
    client: httpx.AsyncClient, base: str, task: str, webhook: dict[str, Any]
) -> httpx.Response:
    provider, _, task_id = task.partition(":")
    return await client.post(
        f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id, "webhook": webhook}
    )


def assert_signed(received: list[Received]) -> None:
    for request in received:
        assert request.headers["webhook-signature"] == standard_signature(
            KEY, request.headers, request.body
        )


async def test_three_failures_then_exactly_one_accepted_signed_delivery(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", QUICK_SUCCESS)
    with (
        Receiver(fail_first=3) as receiver,
        running_gateway(sim_config(sim, webhooks=WEBHOOKS)) as (base, _gw),
    ):
        reply = await watch(client, base, task, {"url": receiver.url})
        assert reply.status_code == 201, reply.text
        assert reply.json()["webhook"] == {"url": receiver.url, "events": ["terminal"]}
        await receiver.wait_for(accepted=1, timeout_s=20)
        await asyncio.sleep(0.6)  # a duplicate would show up by now
        final = (await client.get(f"{base}/v1/tasks/{task.replace(':', '/', 1)}")).json()
    got = receiver.snapshot()
    assert [r.answered for r in got] == [500, 500, 500, 204]
    assert len(receiver.accepted) == 1
    # The same idempotency id on every attempt: {task}:{seq}.
    assert {r.headers["webhook-id"] for r in got} == {f"{task}:{final['seq']}"}
    assert_signed(got)
    body = receiver.accepted[0].json
    assert body["type"] == "task.state"
    event = body["data"]
    assert (event["task"], event["state"], event["terminal"]) == (task, "succeeded", True)
    assert event["result"]["urls"]
    # The delivered event is the stored one (the snapshot differs only in its label,
    # and carries the task's open subscriptions besides).
    assert {**event, "event": "snapshot"} == {k: v for k, v in final.items() if k != "watchers"}


async def test_every_state_change_and_a_late_registration_after_the_end(
    sim: str, client: httpx.AsyncClient
) -> None:
    timeline = [
        {"at": 0, "state": "queued"},
        {"at": 0.5, "state": "running"},
        {"at": 1.0, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "ailab", timeline)
    with (
        Receiver() as receiver,
        Receiver() as late,
        running_gateway(sim_config(sim, webhooks=WEBHOOKS)) as (base, _gw),
    ):
        reply = await watch(client, base, task, {"url": receiver.url, "events": ["state"]})
        assert reply.status_code == 201, reply.text
        await receiver.wait_for(accepted=3, timeout_s=20)
        # Registered after the end: the final event is delivered at once.
        reply = await watch(client, base, task, {"url": late.url, "events": ["terminal"]})
        assert reply.status_code == 201, reply.text
        await late.wait_for(accepted=1)
        await asyncio.sleep(0.4)
    ids = sorted(r.headers["webhook-id"] for r in receiver.snapshot())
    assert ids == [f"{task}:1", f"{task}:2", f"{task}:3"]
    states = {r.json["data"]["seq"]: r.json["data"]["state"] for r in receiver.accepted}
    assert states == {1: "queued", 2: "running", 3: "succeeded"}
    assert [r.headers["webhook-id"] for r in late.snapshot()] == [f"{task}:3"]
    assert_signed(receiver.snapshot() + late.snapshot())


async def test_restarting_the_gateway_between_failures_still_delivers_once(
    sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    doc = sim_config(
        sim,
        backend={"kind": "local", "path": str(tmp_path / "state.db")},
        webhooks={**WEBHOOKS, "retry_base_s": 1.0, "retry_max_s": 2.0},
    )
    task = await create_sim_task(client, sim, "videoproc", QUICK_SUCCESS)
    with Receiver(fail_first=3) as receiver:
        first = GatewayProcess(doc, tmp_path).start()
        try:
            reply = await watch(client, first.url, task, {"url": receiver.url})
            assert reply.status_code == 201, reply.text
            await receiver.wait_for(requests=1, timeout_s=20)
        finally:
            first.stop()  # SIGKILL, right after the first failure
        assert len(receiver.snapshot()) == 1

        second = GatewayProcess(doc, tmp_path).start()
        try:
            await receiver.wait_for(accepted=1, timeout_s=30)
            await asyncio.sleep(0.6)
        finally:
            second.stop()
        got = receiver.snapshot()
    assert [r.answered for r in got] == [500, 500, 500, 204]
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert got[0].headers["webhook-id"].startswith(f"{task}:")
    assert_signed(got)
    assert receiver.accepted[0].json["data"]["state"] == "succeeded"


@pytest.mark.parametrize(
    ("webhooks", "url", "status", "fragment"),
    [
        (WEBHOOKS, "http://hooks.example.com/in", 422, "not in webhooks.allowed_hosts"),
        (WEBHOOKS, "ftp://127.0.0.1/in", 422, "https:// or http://"),
        (WEBHOOKS, "http://user:pw@127.0.0.1/in", 422, "credentials"),
        # The safe default: no allow-list, but private addresses refused.
        ({"secret": SECRET}, "http://127.0.0.1:9/in", 422, "loopback address"),
        ({"secret": SECRET}, "http://[::1]:9/in", 422, "loopback address"),
        ({"secret": SECRET}, "http://169.254.169.254/latest", 422, "link-local address"),
        ({}, "http://127.0.0.1:9/in", 400, "webhooks are not enabled"),
    ],
)
async def test_urls_pollcast_will_not_call_are_refused_at_registration(
    sim: str,
    client: httpx.AsyncClient,
    webhooks: dict[str, Any],
    url: str,
    status: int,
    fragment: str,
) -> None:
    task = await create_sim_task(client, sim, "videoproc", QUICK_SUCCESS)
    with running_gateway(sim_config(sim, webhooks=webhooks)) as (base, _gw):
        reply = await watch(client, base, task, {"url": url})
        assert reply.status_code == status, reply.text
        problem = reply.json()
        assert fragment in problem["detail"]
        if status == 422:
            assert (problem["code"], problem["field"]) == ("invalid_webhook", "webhook.url")
        # Refused means not registered at all: nothing is being watched.
        delete = await client.delete(f"{base}/v1/tasks/{task.replace(':', '/', 1)}")
        assert delete.status_code == 404


async def test_a_webhook_without_events_is_a_bad_request(
    sim: str, client: httpx.AsyncClient
) -> None:
    with running_gateway(sim_config(sim, webhooks=WEBHOOKS)) as (base, _gw):
        reply = await watch(
            client, base, "videoproc:x1", {"url": "http://127.0.0.1/", "events": []}
        )
        assert reply.status_code == 400
        assert "events" in reply.text


async def test_on_the_redis_backend_the_outbox_lives_in_redis(
    sim: str,
    client: httpx.AsyncClient,
    redis_server: RedisServer,  # noqa: F811 (the fixture imported above)
) -> None:
    prefix = f"wh-it-{uuid.uuid4().hex[:8]}"
    backend = {"kind": "redis", "url": redis_server.url, "prefix": prefix}
    task = await create_sim_task(client, sim, "videoproc", QUICK_SUCCESS)
    with (
        Receiver(fail_first=1) as receiver,
        running_gateway(sim_config(sim, backend=backend, webhooks=WEBHOOKS)) as (base, gw),
    ):
        assert gw.webhooks is not None
        outbox = gw.webhooks.outbox
        assert isinstance(outbox, RedisOutbox)
        assert outbox.due_key == f"{prefix}:{{wh}}:due"
        reply = await watch(client, base, task, {"url": receiver.url})
        assert reply.status_code == 201, reply.text
        await receiver.wait_for(accepted=1, timeout_s=20)
        await asyncio.sleep(0.4)
    assert [r.answered for r in receiver.snapshot()] == [500, 204]
    assert_signed(receiver.snapshot())


def reference_verifier(secret: str) -> Callable[[dict[str, str], bytes], bool]:
    """A receiver's check with the Standard Webhooks reference library, not our code."""
    webhook = Webhook(secret)

    def verify(headers: dict[str, str], body: bytes) -> bool:
        try:
            webhook.verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    return verify


async def test_every_delivery_verifies_with_the_standard_webhooks_reference_library(
    sim: str, client: httpx.AsyncClient
) -> None:
    timeline = [
        {"at": 0, "state": "queued"},
        {"at": 0.3, "state": "running"},
        {"at": 0.6, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "ailab", timeline)
    other = await create_sim_task(client, sim, "ailab", timeline)
    with (
        Receiver(verify=reference_verifier(SECRET)) as receiver,
        Receiver(verify=reference_verifier(OTHER_SECRET)) as wrong_key,
        running_gateway(sim_config(sim, webhooks=WEBHOOKS)) as (base, _gw),
    ):
        reply = await watch(client, base, task, {"url": receiver.url, "events": ["state"]})
        assert reply.status_code == 201, reply.text
        reply = await watch(client, base, other, {"url": wrong_key.url})
        assert reply.status_code == 201, reply.text
        await until_terminal(receiver)
        await wrong_key.wait_for(requests=2, timeout_s=20)
    got = receiver.snapshot()
    assert {r.answered for r in got} == {204}
    # Every state the gateway saw (under load its first poll may come after
    # "queued"), each once, the last one terminal.
    seqs = sorted(r.json["data"]["seq"] for r in got)
    assert seqs == list(range(1, len(got) + 1)) and len(got) >= 2
    assert max(got, key=lambda r: r.json["data"]["seq"]).json["data"]["state"] == "succeeded"
    # The check can fail: a receiver holding another key refuses every attempt.
    assert {r.answered for r in wrong_key.snapshot()} == {401}


async def until_terminal(receiver: Receiver, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not any(r.json["data"]["terminal"] for r in receiver.accepted):
        assert asyncio.get_running_loop().time() < deadline, receiver.snapshot()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.4)  # a duplicate would show up by now
