"""The delivery loop against a real receiver over real HTTP: signing, retries, refusals."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from aiohttp.connector import AddrInfoType

from gateway.webhooks.dispatcher import Dispatcher
from gateway.webhooks.model import Delivery, WebhookTarget
from gateway.webhooks.outbox import Outbox, SqliteOutbox
from gateway.webhooks.redis_outbox import RedisOutbox
from gateway.webhooks.retry import RetrySchedule
from gateway.webhooks.sender import AiohttpWebhookSender, WebhookSender
from gateway.webhooks.signing import decode_secret
from gateway.webhooks.targets import Resolver, UrlPolicy, system_resolver
from tests.integration.webhook_receiver import Received, Receiver, standard_signature
from tests.redis_server import RedisServer

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMmJ5dGVz"
KEY = decode_secret(SECRET)
LOCAL = UrlPolicy(allow_private=True)  # the receivers listen on 127.0.0.1


def delivery(url: str, seq: int = 1, task: str = "vp:t1") -> Delivery:
    now = time.time()
    return Delivery(
        id=f"{task}:{seq}",
        task=task,
        seq=seq,
        url=url,
        payload=f'{{"type":"task.state","data":{{"seq":{seq}}}}}',
        created_at=now,
        due_at=now,
    )


async def queue(outbox: Outbox, deliveries: Sequence[Delivery]) -> None:
    for d in deliveries:
        await outbox.register(d.task, WebhookTarget(d.url), d.seq - 1)
        assert await outbox.enqueue(d.task, [d], d.seq, done=True) == 1


@contextlib.asynccontextmanager
async def running(
    outbox: Outbox,
    *,
    policy: UrlPolicy = LOCAL,
    resolver: Resolver = system_resolver,
    timeout_s: float = 2.0,
    max_age_s: float = 30.0,
    concurrency: int = 4,
    sender: WebhookSender | None = None,
) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(
        outbox,
        key=KEY,
        policy=policy,
        schedule=RetrySchedule(base_s=0.1, max_s=0.4, max_age_s=max_age_s),
        timeout_s=timeout_s,
        poll_s=0.05,
        concurrency=concurrency,
        sender=sender,
        resolver=resolver,
        rng=random.Random(3),
    )
    runner = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await dispatcher.close()


@pytest.fixture
async def outbox() -> AsyncIterator[Outbox]:
    store = SqliteOutbox(":memory:")
    await store.start()
    yield store
    await store.close()


async def settle(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def assert_signed(received: Sequence[Received]) -> None:
    for request in received:
        headers = request.headers
        assert headers["webhook-signature"] == standard_signature(KEY, headers, request.body)
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60


async def test_a_delivery_is_posted_signed_once(outbox: Outbox) -> None:
    with Receiver() as receiver:
        sent = delivery(receiver.url)
        await queue(outbox, [sent])
        async with running(outbox) as dispatcher:
            await receiver.wait_for(accepted=1)
            await settle(lambda: dispatcher.delivered == 1)
        [got] = receiver.snapshot()
    assert got.path == "/hooks/pollcast"
    assert got.body == sent.payload.encode()
    assert got.headers["webhook-id"] == "vp:t1:1"
    assert got.headers["content-type"] == "application/json"
    assert_signed([got])
    assert await outbox.pending() == 0


async def test_failures_are_retried_until_one_is_accepted(outbox: Outbox) -> None:
    with Receiver(fail_first=3) as receiver:
        await queue(outbox, [delivery(receiver.url)])
        async with running(outbox):
            await receiver.wait_for(accepted=1)
            await asyncio.sleep(0.3)  # nothing more comes
        got = receiver.snapshot()
    assert [r.answered for r in got] == [500, 500, 500, 204]
    assert {r.headers["webhook-id"] for r in got} == {"vp:t1:1"}
    assert_signed(got)
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert all(gap >= 0.04 for gap in gaps), gaps  # backed off, not hammered
    assert await outbox.pending() == 0


async def test_redirects_are_never_followed(outbox: Outbox) -> None:
    with Receiver() as elsewhere, Receiver(fail_first=2, redirect_to=elsewhere.url) as receiver:
        await queue(outbox, [delivery(receiver.url)])
        async with running(outbox):
            await receiver.wait_for(accepted=1)
        assert [r.answered for r in receiver.snapshot()] == [307, 307, 204]
        assert elsewhere.snapshot() == []


async def test_a_receiver_too_slow_to_answer_is_tried_again(outbox: Outbox) -> None:
    with Receiver(fail_first=1, stall_s=1.0) as receiver:
        await queue(outbox, [delivery(receiver.url)])
        async with running(outbox, timeout_s=0.3):
            await receiver.wait_for(accepted=1)
        assert len(receiver.accepted) == 1


async def test_a_delivery_is_abandoned_after_max_age_with_a_log_line(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pollcast.webhooks")
    with Receiver(fail_first=10_000, fail_status=503) as receiver:
        await queue(outbox, [delivery(receiver.url)])
        async with running(outbox, max_age_s=0.5) as dispatcher:
            await settle(lambda: dispatcher.abandoned == 1)
        attempts = len(receiver.snapshot())
    assert attempts >= 2
    assert await outbox.pending() == 0
    [line] = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert f"vp:t1:1 to http://127.0.0.1:{receiver.port} abandoned after {attempts}" in line
    assert "HTTP 503" in line
    assert "/hooks/pollcast" not in line  # the path may carry the receiver's token


async def test_the_request_goes_to_the_checked_address_under_the_hosts_name(
    outbox: Outbox,
) -> None:
    async def hooks_is_loopback(host: str, port: int) -> list[str]:
        assert host == "hooks.example"
        return ["127.0.0.1"]

    policy = UrlPolicy(allowed_hosts=("hooks.example",), allow_private=True)
    with Receiver() as receiver:
        url = f"http://hooks.example:{receiver.port}/in"
        await queue(outbox, [delivery(url)])
        async with running(outbox, policy=policy, resolver=hooks_is_loopback):
            await receiver.wait_for(accepted=1)
        [got] = receiver.snapshot()
    assert got.headers["host"] == f"hooks.example:{receiver.port}"
    assert got.path == "/in"


async def test_a_host_rebound_to_a_private_address_is_never_called(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # Public when registered, loopback when the delivery is due: DNS rebinding.
    async def rebinding(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with Receiver() as receiver:
        await queue(outbox, [delivery(f"http://rebind.example:{receiver.port}/in")])
        async with running(outbox, policy=UrlPolicy(), resolver=rebinding) as dispatcher:
            await settle(lambda: dispatcher.abandoned == 1)
        assert receiver.snapshot() == []
    assert await outbox.pending() == 0
    assert any("127.0.0.1, a loopback address" in r.getMessage() for r in caplog.records)


async def test_an_unresolvable_host_is_retried_not_abandoned(outbox: Outbox) -> None:
    answers = iter([OSError("temporary failure"), ["127.0.0.1"]])

    async def flaky(host: str, port: int) -> list[str]:
        answer = next(answers)
        if isinstance(answer, OSError):
            raise answer
        return answer

    with Receiver() as receiver:
        await queue(outbox, [delivery(f"http://flaky.example:{receiver.port}/in")])
        async with running(outbox, resolver=flaky) as dispatcher:
            await receiver.wait_for(accepted=1)
        assert dispatcher.abandoned == 0


async def test_two_nodes_on_one_redis_outbox_deliver_each_event_once(
    redis_server: RedisServer,
) -> None:
    prefix = f"wh-{uuid.uuid4().hex[:8]}"
    nodes = [RedisOutbox(redis_server.url, prefix), RedisOutbox(redis_server.url, prefix)]
    for node in nodes:
        await node.start()
    try:
        with Receiver() as receiver:
            await queue(nodes[0], [delivery(receiver.url, 1, f"vp:t{n}") for n in range(24)])
            async with running(nodes[0]) as a, running(nodes[1]) as b:
                await receiver.wait_for(accepted=24)
                await asyncio.sleep(0.3)  # time for a duplicate to show up, if any
            ids = [r.headers["webhook-id"] for r in receiver.snapshot()]
        assert sorted(ids) == sorted(f"vp:t{n}:1" for n in range(24))
        assert a.delivered + b.delivered == 24
        assert await nodes[1].pending() == 0
    finally:
        for node in nodes:
            await node.close()


async def test_a_cancel_that_races_a_wake_up_still_stops_the_loop(outbox: Outbox) -> None:
    # The wake-up completes the loop's wait in the same loop turn as the cancel
    # arrives: the loop must still end (Python 3.11's wait_for swallowed it).
    async with running(outbox) as dispatcher:
        for _ in range(20):
            runner = asyncio.create_task(dispatcher.run())
            await asyncio.sleep(0.01)
            dispatcher.wake()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            runner.cancel()
            done, _pending = await asyncio.wait({runner}, timeout=2.0)
            assert done == {runner}, "run() ignored its cancellation"
            assert runner.cancelled()


def answers(*batches: list[str]) -> tuple[Resolver, list[str]]:
    """A resolver giving each call the next answer (the last one repeats), and its call log."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return batches[min(len(calls), len(batches)) - 1]

    return resolve, calls


async def test_a_rebinding_host_is_never_connected_at_its_private_address(
    outbox: Outbox,
) -> None:
    # The first answer is public and passes the check; every later one is the
    # receiver's loopback address. The sender must connect only to what was
    # checked: it never asks DNS (or the hook) a second time itself.
    connects: list[tuple[str, int]] = []

    def recording(addr_info: AddrInfoType) -> socket.socket:
        connects.append(addr_info[4][:2])
        if addr_info[4][0] != "127.0.0.1":  # keep the test off the internet
            raise OSError("test: no route")
        return socket.socket(addr_info[0], addr_info[1], addr_info[2])

    resolver, calls = answers(["93.184.216.34"], ["127.0.0.1"])
    sender = AiohttpWebhookSender(timeout_s=1.0, socket_factory=recording)
    with Receiver() as receiver:
        await queue(outbox, [delivery(f"http://rebind.example:{receiver.port}/in")])
        async with running(
            outbox, policy=UrlPolicy(), resolver=resolver, sender=sender
        ) as dispatcher:
            await settle(lambda: dispatcher.abandoned == 1)
        assert receiver.snapshot() == []
    assert connects == [("93.184.216.34", receiver.port)]
    assert calls == ["rebind.example", "rebind.example"]  # once per attempt, by the check


def receivers_on_one_port() -> tuple[Receiver, Receiver]:
    """Receivers on 127.0.0.1 and 127.0.0.2 with the same free port."""
    for _ in range(50):
        first = Receiver()
        try:
            return first, Receiver(host="127.0.0.2", port=first.port)
        except OSError:  # that port is taken on 127.0.0.2: try another
            first.server.server_close()
    raise AssertionError("no port free on both addresses")


async def test_each_attempt_connects_to_the_address_checked_for_it(outbox: Outbox) -> None:
    # Two deliveries to one host, whose answer changes between them. A kept
    # connection (aiohttp pools by host and port) would carry the second to
    # the first address; both receivers share the port, so only the address differs.
    first, second = receivers_on_one_port()
    with first, second:
        resolver, calls = answers(["127.0.0.1"], ["127.0.0.2"])
        url = f"http://hooks.example:{first.port}/in"
        await queue(outbox, [delivery(url, 1), delivery(url, 2)])
        async with running(outbox, resolver=resolver, concurrency=1) as dispatcher:
            await settle(lambda: dispatcher.delivered == 2)
        assert [r.headers["webhook-id"] for r in first.snapshot()] == ["vp:t1:1"]
        assert [r.headers["webhook-id"] for r in second.snapshot()] == ["vp:t1:2"]
    assert calls == ["hooks.example", "hooks.example"]


async def test_a_reply_dripped_past_the_timeout_is_a_failed_attempt(outbox: Outbox) -> None:
    # Every byte of the reply comes well within the timeout of the one
    # before; the whole reply does not. One deadline covers the attempt.
    attempts: list[float] = []

    async def dripping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        attempts.append(time.monotonic())
        reply = b"HTTP/1.1 204 No Content\r\nX-Slow: " + b"s" * 30 + b"\r\n\r\n"
        pause = 0.05 if len(attempts) == 1 else 0.0
        with contextlib.suppress(ConnectionError):
            for i in range(len(reply)):
                writer.write(reply[i : i + 1])
                await writer.drain()
                await asyncio.sleep(pause)
        writer.close()

    server = await asyncio.start_server(dripping, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await queue(outbox, [delivery(f"http://127.0.0.1:{port}/in")])
        async with running(outbox, timeout_s=0.5) as dispatcher:
            await settle(lambda: dispatcher.delivered == 1)
    finally:
        server.close()
    assert len(attempts) == 2  # the first (3.5 s of drip) failed, the second went through
    assert attempts[1] - attempts[0] < 1.5  # it was cut at 0.5 s, not read to its end


async def pending_is(outbox: Outbox, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := await outbox.pending()) != count:
        assert time.monotonic() < deadline, f"{left} deliveries still pending"
        await asyncio.sleep(0.02)


async def test_a_locked_state_file_delays_deliveries_but_loses_and_repeats_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process (a backup, sqlite3 on the command line) holds the state
    # file's write lock: first before the loop starts, then while six
    # attempts are in flight, so that recording their success fails.
    caplog.set_level(logging.INFO, logger="pollcast.webhooks")
    path = str(tmp_path / "state.db")
    outbox = SqliteOutbox(path, busy_timeout_ms=20)
    await outbox.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        with Receiver(answer_after_s=0.3) as receiver:
            await queue(outbox, [delivery(receiver.url, 1, f"vp:t{n}") for n in range(6)])
            other.execute("BEGIN EXCLUSIVE")
            async with running(outbox, concurrency=8) as dispatcher:
                await settle(lambda: dispatcher.store_failures >= 3)
                assert receiver.snapshot() == []
                other.execute("COMMIT")
                await receiver.wait_for(requests=6)
                other.execute("BEGIN EXCLUSIVE")
                await receiver.wait_for(accepted=6)
                await asyncio.sleep(0.5)
                assert await outbox.pending() == 6  # delivered, not recorded yet
                other.execute("COMMIT")
                await pending_is(outbox, 0, timeout_s=5.0)
                await asyncio.sleep(0.3)  # a repeat would show up by now
            ids = sorted(r.headers["webhook-id"] for r in receiver.snapshot())
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        await outbox.close()
    assert ids == sorted(f"vp:t{n}:1" for n in range(6))
    messages = [r.getMessage() for r in caplog.records]
    streaks = [m for m in messages if "cannot read the webhook outbox" in m]
    assert 1 <= len(streaks) <= 2, streaks  # once per streak, not once per try
    assert dispatcher.store_failures > len(streaks)
    assert all("database is locked" in m for m in streaks)
    assert len([m for m in messages if "could not mark done" in m]) == 6
