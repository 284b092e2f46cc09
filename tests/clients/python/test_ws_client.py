"""The multiplexed WebSocket client against a live gateway and simulator."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import httpx
import pollcast_client as pc
import pytest

from tests.clients.python.conftest import create_sim_task, stepped
from tests.integration.gateway_server import GatewayProcess, running_gateway, sim_config

FAST_RECONNECT = pc.Reconnect(base_s=0.2, cap_s=1.0, max_failures=60)


def by_task(events: list[pc.AnyEvent]) -> dict[str, list[pc.AnyEvent]]:
    out: dict[str, list[pc.AnyEvent]] = {}
    for event in events:
        out.setdefault(event.task, []).append(event)
    return out


async def test_reconnects_and_resubscribes_with_since_after_a_kill(
    sim: str, client: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tasks = [
        await create_sim_task(client, sim, "videoproc", stepped(9, 0.4, start=0.4)),
        await create_sim_task(
            client,
            sim,
            "ailab",
            [
                {"at": 0, "state": "queued"},
                {"at": 1.0, "state": "running"},
                {"at": 4.5, "state": "succeeded"},
            ],
        ),
        await create_sim_task(
            client,
            sim,
            "aholo",
            [
                {"at": 0, "state": "queued"},
                {"at": 1.5, "state": "running"},
                {"at": 5.0, "state": "failed", "message": "reconstruction diverged"},
            ],
        ),
    ]
    doc = sim_config(sim, backend={"kind": "local", "path": str(tmp_path / "s.db")})
    gateway = GatewayProcess(doc, tmp_path).start()
    caplog.set_level(logging.DEBUG, logger="pollcast_client")
    events: list[pc.AnyEvent] = []
    held: dict[str, int] = {}
    restart: asyncio.Task[GatewayProcess] | None = None
    try:
        async with asyncio.timeout(40), pc.connect(gateway.url, reconnect=FAST_RECONNECT) as ws:
            await ws.subscribe(tasks)
            assert ws.tasks == tasks
            async for event in ws:
                events.append(event)
                if restart is None and event.task == tasks[0] and event.seq >= 2:
                    held = {t: e[-1].seq for t, e in by_task(events).items() if not e[-1].terminal}
                    gateway.stop()  # SIGKILL
                    restart = asyncio.create_task(asyncio.to_thread(gateway.start))
            reconnects = ws.reconnects
        assert restart is not None
        await restart
    finally:
        gateway.stop()

    assert reconnects == 1
    streams = by_task(events)
    assert set(streams) == set(tasks)
    for task, got in streams.items():
        assert isinstance(got[0], pc.Snapshot), task
        assert [e for e in got if isinstance(e, pc.Snapshot)] == [got[0]], task
        numbered = [e.seq for e in got if e.counts_for_resume]
        assert numbered == list(range(got[0].seq, numbered[-1] + 1)), (task, numbered)
        assert got[-1].terminal and [e for e in got if e.terminal] == [got[-1]], task
    assert [streams[t][-1].state for t in tasks] == [
        pc.State.SUCCEEDED,
        pc.State.SUCCEEDED,
        pc.State.FAILED,
    ]
    # After the reconnect it subscribed again, resuming each unfinished task
    # from the last seq it had received: at least what the loop above had seen
    # when the gateway was killed (frames already read but not yet iterated
    # count too), and the streams above show nothing was lost or repeated.
    subscribes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("subscribe")]
    assert len(subscribes) == 2, subscribes
    assert held and tasks[0] in held
    for task, seq in held.items():
        found = re.search(rf"'{re.escape(task)}': (\d+)\b", subscribes[1])
        if found is None:
            # Its terminal event had already arrived (not yet iterated): done, not resumed.
            assert task != tasks[0] or held[task] < streams[task][-1].seq, subscribes[1]
            continue
        assert seq <= int(found.group(1)) < streams[task][-1].seq, (task, seq, subscribes[1])


async def test_ping_unsubscribe_and_refused_subscriptions(
    sim: str, client: httpx.AsyncClient
) -> None:
    kept = await create_sim_task(client, sim, "videoproc", stepped(2, 0.3))
    dropped = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "running"}])
    with running_gateway(sim_config(sim)) as (base, _gw):
        async with asyncio.timeout(20), pc.connect(base) as ws:
            rtt = await ws.ping()
            with pytest.raises(pc.SubscribeRejected) as refused:
                await ws.subscribe([kept, "nosuchprovider:1", dropped])
            assert ws.tasks == [kept, dropped]
            await ws.unsubscribe([dropped])
            events = [event async for event in ws]  # ends: every remaining task ended

    assert 0 < rtt < 5
    assert set(refused.value.rejected) == {"nosuchprovider:1"}
    assert refused.value.code == "unknown_provider"
    # Even the snapshot of the dropped task, already received, is not delivered.
    assert {e.task for e in events} == {kept}
    assert isinstance(events[0], pc.Snapshot)
    assert events[-1].state is pc.State.SUCCEEDED and events[-1].terminal
