"""Upstream faults: the gateway keeps serving, backs off, says so, and recovers.

What the backoff policy decides (delays, jitter, Retry-After to the
millisecond, one delay per batch lane) is tested with a fake clock in
tests/unit/poller/; here a live gateway shows what only a live system can:
the fault is noticed, the simulator counts fewer requests, polling recovers.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    create_sim_task,
    events_url,
    release_sim_tasks,
    sim_stats,
    until_watched,
)
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse

BASE_S = 0.2
FAULT_S = 4.0
TIMEOUT_S = 0.3

# mode → (the notice it must cause, seconds each attempt costs besides the
# interval, how long the fault lasts). A timed-out attempt costs its timeout,
# so backoff needs a longer window to show against it.
MODES: dict[str, tuple[str, float, float]] = {
    "http500": ("upstream_server", 0.0, FAULT_S),
    "timeout": ("upstream_timeout", TIMEOUT_S, 7.0),
    "rate_limit": ("upstream_rate_limited", 0.0, FAULT_S),
    "malformed": ("upstream_malformed", 0.0, FAULT_S),
    "reset": ("upstream_network", 0.0, FAULT_S),
}


def config(sim: str) -> dict[str, Any]:
    return sim_config(
        sim,
        providers={
            "videoproc": {
                "interval_s": BASE_S,
                "max_interval_s": BASE_S,
                "timeout_s": TIMEOUT_S,
                "backoff_max_s": 1.5,
            }
        },
    )


async def _watch_through_fault(
    sim: str, client: httpx.AsyncClient, fault: dict[str, Any]
) -> tuple[list[dict[str, Any]], int, bool]:
    """Subscribe, inject ``fault``, return (events, requests during it, healthy)."""
    fault_s = fault["duration_s"]
    timeline = [
        {"at": 0, "state": "running", "progress": 10},
        {"at": fault_s + 3.0, "state": "running", "progress": 90},
        {"at": fault_s + 3.5, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "videoproc", timeline, held=True)
    with running_gateway(config(sim)) as (base, _gw):
        reader = asyncio.create_task(read_sse(client, events_url(base, task)))
        await until_watched(client, base, task)  # polled once, healthy
        await release_sim_tasks(client, sim, task)
        start = (await sim_stats(client, sim))["tasks"][task]
        await client.post(f"{sim}/_sim/faults", json={"provider": "videoproc", **fault})
        await asyncio.sleep(fault_s / 2)
        healthy = (await client.get(f"{base}/healthz")).status_code == 200
        healthy &= (await client.get(f"{base}/v1/providers")).status_code == 200
        await asyncio.sleep(fault_s / 2)
        during = (await sim_stats(client, sim))["tasks"][task] - start
        events = await asyncio.wait_for(reader, 30)
    return events, during, healthy


def _notices(events: list[dict[str, Any]], *, ignore_slow: bool) -> list[dict[str, Any]]:
    """The notices among ``events``; with ``ignore_slow``, without ``upstream_slow``
    notices and the ``upstream_recovered`` that ends each."""
    kept: list[dict[str, Any]] = []
    slow = False
    for event in events:
        if event["event"] != "notice":
            continue
        if ignore_slow and event["code"] == "upstream_slow":
            slow = True
        elif slow and event["code"] == "upstream_recovered":
            slow = False
        else:
            slow = False  # another fault took over from the slowness
            kept.append(event)
    return kept


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_fault_is_noticed_backed_off_and_recovered(
    mode: str, sim: str, client: httpx.AsyncClient
) -> None:
    code, attempt_s, fault_s = MODES[mode]
    fault = {"mode": mode, "probability": 1.0, "duration_s": fault_s, "retry_after_s": 1}
    events, during, healthy = await _watch_through_fault(sim, client, fault)

    assert healthy
    # A busy machine can make a healthy reply slow before the fault begins; an
    # ``upstream_slow`` notice then (and the recovery from it) is about the
    # machine, not the fault under test.
    notices = _notices(events, ignore_slow=code != "upstream_slow")
    assert [n["code"] for n in notices][:2] == [code, "upstream_recovered"], notices
    assert "retrying in" in notices[0]["message"]
    assert events[-1]["state"] == "succeeded" and events[-1]["terminal"]
    assert [e["progress"] for e in events if e["event"] == "progress"] == [90]
    # Polling at the base interval would have sent fault_s / (BASE_S + attempt) requests.
    naive = fault_s / (BASE_S + attempt_s)
    assert 1 <= during <= 0.75 * naive, f"{during} requests during the fault, naive {naive:.0f}"


async def test_slow_upstream_is_noticed_and_never_overlapped(
    sim: str, client: httpx.AsyncClient
) -> None:
    fault = {"mode": "slow", "probability": 1.0, "duration_s": FAULT_S, "delay_s": 0.25}
    events, during, healthy = await _watch_through_fault(sim, client, fault)
    assert healthy
    codes = [e["code"] for e in events if e["event"] == "notice"]
    assert codes[:2] == ["upstream_slow", "upstream_recovered"]
    assert events[-1]["state"] == "succeeded"
    # One request in flight per task: never more than the fault window allows.
    assert during <= FAULT_S / 0.25 + 1


def _limited(event: dict[str, Any]) -> bool:
    return event.get("code") == "upstream_rate_limited"


@pytest.mark.solo
async def test_retry_after_holds_polling_back_by_simulator_counts(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", [{"at": 0, "state": "running"}])
    with running_gateway(config(sim)) as (base, _gw):
        reader = asyncio.create_task(read_sse(client, events_url(base, task), until=_limited))
        await until_watched(client, base, task)  # polled once, healthy
        before = await sim_stats(client, sim)
        fault = {"provider": "videoproc", "mode": "rate_limit", "retry_after_s": 2}
        await client.post(f"{sim}/_sim/faults", json={**fault, "duration_s": 4.5})
        await asyncio.sleep(4.5)
        after = await sim_stats(client, sim)
        events = await asyncio.wait_for(reader, 10)
    during = after["tasks"][task] - before["tasks"][task]
    # Each 429 asks for 2 s: at most one request per 2 s of the 4.5 s window
    # (about 20 at the base interval).
    assert 1 <= during <= math.ceil(4.5 / 2), during
    assert "upstream_rate_limited" in [e.get("code") for e in events]


async def test_wrong_credentials_stop_after_a_few_tries(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "running"}])
    doc = sim_config(sim, providers={"ailab": {"api_key": "wrong-key", "backoff_max_s": 0.3}})
    with running_gateway(doc) as (base, _gw):
        events = await asyncio.wait_for(read_sse(client, events_url(base, task)), 20)
        await asyncio.sleep(1.0)
        stats = await sim_stats(client, sim)
    assert events[-1]["state"] == "failed" and events[-1]["terminal"]
    assert events[-1]["error"]["code"] == "upstream_auth"
    assert "upstream_auth" in [e.get("code") for e in events if e["event"] == "notice"]
    assert stats["tasks"][task] == 3  # then it stopped: no hammering
    assert "wrong-key" not in str(events)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _aholo_counts(client: httpx.AsyncClient, sim: str, base: str) -> dict[str, float]:
    """Simulator-counted aholo requests and ids, and the gateway's own counts."""
    stats = await sim_stats(client, sim)
    metrics = _samples((await client.get(f"{base}/metrics")).text)
    aholo = {k: v for k, v in stats["tasks"].items() if k.startswith("aholo:")}
    return {
        "requests": stats["requests"].get("aholo", 0),
        "ids": sum(aholo.values()),
        "faults": stats["faults"].get("aholo", 0),
        "gw_server": metrics.get(
            ("pollcast_upstream_requests_total", (("outcome", "server"), ("provider", "aholo"))),
            0.0,
        ),
        "gw_ok": metrics.get(
            ("pollcast_upstream_requests_total", (("outcome", "ok"), ("provider", "aholo"))), 0.0
        ),
        "gw_saved": metrics.get(("pollcast_polls_saved_total", (("provider", "aholo"),)), 0.0),
    }


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


async def test_a_batch_outage_polls_less_and_keeps_every_batch_whole(
    sim: str, client: httpx.AsyncClient
) -> None:
    n = 100
    tasks = await asyncio.gather(
        *(create_sim_task(client, sim, "aholo", [{"at": 0, "state": "running"}]) for _ in range(n))
    )
    aholo = {"interval_s": 0.2, "max_interval_s": 0.2, "backoff_max_s": 3.0}
    normal_s, outage_s = 5.0, 8.0
    with running_gateway(sim_config(sim, providers={"aholo": aholo})) as (base, _gw):
        for task in tasks:
            reply = await client.post(
                f"{base}/v1/tasks", json={"provider": "aholo", "task_id": task.partition(":")[2]}
            )
            assert reply.status_code == 201, reply.text
        await asyncio.sleep(1.5)  # a round or two to fall into step
        t0 = await _aholo_counts(client, sim, base)
        await asyncio.sleep(normal_s)
        t1 = await _aholo_counts(client, sim, base)
        fault = {"provider": "aholo", "mode": "http500", "probability": 1.0}
        await client.post(f"{sim}/_sim/faults", json={**fault, "duration_s": outage_s})
        await asyncio.sleep(outage_s)
        t2 = await _aholo_counts(client, sim, base)
        # The longest lane backoff is 3 s: by then the lane has retried and recovered.
        await asyncio.sleep(4.5)
        t3 = await _aholo_counts(client, sim, base)
    normal, outage, after = _delta(t0, t1), _delta(t1, t2), _delta(t2, t3)
    assert normal["requests"] >= 10 and normal["faults"] == 0
    # Fewer than half the requests during the outage, each still naming every task.
    rate, outage_rate = normal["requests"] / normal_s, outage["requests"] / outage_s
    assert outage["requests"] >= 1 and outage_rate < 0.5 * rate, (normal, outage)
    assert normal["ids"] == n * normal["requests"], normal
    assert outage["ids"] == n * outage["requests"], outage
    # The gateway counted the same requests as failed, each saving 99 polls.
    assert outage["gw_server"] == outage["faults"] >= outage["requests"] - 1
    assert outage["gw_saved"] == (n - 1) * (outage["gw_server"] + outage["gw_ok"])
    # Recovered, and the batch whole from its first request on.
    assert after["gw_ok"] >= 1 and after["ids"] == n * after["requests"], after


async def test_polling_resumes_after_the_state_file_was_locked(
    sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = tmp_path / "state.db"
    doc = sim_config(
        sim,
        backend={"path": str(path)},
        providers={"ailab": {"result_ttl_s": 2.0}},
    )
    done = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "succeeded"}])
    # Quiet while the file is locked (nothing to write), then progress every
    # half second: the gateway writes again once the lock is gone.
    steps = [{"at": 0, "state": "running", "progress": 0}]
    steps += [{"at": 15 + i / 2, "state": "running", "progress": i} for i in range(1, 60)]
    busy = await create_sim_task(client, sim, "videoproc", steps)
    with running_gateway(doc) as (base, gw):
        gw.poller.purge_every_s = 0.2  # purge the finished task while the file is locked
        provider, _, task_id = busy.partition(":")
        reply = await client.post(
            f"{base}/v1/tasks", json={"provider": provider, "task_id": task_id}
        )
        assert reply.status_code == 201
        # The finished task's result expires 2 s from now, under the lock below.
        await read_sse(client, events_url(base, done))
        assert (await client.get(f"{base}/readyz")).status_code == 200

        # Another connection holds the state file in an exclusive transaction
        # for longer than the expiry plus SQLite's busy timeout (5 s): the
        # gateway's purge of that result fails.
        locker = sqlite3.connect(str(path), timeout=0, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            await asyncio.sleep(10.0)
        finally:
            locker.execute("ROLLBACK")
            locker.close()

        ready = False
        for _ in range(200):
            ready = (await client.get(f"{base}/readyz")).status_code == 200
            if ready:
                break
            await asyncio.sleep(0.1)
        metrics = _samples((await client.get(f"{base}/metrics")).text)
        polled = (await sim_stats(client, sim))["tasks"][busy]
        await asyncio.sleep(1.5)
        later = (await sim_stats(client, sim))["tasks"][busy]
        # The upstream reports progress from 15 s on: it must reach the store.
        for _ in range(200):
            snapshot = (await client.get(f"{base}/v1/tasks/{provider}/{task_id}")).json()
            if snapshot["progress"] >= 1:
                break
            await asyncio.sleep(0.1)
    failures = metrics.get(("pollcast_loop_failures_total", (("loop", "housekeeping"),)), 0.0)
    assert failures >= 1  # the purge failed under the lock: counted...
    assert ready  # ...retried until it worked: every loop is healthy again
    assert later > polled  # polling goes on after the lock
    assert snapshot["progress"] >= 1  # and its changes are stored again


async def test_a_stopped_poller_loop_turns_readyz_to_503_naming_it(
    sim: str, client: httpx.AsyncClient
) -> None:
    with running_gateway(sim_config(sim)) as (base, gw):
        assert (await client.get(f"{base}/readyz")).status_code == 200
        task = gw.poller.loops["housekeeping"].task
        assert task is not None
        task.get_loop().call_soon_threadsafe(task.cancel)
        reply = None
        for _ in range(50):
            reply = await client.get(f"{base}/readyz")
            if reply.status_code == 503:
                break
            await asyncio.sleep(0.05)
    assert reply is not None and reply.status_code == 503
    assert reply.json() == {"status": "not ready", "reason": "poller loop housekeeping stopped"}
