"""The schedule contract: every backend passes this same suite.

A backend joins by adding a factory to ``BACKENDS``. Each factory returns a
function that makes one node's view of the same schedule: for the local
schedule (one process) that is always the same object; for Redis each call
is another node (its own node id) on the same keys.

Times are injected: ``now`` and ``horizon`` are arguments of ``claim``. They
start at the real clock because a Redis schedule stamps ``add`` and
``renew`` with it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.crc import key_slot

from gateway.hub.redis import connect
from gateway.poller.redis_schedule import RedisSchedule
from gateway.poller.schedule import FOREVER, Entry, LocalSchedule, Schedule
from tests.redis_cluster import RedisCluster, redis_cluster  # noqa: F401 (a fixture)
from tests.redis_server import RedisServer, process_redis_server

P = "aholo"
LEASE_S = 5.0


@dataclass
class Backend:
    node: Callable[[], Awaitable[Schedule]]  # one more node's view of the same schedule
    shared: bool  # several nodes, each with its own claims
    made: list[Schedule] = field(default_factory=list)

    async def first(self) -> Schedule:
        schedule = await self.node()
        self.made.append(schedule)
        return schedule

    async def other(self) -> Schedule:
        return await self.first()


async def _local(tmp: Path) -> Backend:
    schedule = LocalSchedule()

    async def node() -> Schedule:
        return schedule

    return Backend(node, shared=False)


_server: list[RedisServer] = []
_RUN = f"schedule-contract-{uuid.uuid4().hex[:8]}"


async def _redis(tmp: Path) -> Backend:
    if not _server:
        _server.append(process_redis_server(persist=False))
    prefix = f"{_RUN}:{tmp.name}"

    async def node() -> Schedule:
        schedule = RedisSchedule(connect(_server[0].url), prefix=prefix, lease_s=LEASE_S)
        await schedule.start()
        return schedule

    return Backend(node, shared=True)


async def _redis_cluster(tmp: Path, cluster: RedisCluster) -> Backend:
    """A real 3-master Redis Cluster: the shards' hash tags land on different masters."""
    prefix = f"{_RUN}:{tmp.name}"

    async def node() -> Schedule:
        schedule = RedisSchedule(connect(cluster.url), prefix=prefix, lease_s=LEASE_S)
        await schedule.start()
        return schedule

    return Backend(node, shared=True)


BACKENDS: dict[str, Callable[[Path], Awaitable[Backend]]] = {"local": _local, "redis": _redis}


# The stores several nodes share (each node its own claims): for what only they do.
SHARED = pytest.mark.parametrize("backend", ["redis", "redis-cluster"], indirect=True)


@pytest.fixture(params=[*sorted(BACKENDS), "redis-cluster"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "redis-cluster":
        b = await _redis_cluster(tmp_path, request.getfixturevalue("redis_cluster"))
    else:
        b = await BACKENDS[request.param](tmp_path)
    yield b
    for schedule in b.made:
        if isinstance(schedule, RedisSchedule):
            await schedule.redis.aclose()


@pytest.fixture
async def schedule(backend: Backend) -> Schedule:
    return await backend.first()


@pytest.fixture
def now() -> float:
    return time.time()


def entry(task: str, interval_s: float = 5.0, **kw: object) -> Entry:
    return Entry(task=f"{P}:{task}", interval_s=interval_s, **kw)  # type: ignore[arg-type]


def tasks(entries: list[Entry]) -> list[str]:
    return sorted(e.task for e in entries)


# --- add / claim / release ------------------------------------------------------


async def test_a_new_task_is_due_at_once_and_added_only_once(
    schedule: Schedule, now: float
) -> None:
    assert await schedule.add(P, entry("a"), keep_until=now + 60) is True
    assert await schedule.add(P, entry("a"), keep_until=now + 60) is False
    assert tasks(await schedule.claim(P, now, now)) == [f"{P}:a"]
    assert set(schedule.known(P)) == {f"{P}:a"}


async def test_a_claimed_task_is_not_added_again(schedule: Schedule, now: float) -> None:
    await schedule.add(P, entry("a"), keep_until=now + 60)
    await schedule.claim(P, now, now)
    assert await schedule.add(P, entry("a"), keep_until=now + 60) is False
    assert await schedule.claim(P, now, now) == []


async def test_release_makes_a_task_due_at_its_time_not_before(
    schedule: Schedule, now: float
) -> None:
    await schedule.add(P, entry("a"), keep_until=now + 60)
    (claimed,) = await schedule.claim(P, now, now)
    claimed.failures = 2
    claimed.interval_s = 7.5
    await schedule.release(P, [(claimed, now + 3.0)])
    assert await schedule.next_due(P) == pytest.approx(now + 3.0)
    assert await schedule.claim(P, now + 2.999, now + 2.999) == []
    (again,) = await schedule.claim(P, now + 3.0, now + 3.0)
    # The policy state travels with the entry.
    assert (again.task, again.failures, again.interval_s) == (f"{P}:a", 2, 7.5)


async def test_claim_takes_every_task_due_by_the_horizon(schedule: Schedule, now: float) -> None:
    for name in "abc":
        await schedule.add(P, entry(name), keep_until=now + 60)
    first = await schedule.claim(P, now, now)
    due = {e.task: at for e, at in zip(first, (now + 1, now + 2, now + 9), strict=True)}
    await schedule.release(P, [(e, due[e.task]) for e in first])
    early = [t for t, at in due.items() if at <= now + 2.5]
    assert tasks(await schedule.claim(P, now, now + 2.5)) == sorted(early)
    assert await schedule.next_due(P) == pytest.approx(now + 9)


async def test_one_claim_takes_a_whole_round_of_many_tasks(schedule: Schedule, now: float) -> None:
    """However the tasks are spread (shards), a claim gets every due one: a batch
    provider's round stays one request per ``batch_size`` tasks."""
    for i in range(100):
        await schedule.add(P, entry(f"t{i:03}"), keep_until=now + 60)
    await schedule.next_due(P)  # as the lane does before a claim
    claimed = await schedule.claim(P, now, now)
    assert len(claimed) == 100
    await schedule.release(P, [(e, now + 5) for e in claimed])
    assert await schedule.next_due(P) == pytest.approx(now + 5)
    assert len(await schedule.claim(P, now + 5, now + 5)) == 100


@SHARED
async def test_a_providers_schedule_is_spread_over_shards(backend: Backend, now: float) -> None:
    schedule = await backend.first()
    assert isinstance(schedule, RedisSchedule)
    for i in range(64):
        await schedule.add(P, entry(f"s{i:03}"), keep_until=now + 60)
    sizes = [await schedule.redis.zcard(schedule._key(P, "due", n)) for n in range(16)]
    assert sum(sizes) == 64
    assert sum(1 for size in sizes if size) >= 12  # a stable hash spreads them
    slots = {key_slot(schedule._key(P, "due", n).encode()) for n in range(16)}
    assert len(slots) == 16  # one slot per shard: a cluster puts them on different masters


async def test_next_due_is_the_earliest_due_time(schedule: Schedule, now: float) -> None:
    assert await schedule.next_due(P) is None
    for name in "ab":
        await schedule.add(P, entry(name), keep_until=now + 60)
    a, b = sorted(await schedule.claim(P, now, now), key=lambda e: e.task)
    await schedule.release(P, [(a, now + 4), (b, now + 2)])
    assert await schedule.next_due(P) == pytest.approx(now + 2)
    (claimed,) = await schedule.claim(P, now + 2, now + 2)
    await schedule.release(P, [(claimed, now + 10)])
    assert await schedule.next_due(P) == pytest.approx(now + 4)


async def test_remove_forgets_a_task_for_good(schedule: Schedule, now: float) -> None:
    await schedule.add(P, entry("a"), keep_until=now + 60)
    await schedule.add(P, entry("b"), keep_until=now + 60)
    (a, b) = sorted(await schedule.claim(P, now, now), key=lambda e: e.task)
    await schedule.remove(P, [a.task])
    await schedule.release(P, [(a, now), (b, now)])  # releasing a removed task revives nothing
    assert tasks(await schedule.claim(P, now + 1, now + 1)) == [b.task]
    assert a.task not in schedule.known(P)
    assert await schedule.add(P, entry("a"), keep_until=now + 60) is True


async def test_set_deadline_travels_with_the_entry(schedule: Schedule, now: float) -> None:
    await schedule.add(P, entry("a"), keep_until=now + 60)
    await schedule.set_deadline(P, f"{P}:a", now + 30)
    (claimed,) = await schedule.claim(P, now, now)
    assert claimed.deadline_at == pytest.approx(now + 30)


# --- interest: keep / lapse ----------------------------------------------------------


async def test_a_task_whose_interest_lapsed_is_dropped_at_claim(
    schedule: Schedule, now: float
) -> None:
    await schedule.add(P, entry("a"), keep_until=now + 5)
    await schedule.add(P, entry("b"), keep_until=now + 5)
    claimed = await schedule.claim(P, now, now)
    await schedule.release(P, [(e, now + 6) for e in claimed])
    await schedule.keep(P, [f"{P}:b"], now + 60)
    assert tasks(await schedule.claim(P, now + 6, now + 6)) == [f"{P}:b"]
    # Dropped means forgotten: adding it again schedules it anew.
    assert await schedule.add(P, entry("a"), keep_until=now + 60) is True


async def test_keep_never_shortens_interest(schedule: Schedule, now: float) -> None:
    await schedule.add(P, entry("a"), keep_until=now + 60)
    await schedule.keep(P, [f"{P}:a"], now + 1)
    (claimed,) = await schedule.claim(P, now, now)
    await schedule.release(P, [(claimed, now + 30)])
    assert tasks(await schedule.claim(P, now + 30, now + 30)) == [f"{P}:a"]


async def test_a_watch_keeps_a_task_forever_until_it_lapses(schedule: Schedule, now: float) -> None:
    await schedule.add(P, entry("a"), keep_until=FOREVER)
    (claimed,) = await schedule.claim(P, now, now)
    await schedule.release(P, [(claimed, now + 1e6)])
    (claimed,) = await schedule.claim(P, now + 1e6, now + 1e6)
    await schedule.lapse(P, f"{P}:a", now + 1e6 + 5)  # the watch was removed: grace
    await schedule.release(P, [(claimed, now + 1e6 + 1)])
    (claimed,) = await schedule.claim(P, now + 1e6 + 1, now + 1e6 + 1)  # within grace
    await schedule.release(P, [(claimed, now + 1e6 + 6)])
    assert await schedule.claim(P, now + 1e6 + 6, now + 1e6 + 6) == []


# --- claims: exclusive, leased -------------------------------------------------------


async def test_a_task_is_never_claimed_twice_at_once(backend: Backend, now: float) -> None:
    a = await backend.first()
    b = await backend.other()
    for i in range(50):
        await a.add(P, entry(f"t{i}"), keep_until=now + 60)
    got_a = await a.claim(P, now, now + 1)
    got_b = await b.claim(P, now, now + 1)
    assert len(got_a) + len(got_b) == 50
    assert not set(tasks(got_a)) & set(tasks(got_b))
    assert await a.claim(P, now + 1, now + 1) == [] and await b.claim(P, now + 1, now + 1) == []


async def test_claims_lapse_after_their_lease_and_only_then(backend: Backend, now: float) -> None:
    a = await backend.first()
    b = await backend.other()
    await a.add(P, entry("a"), keep_until=now + 600)
    (claimed,) = await a.claim(P, now, now)
    if a.renew_every_s is None:
        # Claims never lapse: a lane keeps its claim however long a poll takes.
        assert await b.claim(P, now + 1e5, now + 1e5) == []
        return
    assert a.renew_every_s < LEASE_S
    assert await b.next_due(P) == pytest.approx(now + LEASE_S)  # the lease expiry
    assert await b.claim(P, now + LEASE_S - 0.01, now + LEASE_S - 0.01) == []
    (taken,) = await b.claim(P, now + LEASE_S, now + LEASE_S)
    assert taken.task == claimed.task
    # The first node's late release is refused: no third node may claim it now.
    await a.release(P, [(claimed, now)])
    c = await backend.other()
    assert await c.claim(P, now + LEASE_S, now + LEASE_S) == []


async def test_renewing_keeps_a_claim(backend: Backend, now: float) -> None:
    a = await backend.first()
    b = await backend.other()
    await a.add(P, entry("a"), keep_until=now + 600)
    await a.claim(P, now, now)
    await a.renew(P, [f"{P}:a"])  # extends to (the real clock's) now + lease
    renewed_at = time.time()
    assert await b.claim(P, renewed_at + LEASE_S - 0.5, renewed_at + LEASE_S - 0.5) == []


@SHARED
async def test_close_gives_claims_back_at_once(backend: Backend, now: float) -> None:
    assert backend.shared
    a = await backend.first()
    b = await backend.other()
    await a.add(P, entry("a"), keep_until=now + 600)
    await a.claim(P, now, now)
    await a.close()
    assert tasks(await b.claim(P, now + 1, now + 1)) == [f"{P}:a"]


async def test_providers_are_separate(schedule: Schedule, now: float) -> None:
    await schedule.add(P, entry("a"), keep_until=now + 60)
    await schedule.add("videoproc", Entry(task="videoproc:a", interval_s=1.0), keep_until=now + 60)
    assert tasks(await schedule.claim(P, now, now)) == [f"{P}:a"]
    assert [e.task for e in await schedule.claim("videoproc", now, now)] == ["videoproc:a"]
    assert set(schedule.known(P)) == {f"{P}:a"}
