"""RedisLimits on a real redis-server: the cluster's rate, budget and concurrency.

Each test's limiter instances are nodes of one cluster (same keys, own node
ids). The wall clock is injected: the scripts run on the time they are given.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.hub.redis import connect
from gateway.metrics import Metrics
from gateway.poller.limits import FALLBACK_RETRY_S, LocalLimits, RedisLimits
from gateway.poller.provider import ProviderRuntime
from tests.redis_server import RedisServer
from tests.unit.poller.fakes import START, runtime


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("limits-redis"), persist=False) as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


Nodes = Callable[..., RedisLimits]


@pytest.fixture
async def nodes(server: RedisServer, clock: Clock) -> AsyncIterator[Nodes]:
    prefix = f"lim-{uuid.uuid4().hex[:8]}"
    made: list[RedisLimits] = []

    def node(rt: ProviderRuntime, url: str | None = None) -> RedisLimits:
        limits = RedisLimits(
            connect(url or server.url),
            rt,
            prefix=prefix,
            node_id=uuid.uuid4().hex[:8],
            clock=clock,
            monotonic=clock,
            metrics=Metrics(),
        )
        made.append(limits)
        return limits

    yield node
    for limits in made:
        await limits.redis.aclose()


async def test_the_budget_holds_across_nodes(nodes: Nodes, clock: Clock) -> None:
    rt = runtime("tryon", budget_per_hour=1.0, rate_per_s=1000.0)
    cluster = [nodes(rt) for _ in range(3)]
    granted = 0
    for i in range(30):
        admission = await cluster[i % 3].admit()
        granted += admission.limited is None
        clock.now += 1.0
    assert granted == 10  # 1 coin at 0.1 coins a call, for the three nodes together
    refused = await cluster[0].admit()
    assert refused.limited == "budget"
    assert refused.wait_s == pytest.approx(3600.0 - 30.0)
    clock.now = START + 3600.0  # the first call leaves the window: one more fits
    assert (await cluster[1].admit()).limited is None
    assert (await cluster[2].admit()).limited == "budget"


async def test_the_rate_holds_across_nodes_and_matches_the_local_bucket(
    nodes: Nodes, clock: Clock
) -> None:
    rt = runtime("tryon", rate_per_s=2.0)
    cluster = [nodes(rt) for _ in range(3)]
    local = LocalLimits.of(rt)
    shared = [(await cluster[i % 3].admit()).wait_s for i in range(4)]
    alone = [local.admit(clock.now).wait_s for _ in range(4)]
    assert shared == pytest.approx(alone)
    assert shared == pytest.approx([0.0, 0.0, 0.5, 1.0])
    # A slot further away than max_wait_s (1 s) is not booked: ask again later.
    later = await cluster[0].admit()
    assert later.limited == "rate" and later.wait_s == pytest.approx(1.5)
    clock.now += 10.0
    assert (await cluster[2].admit()).wait_s == 0.0


async def test_concurrency_permits_are_shared_and_lapse(nodes: Nodes, clock: Clock) -> None:
    rt = runtime("tryon", concurrency=2, timeout_s=5.0)
    a, b = nodes(rt), nodes(rt)
    first, second = await a.acquire(), await b.acquire()
    assert first is not None and second is not None
    assert await a.acquire() is None and await b.acquire() is None
    await a.release(first)
    third = await b.acquire()
    assert third is not None
    assert await a.acquire() is None
    # b dies holding two permits: they come back once their lease lapses.
    clock.now += a.permit_s + 0.1
    assert await a.acquire() is not None
    assert await a.acquire() is not None


async def test_heartbeats_count_live_nodes(nodes: Nodes, clock: Clock) -> None:
    rt = runtime("ailab")
    cluster = [nodes(rt) for _ in range(3)]
    for limits in cluster:
        await limits.heartbeat()
    assert cluster[2].live_nodes == 3
    clock.now += cluster[0].heartbeat_ttl_s + 1  # two of them stop beating
    await cluster[0].heartbeat()
    assert cluster[0].live_nodes == 1


async def test_without_redis_a_node_takes_only_its_share(
    nodes: Nodes, clock: Clock, tmp_path: Path
) -> None:
    with RedisServer(tmp_path / "doomed", persist=False) as doomed:
        free = [
            nodes(runtime("ailab", rate_per_s=6.0, concurrency=7), doomed.url) for _ in range(3)
        ]
        paid = nodes(runtime("tryon", budget_per_hour=1.0), doomed.url)
        for limits in [*free, *free]:  # the second round sees all three
            await limits.heartbeat()
        await paid.heartbeat()
    limits = free[0]
    assert limits.live_nodes == 3
    # Redis is gone: 6/s over 3 nodes is 2/s here, burst 2, and 7 // 3 permits.
    waits = [await limits.admit() for _ in range(3)]
    assert [a.wait_s for a in waits] == pytest.approx([0.0, 0.0, 0.5])
    permits = [await limits.acquire() for _ in range(3)]
    assert permits[:2] != [None, None] and permits[2] is None
    assert permits[0] is not None
    await limits.release(permits[0])
    assert await limits.acquire() is not None
    # Paid calls: the cluster's spend this hour is unknown, so nothing is spent.
    refused = await paid.admit()
    assert refused.limited == "budget" and refused.wait_s == FALLBACK_RETRY_S
    # A node that never saw the others cannot know its share: it waits too.
    blind = nodes(runtime("ailab"), doomed.url)
    assert (await blind.admit()).limited == "rate"
    assert await blind.acquire() is None
    assert limits.metrics is not None
    assert limits.metrics.limits_fallbacks.labels("ailab")._value.get() == 7  # 3 + 3 + 1
