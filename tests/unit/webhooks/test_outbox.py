"""The outbox contract: every store (SQLite in memory and on disk, Redis, a Redis
Cluster) passes this suite."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.core.model import State
from gateway.exceptions import BackendError
from gateway.webhooks.model import Delivery, WebhookTarget, deliveries_for
from gateway.webhooks.outbox import Outbox, SqliteOutbox
from gateway.webhooks.redis_outbox import RedisOutbox
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer
from tests.unit.webhooks.support import event

TARGET = WebhookTarget("https://hooks.example.com/in", ("state", "terminal"))
TASK = "ailab:7f3c"
NOW = 1_800_000_000.0

MakeOutbox = Callable[[], Awaitable[Outbox]]


def delivery(seq: int, task: str = TASK, due_at: float = NOW) -> Delivery:
    return Delivery(
        id=f"{task}:{seq}",
        task=task,
        seq=seq,
        url=TARGET.url,
        payload=f'{{"seq": {seq}}}',
        created_at=NOW,
        due_at=due_at,
    )


@pytest.fixture(params=["sqlite-memory", "sqlite-file", "redis", "redis-cluster"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_outbox(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[MakeOutbox]:
    """Opens outboxes on one shared store (two calls: two nodes, or a restart)."""
    opened: list[Outbox] = []
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    server: RedisServer | None = (
        request.getfixturevalue("redis_server") if store == "redis" else None
    )
    cluster: RedisCluster | None = (
        request.getfixturevalue("redis_cluster") if store == "redis-cluster" else None
    )

    async def make() -> Outbox:
        outbox: Outbox
        if store == "sqlite-memory":
            outbox = SqliteOutbox(":memory:", clock=lambda: NOW)
        elif store == "sqlite-file":
            outbox = SqliteOutbox(str(tmp_path / "state.db"), clock=lambda: NOW)
        elif cluster is not None:
            host, port = cluster.startup_nodes[0]
            client = aioredis.RedisCluster(host=host, port=port)
            outbox = RedisOutbox(cluster.url, prefix, client=client)
        else:
            assert server is not None
            outbox = RedisOutbox(server.url, prefix)
        await outbox.start()
        opened.append(outbox)
        return outbox

    yield make
    for outbox in opened:
        await outbox.close()


async def test_registrations_are_stored_and_replaced(make_outbox: MakeOutbox) -> None:
    outbox = await make_outbox()
    assert await outbox.registrations() == {}
    await outbox.register(TASK, TARGET, 3)
    await outbox.register("vp:1", WebhookTarget("https://b.example/x"), 0)
    found = await outbox.registrations([TASK, "nope:1"])
    assert list(found) == [TASK]
    assert (found[TASK].target, found[TASK].mark) == (TARGET, 3)
    assert set(await outbox.registrations()) == {TASK, "vp:1"}
    assert await outbox.registrations([]) == {}
    replacement = WebhookTarget("https://c.example/y", ("terminal",))
    await outbox.register(TASK, replacement, 5)
    again = (await outbox.registrations([TASK]))[TASK]
    assert (again.target, again.mark) == (replacement, 5)
    assert await outbox.unregister(TASK) is True
    assert await outbox.unregister(TASK) is False
    assert list(await outbox.registrations()) == ["vp:1"]


async def test_enqueue_stores_each_event_once_above_the_mark(make_outbox: MakeOutbox) -> None:
    outbox = await make_outbox()
    assert await outbox.enqueue(TASK, [delivery(1)], 1, done=False) == 0  # not registered
    await outbox.register(TASK, TARGET, 1)
    assert await outbox.enqueue(TASK, [delivery(1), delivery(2), delivery(3)], 3, done=False) == 2
    assert (await outbox.registrations([TASK]))[TASK].mark == 3
    # A replay (catch-up, a second node) changes nothing.
    assert await outbox.enqueue(TASK, [delivery(2), delivery(3)], 3, done=False) == 0
    # The mark moves even when no delivery is wanted (a progress event, say).
    assert await outbox.enqueue(TASK, [], 4, done=False) == 0
    assert (await outbox.registrations([TASK]))[TASK].mark == 4
    assert await outbox.enqueue(TASK, [delivery(4)], 4, done=False) == 0
    # The terminal event is queued and the registration ends with it.
    assert await outbox.enqueue(TASK, [delivery(5)], 5, done=True) == 1
    assert await outbox.registrations() == {}
    assert await outbox.pending() == 3


async def test_a_replaced_target_is_owed_an_event_the_old_one_still_holds(
    make_outbox: MakeOutbox,
) -> None:
    """A task's final event queued for its first target and, registered after the
    end, for a second: both are stored and sent, under the same ``webhook-id``."""
    outbox = await make_outbox()
    final = event(3, State.SUCCEEDED)
    first = WebhookTarget("https://a.example/in", ("state",))
    late = WebhookTarget("https://b.example/in", ("terminal",))
    await outbox.register(TASK, first, 2)
    assert await outbox.enqueue(TASK, deliveries_for(first, [final], now=NOW), 3, done=True) == 1
    await outbox.register(TASK, late, 2)  # the first delivery is still unsent
    assert await outbox.enqueue(TASK, deliveries_for(late, [final], now=NOW), 3, done=True) == 1
    assert await outbox.pending() == 2

    claimed = await outbox.claim(NOW, NOW + 30, 10, "node-a")
    assert sorted((d.id, d.url) for d in claimed) == [
        (f"{TASK}:3", first.url),
        (f"{TASK}:3", late.url),
    ]
    assert all([await outbox.retry(d, NOW + 1, "503") for d in claimed])
    again = await outbox.claim(NOW + 1, NOW + 31, 10, "node-a")
    assert sorted((d.url, d.attempts) for d in again) == [(first.url, 1), (late.url, 1)]
    assert all([await outbox.finish(d) for d in again])
    assert await outbox.pending() == 0


async def test_a_delivery_stored_without_a_key_is_still_sent_and_finished(
    make_outbox: MakeOutbox,
) -> None:
    """Deliveries queued by an earlier version are kept under their ``webhook-id``."""
    outbox = await make_outbox()
    await outbox.register(TASK, TARGET, 0)
    assert await outbox.enqueue(TASK, [delivery(1)], 1, done=False) == 1  # no key
    [claimed] = await outbox.claim(NOW, NOW + 30, 10, "node-a")
    assert (claimed.id, claimed.url) == (f"{TASK}:1", TARGET.url)
    assert await outbox.retry(claimed, NOW + 1, "503") is True
    [again] = await outbox.claim(NOW + 1, NOW + 31, 10, "node-a")
    assert (again.id, again.attempts) == (f"{TASK}:1", 1)
    assert await outbox.finish(again) is True
    assert await outbox.pending() == 0


async def test_a_claim_is_exclusive_until_finished_or_its_lease_runs_out(
    make_outbox: MakeOutbox,
) -> None:
    outbox = await make_outbox()
    await outbox.register(TASK, TARGET, 0)
    queued = [delivery(1), delivery(2), delivery(3, due_at=NOW + 60)]
    await outbox.enqueue(TASK, queued, 3, done=False)

    claimed = await outbox.claim(NOW, NOW + 30, 10, "node-a")
    assert [(d.seq, d.claim) for d in claimed] == [(1, "node-a"), (2, "node-a")]
    assert claimed[0].payload == '{"seq": 1}'
    assert await outbox.claim(NOW + 1, NOW + 31, 10, "node-b") == []  # held by node-a

    assert await outbox.finish(claimed[0]) is True
    assert await outbox.finish(claimed[0]) is False  # already gone

    # node-a goes quiet: after the lease the delivery is node-b's, and node-a's
    # late answer no longer counts.
    taken = await outbox.claim(NOW + 31, NOW + 61, 1, "node-b")
    assert [(d.seq, d.claim) for d in taken] == [(2, "node-b")]
    assert await outbox.retry(claimed[1], NOW + 40, "late") is False
    assert await outbox.finish(claimed[1]) is False
    assert await outbox.finish(taken[0]) is True
    assert await outbox.pending() == 1


async def test_retry_counts_the_attempt_and_sets_the_next_due_time(
    make_outbox: MakeOutbox,
) -> None:
    outbox = await make_outbox()
    await outbox.register(TASK, TARGET, 0)
    await outbox.enqueue(TASK, [delivery(1)], 1, done=False)
    [first] = await outbox.claim(NOW, NOW + 30, 5, "node-a")
    assert await outbox.retry(first, NOW + 10, "HTTP 500") is True
    assert await outbox.claim(NOW + 9, NOW + 39, 5, "node-a") == []
    [second] = await outbox.claim(NOW + 10, NOW + 40, 5, "node-a")
    assert (second.id, second.attempts, second.last_error) == (first.id, 1, "HTTP 500")
    assert second.created_at == NOW
    assert await outbox.pending() == 1


SHARED_STORES = ["sqlite-file", "redis"]  # one in-memory database has one connection


@pytest.mark.parametrize("store", SHARED_STORES)
async def test_two_nodes_claiming_at_once_never_share_a_delivery(make_outbox: MakeOutbox) -> None:
    a, b = await make_outbox(), await make_outbox()
    tasks = [f"vp:{n}" for n in range(40)]
    for task in tasks:
        await a.register(task, TARGET, 0)
        await a.enqueue(task, [delivery(1, task)], 1, done=False)

    async def drain(outbox: Outbox, token: str) -> list[str]:
        got: list[str] = []
        while batch := await outbox.claim(NOW, NOW + 60, 3, token):
            got += [d.id for d in batch]
            await asyncio.sleep(0)
        return got

    got_a, got_b = await asyncio.gather(drain(a, "node-a"), drain(b, "node-b"))
    assert sorted(got_a + got_b) == sorted(f"{t}:1" for t in tasks)
    assert not set(got_a) & set(got_b)


@pytest.mark.parametrize("store", SHARED_STORES)
async def test_registrations_and_deliveries_survive_a_restart(
    make_outbox: MakeOutbox, store: str
) -> None:
    first = await make_outbox()
    await first.register(TASK, TARGET, 0)
    await first.enqueue(TASK, [delivery(1), delivery(2)], 2, done=False)
    assert len(await first.claim(NOW, NOW + 30, 5, "old-run")) == 2  # then it dies
    await first.close()

    second = await make_outbox()
    assert (await second.registrations())[TASK].mark == 2
    assert await second.pending() == 2
    claimed = await second.claim(NOW, NOW + 30, 5, "new-run")
    if store.startswith("sqlite"):
        # A local state file has one owner: the previous run's claims are
        # released at start and the delivery goes out again at once.
        assert [d.seq for d in claimed] == [1, 2]
    else:
        # In a cluster another node may still hold it: it waits out its lease.
        assert claimed == []
        later = await second.claim(NOW + 31, NOW + 61, 5, "new-run")
        assert [d.seq for d in later] == [1, 2]


async def test_a_stale_claim_cannot_finish_or_retry_once_the_delivery_was_claimed_again(
    make_outbox: MakeOutbox,
) -> None:
    # Each claim has its own token. node-a's first claim lapses (the node was
    # paused past its lease), node-b fails an attempt and releases it, node-a
    # claims it again: the first claim's late answer still counts for nothing.
    outbox = await make_outbox()
    await outbox.register(TASK, TARGET, 0)
    await outbox.enqueue(TASK, [delivery(1)], 1, done=False)
    [stale] = await outbox.claim(NOW, NOW + 30, 5, "node-a.1")
    [b] = await outbox.claim(NOW + 31, NOW + 61, 5, "node-b.1")
    assert await outbox.retry(b, NOW + 40, "HTTP 503") is True
    [fresh] = await outbox.claim(NOW + 40, NOW + 70, 5, "node-a.2")
    assert fresh.attempts == 1
    assert await outbox.retry(stale, NOW + 45, "late") is False
    assert await outbox.finish(stale) is False
    # The refused calls changed nothing: the current claim still holds.
    assert await outbox.claim(NOW + 50, NOW + 80, 5, "node-c.1") == []
    assert await outbox.finish(fresh) is True
    assert await outbox.pending() == 0


async def test_an_unclaimed_delivery_cannot_be_finished(make_outbox: MakeOutbox) -> None:
    outbox = await make_outbox()
    await outbox.register(TASK, TARGET, 0)
    await outbox.enqueue(TASK, [delivery(1)], 1, done=False)
    assert await outbox.finish(delivery(1)) is False  # claim None
    assert await outbox.retry(delivery(1), NOW + 5, "x") is False
    assert await outbox.pending() == 1


async def test_sqlite_errors_are_backend_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    outbox = SqliteOutbox(path, clock=lambda: NOW, busy_timeout_ms=50)
    await outbox.start()
    try:
        await outbox.register(TASK, TARGET, 0)
        await outbox.enqueue(TASK, [delivery(1), delivery(2)], 2, done=False)
        [held, _] = await outbox.claim(NOW, NOW + 30, 5, "node-a.1")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # a backup, another process: the file is locked
        writes: list[Callable[[], Awaitable[object]]] = [
            lambda: outbox.claim(NOW, NOW + 30, 5, "node-a.2"),
            lambda: outbox.finish(held),
            lambda: outbox.retry(held, NOW + 5, "x"),
            lambda: outbox.enqueue(TASK, [delivery(3)], 3, done=False),
            lambda: outbox.register("vp:2", TARGET, 0),
            lambda: outbox.unregister(TASK),
        ]
        for write in writes:
            with pytest.raises(BackendError, match="database is locked"):
                await write()
        other.execute("ROLLBACK")
        assert await outbox.finish(held) is True  # nothing was half-done
        other.execute("DROP TABLE webhook_deliveries")
        other.execute("DROP TABLE webhook_targets")
        other.close()
        for read in (outbox.pending, outbox.registrations):
            with pytest.raises(BackendError, match="no such table"):
                await read()
        with pytest.raises(BackendError, match="no such table"):
            await outbox.registrations([TASK])
    finally:
        await outbox.close()
    with pytest.raises(BackendError, match="not started"):
        await outbox.pending()


async def test_redis_errors_are_backend_errors(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", persist=False) as server:
        outbox = RedisOutbox(server.url, "t-down")
        await outbox.start()
        await outbox.register(TASK, TARGET, 0)
        await outbox.enqueue(TASK, [delivery(1)], 1, done=False)
        [held] = await outbox.claim(NOW, NOW + 30, 5, "node-a.1")
        server.kill()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: outbox.claim(NOW, NOW + 30, 5, "node-a.2"),
            lambda: outbox.finish(held),
            lambda: outbox.retry(held, NOW + 5, "x"),
            lambda: outbox.enqueue(TASK, [delivery(2)], 2, done=False),
            lambda: outbox.register("vp:2", TARGET, 0),
            lambda: outbox.unregister(TASK),
            outbox.pending,
            outbox.registrations,
            lambda: outbox.registrations([TASK]),
        ]
        try:
            for call in calls:
                with pytest.raises(BackendError):
                    await call()
        finally:
            await outbox.close()
    with pytest.raises(BackendError, match="cannot reach Redis"):
        await RedisOutbox(server.url, "t-down").start()


async def test_delivery_ids_change_with_the_store_epoch(redis_server: RedisServer) -> None:
    """A store that lost its contents restarts seqs: the ids must not repeat."""
    import msgspec

    from gateway.core import tracker
    from gateway.core.model import EventKind
    from gateway.webhooks.model import deliveries_for

    prefix = f"t-{uuid.uuid4().hex[:8]}"
    outbox = RedisOutbox(redis_server.url, prefix)
    await outbox.start()
    try:
        assert await outbox.epoch() == ""  # no hub named this store yet
        await outbox.redis.set(f"{prefix}:incarnation", "aaa")
        event = msgspec.structs.replace(
            tracker.initial_snapshot(TASK, NOW), seq=1, event=EventKind.STATE
        )
        before = deliveries_for(TARGET, [event], now=NOW, epoch=await outbox.epoch())
        await outbox.redis.set(f"{prefix}:incarnation", "bbb")  # flushed and named again
        after = deliveries_for(TARGET, [event], now=NOW, epoch=await outbox.epoch())
    finally:
        await outbox.close()
    assert before[0].id == f"{TASK}:1:aaa"
    assert after[0].id == f"{TASK}:1:bbb"
