"""The hub contract: every backend passes this same suite.

A backend joins by adding a factory to ``BACKENDS`` (and, if it keeps state
across restarts, to ``DURABLE``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
import redis

from gateway.core.model import ErrorInfo, Event, EventKind, Result, State
from gateway.core.sse import Encoded
from gateway.core.tracker import notice
from gateway.exceptions import SeqConflict
from gateway.hub.base import HistoryPage, Hub, Watch
from gateway.hub.local import LocalHub
from gateway.hub.queue import SubscriberQueue
from gateway.hub.redis import INCARNATION_CHECK_S, RedisHub, connect
from gateway.poller.redis_schedule import RedisSchedule
from gateway.poller.schedule import Entry
from tests.redis_cluster import RedisCluster, redis_cluster  # noqa: F401 (a fixture)
from tests.redis_server import RedisServer, process_redis_server

HubFactory = Callable[[Path, int], Awaitable[Hub]]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def _local_memory(tmp: Path, history: int, clock: Clock) -> Hub:
    return LocalHub(":memory:", history_limit=history, clock=clock)


async def _local_file(tmp: Path, history: int, clock: Clock) -> Hub:
    return LocalHub(str(tmp / "state.db"), history_limit=history, clock=clock)


_server: list[RedisServer] = []
_RUN = f"contract-{uuid.uuid4().hex[:8]}"


async def _redis(tmp: Path, history: int, clock: Clock) -> Hub:
    """A RedisHub on this module's own redis-server, under a prefix per test."""
    if not _server:
        _server.append(process_redis_server())
    prefix = f"{_RUN}:{tmp.name}"  # the same for both halves of a restart test
    return RedisHub(connect(_server[0].url), prefix=prefix, history_limit=history)


_cluster: list[RedisCluster] = []  # the session's Redis Cluster, once a test asked for it


async def _redis_cluster(tmp: Path, history: int, clock: Clock) -> Hub:
    """A RedisHub on the session's 3-master Redis Cluster, under a prefix per test."""
    prefix = f"{_RUN}:{tmp.name}"
    return RedisHub(connect(_cluster[0].url), prefix=prefix, history_limit=history)


BACKENDS = {
    "local-memory": _local_memory,
    "local-file": _local_file,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
}
DURABLE = {"local-file": _local_file, "redis": _redis, "redis-cluster": _redis_cluster}
REDIS = ["redis", "redis-cluster"]


@pytest.fixture(autouse=True)
def _cluster_when_asked(request: pytest.FixtureRequest) -> None:
    """Start the session's Redis Cluster for the tests that run on it, and only then."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "redis-cluster" in callspec.params.values():
        cluster = request.getfixturevalue("redis_cluster")
        _cluster[:] = [cluster]


def ev(task: str, seq: int, state: State = State.RUNNING, progress: int | None = None) -> Event:
    return Event(
        event=EventKind.STATE if progress is None else EventKind.PROGRESS,
        task=task,
        seq=seq,
        state=state,
        terminal=state.terminal,
        progress=progress,
        position=None,
        message=None,
        result=Result(urls=("https://x/1.png",)) if state is State.SUCCEEDED else None,
        error=ErrorInfo("e", "boom") if state is State.FAILED else None,
        upstream={"status": seq},
        updated_at="2026-11-21T10:00:00.000Z",
        observed_at="2026-11-21T10:00:00.000Z",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=sorted(BACKENDS))
async def make_hub(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[Callable[[int], Awaitable[Hub]]]:
    factory = BACKENDS[request.param]
    hubs: list[Hub] = []

    async def make(history: int = 256) -> Hub:
        hub = await factory(tmp_path, history, clock)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close()


@pytest.fixture
async def hub(make_hub: Callable[[int], Awaitable[Hub]]) -> Hub:
    return await make_hub(256)


async def test_unknown_task_has_no_snapshot_and_empty_history(hub: Hub) -> None:
    assert await hub.snapshot("ailab:nope") is None
    assert await hub.history("ailab:nope", 0) == []
    assert await hub.ready()


async def test_commit_stores_snapshot_and_history_in_order(hub: Hub) -> None:
    await hub.commit([ev("ailab:a", 1), ev("ailab:a", 2, progress=5)], terminal_ttl_s=60)
    await hub.commit([ev("ailab:a", 3, progress=9)], terminal_ttl_s=60)
    snap = await hub.snapshot("ailab:a")
    assert snap is not None and snap.seq == 3 and snap.progress == 9
    missed = await hub.history("ailab:a", 1)
    assert missed is not None
    assert [e.event.seq for e in missed] == [2, 3]
    assert await hub.history("ailab:a", 3) == []


async def test_commit_rejects_a_seq_that_does_not_follow(hub: Hub) -> None:
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    with pytest.raises(SeqConflict):
        await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    with pytest.raises(SeqConflict):
        await hub.commit([ev("ailab:a", 3)], terminal_ttl_s=60)
    snap = await hub.snapshot("ailab:a")
    assert snap is not None and snap.seq == 1


async def test_fan_out_reaches_attached_queues_only(hub: Hub) -> None:
    q1, q2, other = SubscriberQueue(), SubscriberQueue(), SubscriberQueue()
    hub.attach(q1, ["ailab:a"])
    await hub.attached(["ailab:a"])
    hub.attach(q2, ["ailab:a"])
    await hub.attached(["ailab:a"])
    hub.attach(other, ["ailab:b"])
    await hub.attached(["ailab:b"])
    assert hub.subscriber_count("ailab:a") == 2
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    got1 = await q1.get_batch(max_wait_s=2)
    got2 = await q2.get_batch(max_wait_s=2)
    assert [e.event.seq for e in got1] == [1]
    assert got1[0].json == got2[0].json
    assert len(other) == 0
    hub.detach(q2, ["ailab:a"])
    assert hub.subscriber_count("ailab:a") == 1
    await hub.commit([ev("ailab:a", 2)], terminal_ttl_s=60)
    assert [e.event.seq for e in await q1.get_batch(max_wait_s=2)] == [2]
    assert len(q2) == 0


async def test_fan_out_shares_one_encoding(hub: Hub) -> None:
    queues = [SubscriberQueue() for _ in range(5)]
    for q in queues:
        hub.attach(q, ["ailab:a"])
        await hub.attached(["ailab:a"])
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    items = [(await q.get_batch(max_wait_s=2))[0] for q in queues]
    assert all(isinstance(i, Encoded) for i in items)
    assert len({i.json for i in items}) == 1


async def test_notices_fan_out_but_are_not_stored(hub: Hub, clock: Clock) -> None:
    seen = SubscriberQueue()
    hub.attach(seen, ["ailab:a"])
    await hub.attached(["ailab:a"])
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    # Fanned out (Redis: through pub/sub, later) before q attaches: q gets only the notice.
    assert [e.event.seq for e in await seen.get_batch(max_wait_s=2)] == [1]
    q = SubscriberQueue()
    hub.attach(q, ["ailab:a"])
    await hub.attached(["ailab:a"])
    current = await hub.snapshot("ailab:a")
    n = notice(current, task="ailab:a", code="upstream_server", message="500", now=clock())
    await hub.announce(n)
    got = await q.get_batch(max_wait_s=2)
    assert got[0].event.event is EventKind.NOTICE and got[0].event.code == "upstream_server"
    stored = await hub.history("ailab:a", 0)
    assert stored is not None
    assert [(e.event.seq, e.event.event) for e in stored] == [(1, EventKind.STATE)]
    snap = await hub.snapshot("ailab:a")
    assert snap is not None and snap.event is EventKind.STATE
    with pytest.raises(ValueError):
        await hub.announce(ev("ailab:a", 2))


async def test_history_reports_a_gap_once_trimmed(
    make_hub: Callable[[int], Awaitable[Hub]],
) -> None:
    hub = await make_hub(3)
    for seq in range(1, 7):
        await hub.commit([ev("ailab:a", seq, progress=seq)], terminal_ttl_s=60)
    assert await hub.history("ailab:a", 1) is None  # 2 was trimmed
    kept = await hub.history("ailab:a", 3)
    assert kept is not None and [e.event.seq for e in kept] == [4, 5, 6]


async def test_terminal_tasks_are_forgotten_after_their_ttl(hub: Hub, clock: Clock) -> None:
    await hub.commit([ev("ailab:a", 1), ev("ailab:a", 2, State.SUCCEEDED)], terminal_ttl_s=1)
    await hub.commit([ev("ailab:b", 1)], terminal_ttl_s=1)
    await hub.purge(clock.now)
    assert await hub.snapshot("ailab:a") is not None
    # Local stores purge by the injected clock; Redis expires keys in real time.
    clock.now += 2
    await hub.purge(clock.now)
    await asyncio.sleep(1.1)
    assert await hub.snapshot("ailab:a") is None
    assert await hub.history("ailab:a", 0) == []
    assert await hub.snapshot("ailab:b") is not None


async def test_watches_round_trip(hub: Hub) -> None:
    await hub.put_watch(Watch(task="ailab:a", created_at=1.0, deadline_at=100.0))
    await hub.put_watch(Watch(task="aholo:b", created_at=2.0))
    await hub.put_watch(Watch(task="ailab:a", created_at=1.0, deadline_at=200.0))
    watches = sorted(await hub.watches(), key=lambda w: w.task)
    assert [(w.task, w.deadline_at) for w in watches] == [("aholo:b", None), ("ailab:a", 200.0)]
    assert await hub.drop_watch("ailab:a") is True
    assert await hub.drop_watch("ailab:a") is False
    assert [w.task for w in await hub.watches()] == ["aholo:b"]


@pytest.mark.parametrize("backend", sorted(DURABLE))
async def test_state_survives_a_restart(backend: str, tmp_path: Path, clock: Clock) -> None:
    factory = DURABLE[backend]
    first = await factory(tmp_path, 256, clock)
    await first.start()
    await first.commit([ev("ailab:a", 1), ev("ailab:a", 2, progress=50)], terminal_ttl_s=60)
    await first.put_watch(Watch(task="ailab:a", created_at=1.0, deadline_at=9.0))
    await first.close()

    second = await factory(tmp_path, 256, clock)
    await second.start()
    try:
        snap = await second.snapshot("ailab:a")
        assert snap is not None and (snap.seq, snap.progress) == (2, 50)
        missed = await second.history("ailab:a", 0)
        assert missed is not None and [e.event.seq for e in missed] == [1, 2]
        assert [w.task for w in await second.watches()] == ["ailab:a"]
        with pytest.raises(SeqConflict):
            await second.commit([ev("ailab:a", 2)], terminal_ttl_s=60)
        await second.commit([ev("ailab:a", 3, State.SUCCEEDED)], terminal_ttl_s=60)
    finally:
        await second.close()


async def _finished_then_restarted(
    factory: Callable[[Path, int, Clock], Awaitable[Hub]],
    tmp_path: Path,
    clock: Clock,
    history: int = 256,
) -> Hub:
    """A hub whose ``ailab:done`` ran seq 1..6 to success, closed and started again."""
    first = await factory(tmp_path, history, clock)
    await first.start()
    for seq in range(1, 6):
        await first.commit([ev("ailab:done", seq, progress=seq * 10)], terminal_ttl_s=60)
    await first.commit([ev("ailab:done", 6, State.SUCCEEDED)], terminal_ttl_s=60)
    await first.close()
    second = await factory(tmp_path, history, clock)
    await second.start()
    return second


@pytest.mark.parametrize("backend", sorted(DURABLE))
async def test_a_finished_tasks_history_survives_a_restart(
    backend: str, tmp_path: Path, clock: Clock
) -> None:
    hub = await _finished_then_restarted(DURABLE[backend], tmp_path, clock)
    try:
        snap = await hub.snapshot("ailab:done")
        assert snap is not None and snap.terminal and snap.seq == 6
        missed = await hub.history("ailab:done", 2)
        assert missed is not None
        assert [e.event.seq for e in missed] == [3, 4, 5, 6]
        assert [e.event.progress for e in missed[:3]] == [30, 40, 50]
        assert missed[-1].event.state is State.SUCCEEDED
        everything = await hub.history("ailab:done", 0)
        assert everything is not None and [e.event.seq for e in everything] == [1, 2, 3, 4, 5, 6]
    finally:
        await hub.close()


@pytest.mark.parametrize("backend", sorted(DURABLE))
async def test_resume_at_the_terminal_seq_after_a_restart_has_nothing_to_send(
    backend: str, tmp_path: Path, clock: Clock
) -> None:
    hub = await _finished_then_restarted(DURABLE[backend], tmp_path, clock)
    try:
        assert await hub.history("ailab:done", 6) == []
        snap = await hub.snapshot("ailab:done")
        assert snap is not None and snap.terminal and snap.seq == 6
        with pytest.raises(SeqConflict):
            await hub.commit([ev("ailab:done", 6)], terminal_ttl_s=60)
    finally:
        await hub.close()


@pytest.mark.parametrize("backend", sorted(DURABLE))
async def test_a_trimmed_finished_history_reports_its_gap_after_a_restart(
    backend: str, tmp_path: Path, clock: Clock
) -> None:
    hub = await _finished_then_restarted(DURABLE[backend], tmp_path, clock, history=3)
    try:
        assert await hub.history("ailab:done", 1) is None
        kept = await hub.history("ailab:done", 3)
        assert kept is not None and [e.event.seq for e in kept] == [4, 5, 6]
    finally:
        await hub.close()


async def test_a_purged_tasks_history_is_gone(hub: Hub, clock: Clock) -> None:
    await hub.commit([ev("ailab:a", 1), ev("ailab:a", 2, State.FAILED)], terminal_ttl_s=1)
    assert await hub.history("ailab:a", 0) is not None
    clock.now += 2
    await hub.purge(clock.now)
    await asyncio.sleep(1.1)  # Redis expires keys in real time
    assert await hub.snapshot("ailab:a") is None
    assert await hub.history("ailab:a", 0) == []
    assert await hub.history("ailab:a", 1) == []
    # The id is free again: its first event is seq 1.
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    again = await hub.history("ailab:a", 0)
    assert again is not None and [e.event.seq for e in again] == [1]


@pytest.mark.parametrize("backend", sorted(DURABLE))
async def test_a_purged_task_stays_gone_after_a_restart(
    backend: str, tmp_path: Path, clock: Clock
) -> None:
    factory = DURABLE[backend]
    first = await factory(tmp_path, 256, clock)
    await first.start()
    await first.commit([ev("ailab:a", 1, State.SUCCEEDED)], terminal_ttl_s=1)
    await first.commit([ev("ailab:b", 1, State.SUCCEEDED)], terminal_ttl_s=3600)
    clock.now += 2
    await first.purge(clock.now)
    await asyncio.sleep(1.1)
    await first.close()
    second = await factory(tmp_path, 256, clock)
    await second.start()
    try:
        assert await second.snapshot("ailab:a") is None
        assert await second.history("ailab:a", 0) == []
        kept = await second.history("ailab:b", 0)
        assert kept is not None and [e.event.seq for e in kept] == [1]
    finally:
        await second.close()


# -- Redis only: fencing and epochs ------------------------------------------------


async def _collect(q: SubscriberQueue, n: int, within_s: float = 5.0) -> list[Encoded]:
    """The next ``n`` items of ``q``; fails if they do not all come within ``within_s``."""
    got: list[Encoded] = []
    async with asyncio.timeout(within_s):
        while len(got) < n:
            got += await q.get_batch(max_wait_s=within_s)
    return got


async def _redis_pair(tmp: Path, kind: str) -> tuple[RedisHub, redis.Redis | redis.RedisCluster]:
    """A started RedisHub and a raw client on the same store (cluster-aware on a cluster)."""
    hub = await BACKENDS[kind](tmp, 256, Clock())
    assert isinstance(hub, RedisHub)
    await hub.start()
    if kind == "redis-cluster":
        seed = _cluster[0].url.replace("+cluster", "", 1)
        return hub, redis.RedisCluster.from_url(seed)
    return hub, redis.Redis.from_url(_server[0].url)


def _schedule(hub: RedisHub, node: str, clock: Clock, lease_s: float = 10.0) -> RedisSchedule:
    return RedisSchedule(hub.redis, prefix=hub.prefix, lease_s=lease_s, node_id=node, clock=clock)


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_commit_is_refused_unless_the_lease_key_holds_the_token(
    tmp_path: Path, kind: str
) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    lease = f"{hub.prefix}:{{ailab:a}}:lease"
    q = SubscriberQueue()
    hub.attach(q, ["ailab:a"])
    await hub.attached(["ailab:a"])
    try:
        raw.set(lease, "a:1")
        stored = await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60, leases={"ailab:a": "a:1"})
        assert [e.event.seq for e in stored] == [1]
        assert [e.event.seq for e in await q.get_batch(max_wait_s=2)] == [1]

        raw.set(lease, "b:2")  # another node took the task over
        stale = [ev("ailab:a", 2, progress=10), ev("ailab:a", 3, progress=20)]
        assert await hub.commit(stale, terminal_ttl_s=60, leases={"ailab:a": "a:1"}) == []
        raw.delete(lease)  # or the lease simply ran out
        assert await hub.commit(stale[:1], terminal_ttl_s=60, leases={"ailab:a": "a:1"}) == []
        assert hub.refused == 3
        snap = await hub.snapshot("ailab:a")
        assert snap is not None and snap.seq == 1
        assert await hub.history("ailab:a", 1) == []

        # The holder's token commits; a commit that names no lease is not fenced.
        raw.set(lease, "b:2")
        assert len(await hub.commit(stale[:1], terminal_ttl_s=60, leases={"ailab:a": "b:2"})) == 1
        assert len(await hub.commit(stale[1:], terminal_ttl_s=60)) == 1
        got = await _collect(q, 2)
        assert [(e.event.seq, e.event.progress) for e in got] == [(2, 10), (3, 20)]
        assert raw.get(lease) == b"b:2"  # checked, not extended or taken
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_claims_are_fenced_in_the_tasks_slot(tmp_path: Path, kind: str) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    clock = Clock()
    a, b = _schedule(hub, "a", clock), _schedule(hub, "b", clock)
    task = "videoproc:t1"
    lease = a.lease_key(task)
    assert lease == f"{hub.prefix}:{{{task}}}:lease"  # the slot of the task's snapshot
    try:
        await a.add("videoproc", Entry(task=task, interval_s=1.0), keep_until=clock.now + 100)
        [mine] = await a.claim("videoproc", clock.now, clock.now)
        assert mine.lease == "a:1"
        assert raw.get(lease) == b"a:1"
        assert 9_000 < raw.pttl(lease) <= 10_000  # what is left of the lease

        # a is paused past its lease: b's claim takes the task back. a's key is
        # still in Redis (it expires by Redis's own clock), but its recorded expiry
        # has passed by the claimers' clock: b's fence replaces it.
        clock.now += 10.5
        [theirs] = await b.claim("videoproc", clock.now, clock.now)
        assert b.unfenced == 0 and b.takeovers == {"videoproc": 1}
        assert theirs.lease == "b:2"
        assert raw.get(lease) == b"b:2"

        # a wakes up: its renewal extends nothing, its commit is refused, b's is not.
        await a.renew("videoproc", [task])
        assert raw.get(lease) == b"b:2"
        assert await hub.commit([ev(task, 1)], terminal_ttl_s=60, leases={task: mine.lease}) == []
        assert len(await hub.commit([ev(task, 1)], terminal_ttl_s=60, leases={task: "b:2"})) == 1
        await a.release("videoproc", [(mine, clock.now)])  # a no-op: not a's any more
        assert raw.get(lease) == b"b:2"

        # b's renewal keeps its fence; its release removes it before the claim goes back.
        raw.pexpire(lease, 500)
        await b.renew("videoproc", [task])
        assert raw.pttl(lease) > 9_000
        await b.release("videoproc", [(theirs, clock.now)])
        assert raw.get(lease) is None
        [again] = await a.claim("videoproc", clock.now, clock.now)
        assert again.lease == "a:3" and raw.get(lease) == b"a:3"
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_claim_paused_before_its_fence_is_handed_back(
    tmp_path: Path, kind: str
) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    clock = Clock()
    a = _schedule(hub, "a", clock, lease_s=5.0)
    task = "videoproc:t2"
    try:
        await a.add("videoproc", Entry(task=task, interval_s=1.0), keep_until=clock.now + 100)
        claimed_at = clock.now
        clock.now += 6.0  # frozen between the claim script and the fence
        assert await a.claim("videoproc", claimed_at, claimed_at) == []
        assert a.unfenced == 1 and raw.get(a.lease_key(task)) is None
        # Handed back due at once: the next claim (not paused) takes it and fences it.
        [entry] = await a.claim("videoproc", clock.now, clock.now)
        assert entry.lease == "a:2" and raw.get(a.lease_key(task)) == b"a:2"
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_store_losing_a_task_starts_a_new_epoch(tmp_path: Path, kind: str) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    q = SubscriberQueue()
    hub.attach(q, ["ailab:a"])
    await hub.attached(["ailab:a"])
    try:
        await hub.commit([ev("ailab:a", 1), ev("ailab:a", 2, progress=50)], terminal_ttl_s=60)
        got = await _collect(q, 2)
        # The store forgets the task (e.g. the last second of an everysec AOF);
        # the poller's next commit starts again at seq 1.
        raw.delete(f"{hub.prefix}:{{ailab:a}}:snap", f"{hub.prefix}:{{ailab:a}}:hist")
        await hub.commit([ev("ailab:a", 1, progress=60)], terminal_ttl_s=60)
        got = await _collect(q, 2)
        assert got[0].event.event is EventKind.NOTICE and got[0].event.code == "resync"
        assert (got[1].event.seq, got[1].event.progress) == (1, 60)
        await hub.commit([ev("ailab:a", 2, progress=70)], terminal_ttl_s=60)
        assert [e.event.seq for e in await q.get_batch(max_wait_s=2)] == [2]
        assert hub.resyncs == 1
    finally:
        raw.close()
        await hub.close()


async def _subscribed_pair(
    tmp_path: Path, kind: str
) -> tuple[RedisHub, redis.Redis | redis.RedisCluster, SubscriberQueue]:
    """A Redis hub, a raw client on its store, and a subscriber to ``ailab:a``."""
    hub, raw = await _redis_pair(tmp_path, kind)
    q = SubscriberQueue()
    hub.attach(q, ["ailab:a"])
    await hub.attached(["ailab:a"])
    return hub, raw, q


async def _deliver_seqs_1_and_2(hub: RedisHub, q: SubscriberQueue) -> Event:
    """Commit seqs 1 and 2 of ``ailab:a``, both delivered to ``q``; the first comes back."""
    first = ev("ailab:a", 1)
    await hub.commit([first, ev("ailab:a", 2, progress=50)], terminal_ttl_s=60)
    assert [e.event.seq for e in await _collect(q, 2)] == [1, 2]
    return first


async def _expect_a_resync_then_the_end(hub: RedisHub, q: SubscriberQueue) -> None:
    """The re-used seq 2 begins a new epoch: a ``resync`` notice, then the task's end."""
    got = await _collect(q, 2)
    assert (got[0].event.event, got[0].event.code) == (EventKind.NOTICE, "resync")
    assert (got[1].event.seq, got[1].event.state) == (2, State.SUCCEEDED)
    assert hub.resyncs == 1


def _lose_the_last_event(raw: redis.Redis | redis.RedisCluster, hub: RedisHub, kept: Event) -> None:
    """The store as a promoted replica has it: the commit after ``kept`` (the task's
    first event) never reached it."""
    snap, hist = f"{hub.prefix}:{{{kept.task}}}:snap", f"{hub.prefix}:{{{kept.task}}}:hist"
    raw.hset(snap, mapping={"seq": kept.seq, "body": Encoded(kept).json})
    raw.delete(hist)  # a stream never given the lost entry takes its id again
    raw.xadd(hist, {"b": Encoded(kept).json}, id=f"0-{kept.seq}")


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_a_lost_event_whose_seq_is_committed_again_begins_a_new_epoch(
    tmp_path: Path, kind: str
) -> None:
    hub, raw, q = await _subscribed_pair(tmp_path, kind)
    try:
        first = await _deliver_seqs_1_and_2(hub, q)
        # Delivered here, then lost with the master (replication is asynchronous):
        # the poller's next commit, the task's end, takes seq 2 again.
        _lose_the_last_event(raw, hub, first)
        await hub.commit([ev("ailab:a", 2, State.SUCCEEDED)], terminal_ttl_s=60)
        await _expect_a_resync_then_the_end(hub, q)
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_catching_up_finds_a_seq_committed_again_while_unsubscribed(
    tmp_path: Path, kind: str
) -> None:
    hub, raw, q = await _subscribed_pair(tmp_path, kind)
    try:
        first = await _deliver_seqs_1_and_2(hub, q)
        # Seq 2 lost with the master; its replica, promoted, stored another seq 2
        # before this node was subscribed there (so no message of it came here).
        _lose_the_last_event(raw, hub, first)
        end = Encoded(ev("ailab:a", 2, State.SUCCEEDED)).json
        raw.hset(f"{hub.prefix}:{{ailab:a}}:snap", mapping={"seq": 2, "body": end})
        raw.xadd(f"{hub.prefix}:{{ailab:a}}:hist", {"b": end}, id="0-2")
        # The link drops: the node subscribes again and catches up from the stream.
        channel = hub.channels.channel("ailab:a")
        if isinstance(raw, redis.RedisCluster):
            node = raw.get_node_from_key(channel)
            raw.client_kill_filter(_type="pubsub", target_nodes=node)
        else:
            raw.client_kill_filter(_type="pubsub")
        await _expect_a_resync_then_the_end(hub, q)
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_an_unexpected_driver_error_does_not_end_the_listener(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, raw, q = await _subscribed_pair(tmp_path, kind)
    real_get = hub.redis.get
    leaked = asyncio.Event()

    async def get(*args: object, **kwargs: object) -> object:
        if not leaked.is_set():
            # What redis-py raises when a connection is torn down under a command
            # (a failover: the cluster's topology read again meanwhile).
            leaked.set()
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        return await real_get(*args, **kwargs)

    monkeypatch.setattr(hub.redis, "get", get)  # the driver's, read by the listener's tick
    try:
        async with asyncio.timeout(3 * INCARNATION_CHECK_S):
            await leaked.wait()
        await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
        assert [e.event.seq for e in await _collect(q, 1)] == [1]
        await hub.commit([ev("ailab:a", 2, progress=10)], terminal_ttl_s=60)
        assert [e.event.seq for e in await _collect(q, 1)] == [2]
        assert await hub.ready()
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_store_losing_everything_resyncs_and_restores(
    tmp_path: Path, kind: str
) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    restored = asyncio.Event()

    async def restore() -> None:
        restored.set()

    hub.on_reconnect = restore
    q = SubscriberQueue()
    hub.attach(q, ["ailab:a"])
    await hub.attached(["ailab:a"])
    try:
        await hub.commit([ev("ailab:a", 1), ev("ailab:a", 2)], terminal_ttl_s=60)
        got = await _collect(q, 2)
        if isinstance(raw, redis.RedisCluster):  # every master's keys
            keys = raw.keys(f"{hub.prefix}:*", target_nodes=redis.RedisCluster.PRIMARIES)
        else:
            keys = raw.keys(f"{hub.prefix}:*")
        assert f"{hub.prefix}:incarnation".encode() in keys
        raw.delete(*keys)  # FLUSHALL, or a restart without persistence
        # No event comes: the listener notices the new incarnation by itself.
        async with asyncio.timeout(3 * INCARNATION_CHECK_S):
            await restored.wait()
        got = await q.get_batch(max_wait_s=1)
        assert [(e.event.event, e.event.code) for e in got] == [(EventKind.NOTICE, "resync")]
        await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
        assert [e.event.seq for e in await q.get_batch(max_wait_s=2)] == [1]
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_claim_waits_for_another_nodes_unexpired_fence(
    tmp_path: Path, kind: str
) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    clock = Clock()
    a = _schedule(hub, "a", clock, lease_s=5.0)
    task = "videoproc:t3"
    lease_key = a.lease_key(task)
    until_key = lease_key + "_until"
    try:
        await a.add("videoproc", Entry(task=task, interval_s=1.0), keep_until=clock.now + 100)
        # Another node's fence whose claim lapses 3 s from now (by the claimers' clock).
        raw.set(lease_key, "z:9", px=60_000)
        raw.set(until_key, str(clock.now + 3.0), px=60_000)
        assert await a.claim("videoproc", clock.now, clock.now) == []
        assert a.unfenced == 1 and raw.get(lease_key) == b"z:9"
        assert await a.next_due("videoproc") == pytest.approx(clock.now + 3.0, abs=0.01)
        clock.now += 3.0  # now that claim has lapsed: the fence is ours
        [entry] = await a.claim("videoproc", clock.now, clock.now)
        assert raw.get(lease_key) == entry.lease.encode() and entry.lease.startswith("a:")
    finally:
        raw.close()
        await hub.close()


# -- Redis only: fan-out in proportion to what a node serves ------------------------


def _subscribers(raw: redis.Redis | redis.RedisCluster, channel: str, sharded: bool) -> int:
    """How many connections Redis counts on ``channel`` (classic or sharded)."""
    if sharded:
        node = raw.get_node_from_key(channel)  # type: ignore[union-attr]
        reply = raw.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
    else:
        reply = raw.execute_command("PUBSUB NUMSUB", channel)
    pair = reply[0] if reply and isinstance(reply[0], tuple | list) else reply
    return int(pair[1])


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_a_node_receives_only_the_events_of_tasks_it_serves(
    tmp_path: Path, kind: str
) -> None:
    mine, theirs = "ailab:mine", "ailab:theirs"
    serving, _ = await _redis_pair(tmp_path, kind)
    writer, raw = await _redis_pair(tmp_path, kind)
    q = SubscriberQueue()
    serving.attach(q, [mine])
    await serving.attached([mine])
    try:
        for seq in range(1, 6):
            await writer.commit([ev(theirs, seq, progress=seq)], terminal_ttl_s=60)
        await writer.commit([ev(mine, 1), ev(mine, 2, State.SUCCEEDED)], terminal_ttl_s=60)
        got = await _collect(q, 2)
        assert [e.event.seq for e in got] == [1, 2]
        # The five events of a task nobody follows here never reached this node.
        assert serving.received == 2
        assert writer.received == 0
    finally:
        raw.close()
        await serving.close()
        await writer.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_subscriptions_follow_local_subscribers_with_a_linger(
    tmp_path: Path, kind: str
) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    hub.channels.linger_s = 0.3
    channel = hub.channels.channel("ailab:a")
    sharded = kind == "redis-cluster"
    first, second = SubscriberQueue(), SubscriberQueue()
    try:
        assert _subscribers(raw, channel, sharded) == 0
        hub.attach(first, ["ailab:a"])
        hub.attach(second, ["ailab:a"])
        await hub.attached(["ailab:a"])
        assert _subscribers(raw, channel, sharded) == 1  # two subscribers, one subscription
        hub.detach(first, ["ailab:a"])
        hub.detach(second, ["ailab:a"])
        hub.attach(first, ["ailab:a"])  # back within the linger: nothing was sent
        await hub.attached(["ailab:a"])
        hub.detach(first, ["ailab:a"])
        await asyncio.sleep(0.1)
        assert _subscribers(raw, channel, sharded) == 1
        await asyncio.sleep(0.6)  # the linger ran out
        assert _subscribers(raw, channel, sharded) == 0
        assert hub.channels.subscribed() == 0
        hub.attach(second, ["ailab:a"])
        await hub.attached(["ailab:a"])
        assert _subscribers(raw, channel, sharded) == 1
        await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
        assert [e.event.seq for e in await _collect(second, 1)] == [1]
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_many_tasks_subscribe_in_batches(tmp_path: Path, kind: str) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    tasks = [f"ailab:t{i}" for i in range(3000)]
    q = SubscriberQueue()
    try:
        started = asyncio.get_running_loop().time()
        hub.attach(q, tasks)
        await hub.attached(tasks)
        # One write per link, confirmations streamed back: well under a round
        # trip per task even on this shared machine.
        assert asyncio.get_running_loop().time() - started < 2.0
        assert hub.channels.subscribed() == len(tasks)
        await hub.commit([ev(tasks[-1], 1)], terminal_ttl_s=60)
        assert [e.event.task for e in await _collect(q, 1)] == [tasks[-1]]
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_watches_live_in_their_tasks_slots(tmp_path: Path, kind: str) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    try:
        for i in range(40):
            await hub.put_watch(Watch(task=f"ailab:w{i}", created_at=float(i)))
        assert raw.get(f"{hub.prefix}:{{ailab:w7}}:watch") is not None
        assert not raw.exists(f"{hub.prefix}:watches")  # no single key holds them all
        assert sorted(w.created_at for w in await hub.watches()) == [float(i) for i in range(40)]
        assert await hub.drop_watch("ailab:w7") is True
        assert raw.get(f"{hub.prefix}:{{ailab:w7}}:watch") is None
        assert len(await hub.watches()) == 39
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_watches_kept_in_the_old_single_hash_are_still_listed(
    tmp_path: Path, kind: str
) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    try:
        old = Watch(task="ailab:old", created_at=1.0, deadline_at=5.0)
        raw.hset(f"{hub.prefix}:watches", "ailab:old", msgspec.json.encode(old))
        await hub.put_watch(Watch(task="ailab:new", created_at=2.0))
        assert sorted(w.task for w in await hub.watches()) == ["ailab:new", "ailab:old"]
        assert await hub.drop_watch("ailab:old") is True
        assert [w.task for w in await hub.watches()] == ["ailab:new"]
    finally:
        raw.close()
        await hub.close()


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_a_subscriber_back_while_the_unsubscribe_is_in_flight_gets_its_events(
    tmp_path: Path, kind: str
) -> None:
    hub, raw = await _redis_pair(tmp_path, kind)
    hub.channels.linger_s = 0.0  # every last detach unsubscribes at once
    q = SubscriberQueue()
    try:
        for seq in range(1, 16):
            hub.attach(q, ["ailab:a"])
            await hub.attached(["ailab:a"])
            await hub.commit([ev("ailab:a", seq)], terminal_ttl_s=60)
            assert [e.event.seq for e in await _collect(q, 1)] == [seq]
            hub.detach(q, ["ailab:a"])
            # Back after 0 to a few ms: before, while or after the unsubscribe goes out.
            await asyncio.sleep((seq % 4) * 0.002)
        assert _subscribers(raw, hub.channels.channel("ailab:a"), kind == "redis-cluster") <= 1
    finally:
        raw.close()
        await hub.close()


# -- history pages and watcher counts ---------------------------------------------


def _seqs(page: HistoryPage) -> list[int]:
    return [enc.event.seq for enc in page.events]


async def test_history_pages_walk_the_kept_events_in_order(hub: Hub) -> None:
    for seq in range(1, 6):
        await hub.commit([ev("ailab:a", seq, progress=seq)], terminal_ttl_s=60)
    pages = []
    after = 0
    while True:
        page = await hub.history_page("ailab:a", after, 2)
        pages.append(_seqs(page))
        assert page.gap is False and page.known and page.latest == 5
        if not page.more:
            break
        after = page.next_after
    assert pages == [[1, 2], [3, 4], [5]]
    last = await hub.history_page("ailab:a", 5, 2)
    assert (_seqs(last), last.gap, last.more, last.next_after) == ([], False, False, 5)


async def test_history_page_marks_a_gap_and_starts_at_the_oldest_kept(
    make_hub: Callable[[int], Awaitable[Hub]],
) -> None:
    hub = await make_hub(3)
    for seq in range(1, 7):
        await hub.commit([ev("ailab:a", seq, progress=seq)], terminal_ttl_s=60)
    page = await hub.history_page("ailab:a", 1, 2)  # 2 and 3 were trimmed
    assert (_seqs(page), page.gap, page.more, page.next_after) == ([4, 5], True, True, 5)
    rest = await hub.history_page("ailab:a", page.next_after, 2)
    assert (_seqs(rest), rest.gap, rest.more) == ([6], False, False)
    reaching = await hub.history_page("ailab:a", 3, 10)  # 4 is the oldest kept: no gap
    assert (_seqs(reaching), reaching.gap) == ([4, 5, 6], False)


async def test_history_pages_of_a_finished_task(
    make_hub: Callable[[int], Awaitable[Hub]],
) -> None:
    hub = await make_hub(3)
    await hub.commit(
        [ev("ailab:a", seq, progress=seq) for seq in range(1, 5)]
        + [ev("ailab:a", 5, State.SUCCEEDED)],
        terminal_ttl_s=60,
    )
    first = await hub.history_page("ailab:a", 0, 2)
    assert (_seqs(first), first.gap, first.more) == ([3, 4], True, True)
    second = await hub.history_page("ailab:a", 4, 2)
    assert (_seqs(second), second.gap, second.more) == ([5], False, False)
    assert second.events[0].event.terminal
    done = await hub.history_page("ailab:a", 5, 2)
    assert (_seqs(done), done.gap, done.more, done.latest) == ([], False, False, 5)


async def test_history_page_of_an_unknown_task(hub: Hub) -> None:
    page = await hub.history_page("ailab:nope", 0, 10)
    assert (page.events, page.gap, page.known, page.latest) == ([], False, False, 0)
    await hub.commit([ev("ailab:a", 1)], terminal_ttl_s=60)
    assert (await hub.history_page("ailab:a", 0, 10)).known


async def test_watcher_counts_follow_attached_queues(hub: Hub) -> None:
    a, b = SubscriberQueue(), SubscriberQueue()
    hub.attach(a, ["ailab:a", "ailab:b"])
    hub.attach(b, ["ailab:a"])
    counts = await hub.watcher_counts(["ailab:a", "ailab:b", "ailab:c"], "node-1")
    assert counts == {"ailab:a": 2, "ailab:b": 1, "ailab:c": 0}
    assert {"ailab:a", "ailab:b"} <= set(await hub.watched_tasks())
    hub.detach(a, ["ailab:a", "ailab:b"])
    assert await hub.watcher_counts(["ailab:a", "ailab:b"], "node-1") == {
        "ailab:a": 1,
        "ailab:b": 0,
    }


async def test_redis_watcher_counts_are_summed_over_the_nodes(tmp_path: Path) -> None:
    hub, raw = await _redis_pair(tmp_path, "redis")
    local = SubscriberQueue()
    hub.attach(local, ["ailab:a"])
    try:
        await hub.publish_watchers("node-2", {"ailab:a": 3, "ailab:b": 2}, 30)
        await hub.publish_watchers("node-3", {"ailab:a": 1}, 30)
        # This node's own published field is not counted twice: memory is.
        await hub.publish_watchers("node-1", {"ailab:a": 5}, 30)
        counts = await hub.watcher_counts(["ailab:a", "ailab:b"], "node-1")
        assert counts == {"ailab:a": 1 + 3 + 1, "ailab:b": 2}
        assert set(await hub.watched_tasks()) == {"ailab:a", "ailab:b"}
        await hub.publish_watchers("node-2", {"ailab:b": 0}, 30)
        assert await hub.watcher_counts(["ailab:b"], "node-1") == {"ailab:b": 0}
        # A task nobody watches any more leaves the index.
        assert set(await hub.watched_tasks()) == {"ailab:a"}
    finally:
        raw.close()
        await hub.close()


async def test_redis_watcher_counts_of_a_node_that_stopped_reporting_expire(
    tmp_path: Path,
) -> None:
    hub, raw = await _redis_pair(tmp_path, "redis")
    try:
        await hub.publish_watchers("node-2", {"ailab:a": 2}, 30)
        key = f"{hub.prefix}:{{ailab:a}}:watchers"
        raw.hset(key, "node-dead", "7:1000")  # expired long ago, by Redis's clock
        raw.hset(key, "node-garbled", "many")
        assert await hub.watcher_counts(["ailab:a"], "node-1") == {"ailab:a": 2}
        assert sorted(raw.hkeys(key)) == [b"node-2"]  # readers drop what expired
        assert 0 < raw.pttl(key) <= 30_000  # the whole hash goes if every node dies
    finally:
        raw.close()
        await hub.close()


async def test_redis_readiness_is_false_not_an_error_when_the_driver_leaks_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/readyz`` answers 503, not 500, while redis-py leaks an ``AttributeError``
    from a connection torn down under a command."""
    import redis.asyncio as aioredis

    hub, raw = await _redis_pair(tmp_path, "redis")
    try:
        assert await hub.ready()

        async def ping() -> None:  # a real redis-py connection with no writer
            await aioredis.Connection(host="127.0.0.1", port=1)._send_packed_command([b"PING"])

        monkeypatch.setattr(hub.redis, "ping", ping)
        assert await hub.ready() is False
    finally:
        raw.close()
        await hub.close()


def _calls(raw: redis.Redis | redis.RedisCluster, command: str) -> int:
    """How many times the store has run ``command`` (summed over a cluster's masters)."""
    if isinstance(raw, redis.RedisCluster):
        per_node = raw.info("commandstats", target_nodes=redis.RedisCluster.PRIMARIES)
        stats = list(per_node.values())
    else:
        stats = [raw.info("commandstats")]
    return sum(int(s.get(f"cmdstat_{command}", {}).get("calls", 0)) for s in stats)


@pytest.mark.parametrize("kind", REDIS)
async def test_redis_a_storm_of_snapshot_reads_reads_each_task_once(
    tmp_path: Path, kind: str
) -> None:
    """A thousand subscribers (re)connecting at once read ten snapshots, not a
    thousand: reads asked for in one pass of the loop share one pipeline."""
    hub, raw = await _redis_pair(tmp_path, kind)
    tasks = [f"ailab:storm-{i}" for i in range(10)]
    try:
        await hub.commit([ev(task, 1) for task in tasks], terminal_ttl_s=60)
        before = _calls(raw, "hget")
        got = await asyncio.gather(*(hub.snapshot(tasks[i % 10]) for i in range(1000)))
        read = _calls(raw, "hget") - before
        assert [(e.task, e.seq) if e else None for e in got] == [
            (tasks[i % 10], 1) for i in range(1000)
        ]
        assert await hub.snapshot("ailab:never") is None
        assert read <= len(tasks), read
    finally:
        raw.close()
        await hub.close()


async def test_redis_a_storm_of_schedule_adds_shares_connections(tmp_path: Path) -> None:
    """A thousand tasks scheduled at once go out as pipelines over a few pooled
    connections: not a connection each (redis-py opens one per call in flight),
    which a busy node cannot set up within the connect timeout."""
    hub, raw = await _redis_pair(tmp_path, "redis")
    schedule = _schedule(hub, "n1", Clock())
    try:
        opened = int(raw.info("stats")["total_connections_received"])
        entries = [
            Entry(task=f"ailab:add-{i}", interval_s=1.0, deadline_at=2e9) for i in range(1000)
        ]
        added = await asyncio.gather(*(schedule.add("ailab", e, keep_until=2e9) for e in entries))
        assert added == [True] * 1000
        assert not any(
            await asyncio.gather(*(schedule.add("ailab", e, keep_until=2e9) for e in entries[:10]))
        )
        assert int(raw.info("stats")["total_connections_received"]) - opened <= 4
    finally:
        raw.close()
        await hub.close()
