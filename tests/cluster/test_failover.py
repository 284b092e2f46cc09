"""A Redis Cluster master killed under three running gateway nodes; one restarted empty.

A real 3-master cluster with one replica each (AOF on). Subscribers on all
three nodes follow ~20 tasks of every provider, spread over the slots. The
master serving the most of those tasks is killed with SIGKILL mid-run and
its replica is promoted. Every subscriber must still reach its task's
terminal event, each seq exactly once (no duplicate, no gap) within an
epoch. A promoted replica lacks only what the master had not yet sent it
(replication is asynchronous), so a ``resync`` may begin a new epoch — but
only for a task in the killed master's slots, never for one elsewhere.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.model import Event, EventKind, State
from gateway.core.sse import Encoded
from gateway.hub.queue import SubscriberQueue
from gateway.hub.redis import RedisHub, connect
from tests.cluster.test_cluster import MIX, cluster_doc, follow
from tests.integration.conftest import create_sim_task
from tests.integration.gateway_server import GatewayProcess, logs_on_failure
from tests.redis_cluster import RedisCluster

TASKS = 20


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path / "cluster", masters=3, replicas=1) as cluster:
        yield cluster


def _timeline(i: int) -> list[dict[str, Any]]:
    """Progress every 0.5 s; the tasks end at 3.5 s to 9.5 s — some of them while
    the master is down or just promoted, so their last events must be caught up."""
    end = 3.5 + (i % 7)
    steps = [{"at": 0.5 * k, "state": "running", "progress": k} for k in range(1, int(end * 2))]
    return [*steps, {"at": end, "state": "succeeded"}]


def epochs(events: list[dict[str, Any]]) -> list[list[int]]:
    """The seqs of state/progress events, split at each ``resync`` notice."""
    split: list[list[int]] = [[]]
    for event in events:
        if event["event"] == "notice" and event.get("code") == "resync":
            split.append([])
        elif event["event"] in ("snapshot", "state", "progress"):
            split[-1].append(event["seq"])
    return split


def received(metrics: str) -> float:
    found = re.search(r"^pollcast_events_received_total (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_master_failover_loses_no_event_and_duplicates_none(
    sim: str, client: httpx.AsyncClient, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    doc = cluster_doc(sim, redis_cluster.url)
    nodes: list[GatewayProcess] = []
    with logs_on_failure(nodes):
        readers: dict[tuple[str, int], asyncio.Task[list[dict[str, Any]]]] = {}
        try:
            for _ in range(3):
                nodes.append(GatewayProcess(doc, tmp_path))
                nodes[-1].start()  # stopped below even if it does not come up
            # Created once the nodes run: the timelines start now.
            tasks = [
                await create_sim_task(client, sim, MIX[i % 5], _timeline(i)) for i in range(TASKS)
            ]
            served_by = {
                task: redis_cluster.master_of(f"pc:{{{task}}}:snap").port for task in tasks
            }
            victim_port = max(set(served_by.values()), key=list(served_by.values()).count)
            victim = redis_cluster.node_at(victim_port)
            on_victim = {task for task, port in served_by.items() if port == victim_port}
            assert len(on_victim) >= 3, served_by  # "several" of the tasks live there
            urls = [node.url for node in nodes]
            readers.update(
                ((task, j), asyncio.create_task(follow(client, urls, task, first=j)))
                for task in tasks
                for j in range(3)
            )
            await asyncio.sleep(3.0)  # mid-run: every task polled, several seqs delivered
            victim.kill(signal.SIGKILL)
            killed = time.monotonic()
            redis_cluster.wait_for_failover(victim)
            promoted_s = time.monotonic() - killed
            _, pending = await asyncio.wait(readers.values(), timeout=60)
            waiting = [(task, nodes[j].port) for (task, j), r in readers.items() if r in pending]
            assert not waiting, ("no terminal event within 60 s", waiting, on_victim)
            results = {key: reader.result() for key, reader in readers.items()}
            counted = [received((await client.get(f"{u}/metrics")).text) for u in urls]
        finally:
            for reader in readers.values():
                reader.cancel()
            for node in nodes:
                node.stop()

        assert promoted_s < 20, promoted_s
        resynced: set[str] = set()
        for (task, _), events in results.items():
            story = [e for e in events if e["event"] in ("snapshot", "state", "progress")]
            assert story and story[-1]["state"] == "succeeded", (task, events[-3:])
            parts = epochs(events)
            for seqs in parts:
                if seqs:  # each seq once, in order, none missing
                    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (task, events)
            if len(parts) > 1:
                resynced.add(task)
        # A new epoch only where the store could have lost writes: the killed master's slots.
        assert resynced <= on_victim, (resynced, on_victim)
        assert all(n > 0 for n in counted), counted


async def _collect(q: SubscriberQueue, n: int, within_s: float = 15.0) -> list[Encoded]:
    got: list[Encoded] = []
    async with asyncio.timeout(within_s):
        while len(got) < n:
            got += await q.get_batch(max_wait_s=within_s)
    return got


def _event(task: str, seq: int, progress: int) -> Event:
    return Event(
        event=EventKind.PROGRESS,
        task=task,
        seq=seq,
        state=State.RUNNING,
        terminal=False,
        progress=progress,
        position=None,
        message=None,
        result=None,
        error=None,
        upstream={},
        updated_at="2026-11-21T10:00:00.000Z",
        observed_at="2026-11-21T10:00:00.000Z",
    )


async def test_a_master_restarted_empty_begins_a_new_epoch_for_its_own_tasks_only(
    tmp_path: Path,
) -> None:
    with RedisCluster(tmp_path / "cluster", masters=3, persist=False) as cluster:
        hub = RedisHub(connect(cluster.url), prefix="p")
        await hub.start()
        try:
            home = {f"ailab:t{i}": cluster.master_of(f"p:{{ailab:t{i}}}:snap") for i in range(30)}
            lost = next(iter(home))
            kept = next(t for t, node in home.items() if node is not home[lost])
            q = SubscriberQueue()
            hub.attach(q, [lost, kept])
            await hub.attached([lost, kept])
            for task in (lost, kept):
                await hub.commit([_event(task, 1, 10), _event(task, 2, 20)], terminal_ttl_s=60)
            assert len(await _collect(q, 4)) == 4

            victim = home[lost]
            victim.kill()
            victim.start()  # same slots, nothing in them: no persistence, no replica
            cluster.wait_ok()
            # Whether the hub has re-subscribed yet or not: it catches up either way.
            # The poller starts the forgotten task again at seq 1; the other goes on.
            await hub.commit([_event(lost, 1, 60)], terminal_ttl_s=60)
            await hub.commit([_event(kept, 3, 30)], terminal_ttl_s=60)
            got = await _collect(q, 3)
            mine = [(e.event.event, e.event.code, e.event.seq) for e in got if e.event.task == lost]
            theirs = [(e.event.seq, e.event.progress) for e in got if e.event.task == kept]
            assert mine[0][:2] == (EventKind.NOTICE, "resync"), got
            assert mine[1:] == [(EventKind.PROGRESS, None, 1)], got
            assert theirs == [(3, 30)], got
            assert hub.resyncs == 1
        finally:
            await hub.close()
