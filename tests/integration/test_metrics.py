"""``/metrics``: what operators see, and nothing they must not."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.sim.credentials import SIM_CREDENTIALS
from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse


def seqs_of(stream: list[dict[str, object]]) -> list[object]:
    return [e["seq"] for e in stream if e["event"] != "notice"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_polls_subscribers_events_and_faults(
    sim: str, client: httpx.AsyncClient
) -> None:
    steps = [
        {"at": 0, "state": "running", "progress": 10},
        {"at": 1.0, "state": "running", "progress": 50},
        {"at": 2.0, "state": "succeeded"},
    ]
    task = await create_sim_task(client, sim, "videoproc", steps)
    coins = await create_sim_task(
        client, sim, "tryon", [{"at": 0, "state": "queued", "position": 2}]
    )
    with running_gateway(sim_config(sim)) as (base, _gw):
        readers = [asyncio.create_task(read_sse(client, events_url(base, task))) for _ in range(3)]
        paid = asyncio.create_task(read_sse(client, events_url(base, coins), stop_after=2))
        paid_events = await asyncio.wait_for(paid, 10)
        await asyncio.sleep(0.3)
        during = samples((await client.get(f"{base}/metrics")).text)
        await client.post(
            f"{sim}/_sim/faults",
            json={"provider": "videoproc", "mode": "http500", "duration_s": 0.5},
        )
        streams = await asyncio.gather(*readers)
        paid_now = (await client.get(f"{base}/v1/tasks/{coins.replace(':', '/')}")).json()
        reply = await client.get(f"{base}/metrics")
    text = reply.text
    after = samples(text)

    assert reply.headers["content-type"].startswith("text/plain")
    assert during[("pollcast_subscribers", (("transport", "sse"),))] == 3
    assert after[("pollcast_subscribers", (("transport", "sse"),))] == 0
    ok = ("pollcast_upstream_requests_total", (("outcome", "ok"), ("provider", "videoproc")))
    assert after[ok] >= 3
    failed = (
        "pollcast_upstream_requests_total",
        (("outcome", "server"), ("provider", "videoproc")),
    )
    assert after[failed] >= 1
    assert after[("pollcast_notices_total", (("code", "upstream_server"),))] >= 1
    latency = ("pollcast_upstream_latency_seconds_count", (("provider", "videoproc"),))
    assert after[latency] == after[ok] + after[failed]
    # Three subscribers, one poll: two polls saved on every videoproc poll.
    saved = after[("pollcast_polls_saved_total", (("provider", "videoproc"),))]
    assert saved >= 2 * after[ok] - 2
    # Every event was published exactly once: the videoproc task's seqs up to its
    # terminal one and the tryon task's up to its latest. (The fault may hide the
    # 50 % step: counted from what arrived, not from the timeline.)
    assert [e["seq"] for e in streams[0] if e["event"] != "notice"][-1] == streams[0][-1]["seq"]
    assert all(
        [e["seq"] for e in s if e["event"] != "notice"] == seqs_of(streams[0]) for s in streams
    )
    published = streams[0][-1]["seq"] + paid_now["seq"]
    assert streams[0][-1]["terminal"] and published >= 3
    assert after[("pollcast_events_published_total", ())] == published
    # Each live event (after the first snapshot) was handed once to each subscriber
    # still listening: the three videoproc streams, and the tryon one until it hung up.
    live = sum(len(s) - 1 for s in streams) + len(paid_events) - 1
    assert after[("pollcast_events_delivered_total", ())] == live
    tryon_calls = after[
        ("pollcast_upstream_requests_total", (("outcome", "ok"), ("provider", "tryon")))
    ]
    # A paid call is counted as spent when it is sent (it is paid for whatever its
    # outcome) and in requests when its reply is in: a scrape while the tryon task's
    # one request is in flight sees one call more in the budget.
    spent = after[("pollcast_budget_spent_total", (("provider", "tryon"),))]
    assert any(abs(spent - 0.1 * calls) < 1e-9 for calls in (tryon_calls, tryon_calls + 1)), (
        spent,
        tryon_calls,
    )
    # Labels are bounded: no task ids, no credentials.
    assert task.partition(":")[2] not in text and coins.partition(":")[2] not in text
    for secret in (
        SIM_CREDENTIALS.ailab_api_key,
        SIM_CREDENTIALS.tryon_api_key,
        SIM_CREDENTIALS.aholo_app_secret,
        SIM_CREDENTIALS.genpic_private_key,
    ):
        assert secret not in text
