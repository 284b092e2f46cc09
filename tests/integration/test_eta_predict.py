"""eta_s, predictive polling and traces on a live gateway against the live simulator.

* a videoproc task with steady progress: its events' ``eta_s`` fall, close to
  the timeline's real remaining time;
* the same tasks on a fixed and on a predictive lane: the predictive one costs
  under half the upstream requests (as the simulator counted them) and still
  sees every end within 1.5 base intervals; a predictive lane with a wrong
  ``typical_duration_s`` drops it at the first end and sees the later ends in
  time;
* traces: a webhook delivery carries the attempt span's W3C ``traceparent`` to
  the receiver, and no span attribute holds a credential or an upstream URL.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import tracing
from gateway.core.eta import ETA_SLIP_FRACTION, ETA_SLIP_MIN_S
from gateway.sim.credentials import SIM_CREDENTIALS
from tests.integration.conftest import create_sim_task, events_url, sim_stats
from tests.integration.gateway_server import running_gateway, sim_config
from tests.integration.readers import read_sse
from tests.integration.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

WEBHOOKS: dict[str, Any] = {
    "secret": "whsec_" + "aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQtMzItYnl0ZXM=",
    "allowed_hosts": ["127.0.0.1"],
    "allow_private": True,
    "retry_base_s": 0.2,
    "retry_max_s": 1.0,
    "poll_s": 0.1,
    "timeout_s": 2.0,
}


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def _sim_task(
    client: httpx.AsyncClient, sim: str, task_id: str, timeline: list[dict[str, Any]]
) -> float:
    """Create a videoproc task on the simulator; the wall time it was created at (at most)."""
    reply = await client.post(
        f"{sim}/_sim/tasks",
        json={"provider": "videoproc", "task_id": task_id, "timeline": timeline},
    )
    reply.raise_for_status()
    return time.time()


async def test_steady_progress_gives_a_falling_eta_close_to_the_real_remaining_time(
    sim: str, client: httpx.AsyncClient
) -> None:
    # 10 % a second for 10 s, then done.
    timeline = [{"at": float(i), "state": "running", "progress": i * 10} for i in range(10)]
    timeline.append({"at": 10.0, "state": "succeeded"})
    with running_gateway(sim_config(sim)) as (base, _gw):
        created = await _sim_task(client, sim, "eta-steady", timeline)
        events = await read_sse(client, events_url(base, "videoproc:eta-steady"))
    end = created + 10.0
    assert events[-1]["terminal"] and events[-1]["eta_s"] is None
    estimates = [
        (e["progress"], _epoch(e["observed_at"]), e["eta_s"])
        for e in events
        if e["_event"] in ("progress", "state") and not e["terminal"]
    ]
    timed = [(p, at, eta) for p, at, eta in estimates if eta is not None]
    assert len(timed) >= 6, estimates  # from the second progress reading on
    assert estimates[0][2] is None  # one sample: no estimate
    for progress, at, eta in timed:
        real = end - at
        assert abs(eta - real) <= 1.0 + 0.3 * real, (progress, eta, real, estimates)
    for (_, at0, eta0), (_, at1, eta1) in itertools.pairwise(timed):
        slip = max(ETA_SLIP_MIN_S, ETA_SLIP_FRACTION * eta0)
        assert at1 + eta1 <= at0 + eta0 + slip  # the end never moves later beyond the slip
    assert timed[-1][2] < timed[0][2]  # and it counts down


async def test_predictive_polling_costs_fewer_requests_and_still_sees_the_end_in_time(
    sim: str, client: httpx.AsyncClient
) -> None:
    # Four tasks on each lane, ending within the prior's bulk (its 4 % quantile is
    # 7.0 s): the predictive lane polls every 4 s until then, every 0.75 s after.
    base_s, lengths = 0.5, (8.0, 10.0, 12.0, 14.0)
    creds = SIM_CREDENTIALS.provider_credentials(sim)["videoproc"]
    common = {"kind": "videoproc", **creds, "interval_s": base_s, "timeout_s": 2.0}
    doc = sim_config(sim)
    doc["providers"]["pfixed"] = {**common, "max_interval_s": base_s}
    doc["providers"]["ppredict"] = {
        **common,
        "max_interval_s": 4.0,
        "polling": "predictive",
        "typical_duration_s": [8.0, 16.0],
    }
    with running_gateway(doc) as (base, _gw):
        ends: dict[tuple[str, str], float] = {}
        for lane in ("pfixed", "ppredict"):
            for length in lengths:
                task_id = f"long-{lane}-{length:g}"
                timeline = [
                    {"at": 0.0, "state": "running"},
                    {"at": length, "state": "succeeded"},
                ]
                ends[lane, task_id] = await _sim_task(client, sim, task_id, timeline) + length
                reply = await client.post(
                    f"{base}/v1/tasks", json={"provider": lane, "task_id": task_id}
                )
                assert reply.status_code == 201, reply.text
        finals: dict[tuple[str, str], dict[str, Any]] = {}
        deadline = time.monotonic() + max(lengths) + 20
        while len(finals) < len(ends) and time.monotonic() < deadline:
            for lane, task_id in ends:
                body = (await client.get(f"{base}/v1/tasks/{lane}/{task_id}")).json()
                if body["terminal"]:
                    finals[lane, task_id] = body
            await asyncio.sleep(0.2)
    assert set(finals) == set(ends)
    counted = (await sim_stats(client, sim))["tasks"]
    requests = {
        lane: sum(counted[f"videoproc:{t}"] for ln, t in ends if ln == lane)
        for lane in ("pfixed", "ppredict")
    }
    assert requests["ppredict"] <= 0.5 * requests["pfixed"], requests
    for key, end in ends.items():
        assert finals[key]["state"] == "succeeded"
        delay = _epoch(finals[key]["observed_at"]) - end
        # Seen within 1.5 base intervals of the end (plus the event loop's own lag).
        assert delay <= 1.5 * base_s + 0.15, (key, delay)


async def test_a_wrong_prior_is_dropped_at_the_first_end_and_the_rest_are_seen_in_time(
    sim: str, client: httpx.AsyncClient
) -> None:
    # The prior says a minute or two; the tasks take seconds. The first end (3 s,
    # seen at the 4 s poll) contradicts it: from then on the lane polls every
    # 0.75 s, so the later ends are seen within 1.5 base intervals.
    base_s, first, later = 0.5, 3.0, (9.0, 10.0, 11.0)
    creds = SIM_CREDENTIALS.provider_credentials(sim)["videoproc"]
    doc = sim_config(sim)
    doc["providers"]["pwrong"] = {
        "kind": "videoproc",
        **creds,
        "interval_s": base_s,
        "timeout_s": 2.0,
        "max_interval_s": 4.0,
        "polling": "predictive",
        "typical_duration_s": [60.0, 120.0],
    }
    with running_gateway(doc) as (base, _gw):
        ends: dict[str, float] = {}
        for length in (first, *later):
            task_id = f"wrong-{length:g}"
            timeline = [{"at": 0.0, "state": "running"}, {"at": length, "state": "succeeded"}]
            ends[task_id] = await _sim_task(client, sim, task_id, timeline) + length
            reply = await client.post(
                f"{base}/v1/tasks", json={"provider": "pwrong", "task_id": task_id}
            )
            assert reply.status_code == 201, reply.text
        finals: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + max(later) + 20
        while len(finals) < len(ends) and time.monotonic() < deadline:
            for task_id in ends:
                body = (await client.get(f"{base}/v1/tasks/pwrong/{task_id}")).json()
                if body["terminal"]:
                    finals[task_id] = body
            await asyncio.sleep(0.2)
    assert set(finals) == set(ends)
    delays = {t: _epoch(finals[t]["observed_at"]) - end for t, end in ends.items()}
    for length in later:
        assert delays[f"wrong-{length:g}"] <= 1.5 * base_s + 0.15, delays


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider=provider)
    try:
        yield exporter
    finally:
        tracing.configure(env={})
        provider.shutdown()


async def test_traces_reach_the_webhook_receiver_and_hold_no_secret(
    sim: str, client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    quick = [{"at": 0, "state": "running", "progress": 10}, {"at": 0.5, "state": "succeeded"}]
    creds = SIM_CREDENTIALS.provider_credentials(sim)
    with (
        Receiver() as receiver,
        running_gateway(sim_config(sim, webhooks=WEBHOOKS)) as (base, _gw),
    ):
        tasks = [await create_sim_task(client, sim, kind, quick) for kind in creds]
        for task in tasks:
            provider, _, task_id = task.partition(":")
            body: dict[str, Any] = {"provider": provider, "task_id": task_id}
            if provider == "videoproc":
                body["webhook"] = {"url": receiver.url}
            reply = await client.post(f"{base}/v1/tasks", json=body)
            assert reply.status_code == 201, reply.text
        await receiver.wait_for(accepted=1, timeout_s=20)
        for task in tasks:
            await read_sse(client, events_url(base, task))  # ends with the terminal event
    finished = spans.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    assert {"pollcast.poll_round", "pollcast.upstream_request", "pollcast.commit"} <= set(by_name)
    requests = by_name["pollcast.upstream_request"]
    assert {s.attributes["pollcast.provider"] for s in requests} >= set(creds)
    assert all(s.attributes["pollcast.outcome"] == "ok" for s in requests)
    assert all(s.attributes["pollcast.batch_size"] >= 1 for s in requests)
    assert all(s.attributes["pollcast.stored"] >= 1 for s in by_name["pollcast.commit"])
    # The delivery's traceparent is the attempt span's own.
    (delivery,) = receiver.accepted
    (attempt,) = [
        s for s in by_name["pollcast.webhook_attempt"] if s.attributes["pollcast.outcome"] == 204
    ]
    _, trace_id, span_id, _ = delivery.headers["traceparent"].split("-")
    assert int(trace_id, 16) == attempt.context.trace_id
    assert int(span_id, 16) == attempt.context.span_id
    assert attempt.attributes["pollcast.webhook.id"] == delivery.headers["webhook-id"]
    # No credential, upstream URL or receiver URL in any attribute.
    secrets = {v for table in creds.values() for v in table.values()}
    secrets |= {sim.removeprefix("http://"), receiver.url, WEBHOOKS["secret"]}
    for span in finished:
        for key, value in (span.attributes or {}).items():
            text = f"{key}={value}"
            assert not any(secret in text for secret in secrets), (span.name, text)
            assert "http" not in str(value), (span.name, text)
