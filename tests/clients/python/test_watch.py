"""``watch()``, ``wait()`` and the sync wrappers against a live gateway and simulator."""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from pathlib import Path

import httpx
import pollcast_client as pc
import pytest
from pollcast_client import sync

from tests.clients.python.conftest import (
    create_sim_task,
    release_sim_tasks,
    stepped,
    until_watched,
)
from tests.integration.gateway_server import GatewayProcess, running_gateway, sim_config

FAST_RECONNECT = pc.Reconnect(cap_s=1.0, max_failures=60)


def seqs(events: list[pc.AnyEvent]) -> list[int]:
    return [e.seq for e in events if e.counts_for_resume]


async def test_watch_delivers_a_whole_timeline_in_order_and_stops_at_the_end(
    sim: str, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, sim, "videoproc", stepped(4, 0.3))
    with running_gateway(sim_config(sim)) as (base, _gw):
        events = [event async for event in pc.watch(base, task)]
        after_the_end = [event async for event in pc.watch(base, task, last_event_id=0)]
        nothing_new = [e async for e in pc.watch(base, task, last_event_id=events[-1].seq)]

    assert all(isinstance(e, pc.Event) for e in events)
    assert isinstance(events[0], pc.Snapshot) and events[0].event == "snapshot"
    numbered = seqs(events)
    assert numbered == list(range(numbered[0], numbered[-1] + 1))
    final = events[-1]
    assert isinstance(final, pc.StateChanged)
    assert final.state is pc.State.SUCCEEDED and final.terminal
    assert final.result is not None and final.result.urls
    assert final.result.urls[0].startswith(sim)
    assert [e.progress for e in events if isinstance(e, pc.ProgressUpdate)] == sorted(
        e.progress or 0 for e in events if isinstance(e, pc.ProgressUpdate)
    )
    # Resuming from 0 replays the whole history; from the terminal seq: 204, nothing.
    assert seqs(after_the_end) == list(range(1, final.seq + 1))
    assert nothing_new == []


async def test_watch_survives_a_kill_and_restart_without_gaps_or_duplicates(
    sim: str, client: httpx.AsyncClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = await create_sim_task(client, sim, "videoproc", stepped(9, 0.4, start=0.4))
    doc = sim_config(
        sim,
        backend={"kind": "local", "path": str(tmp_path / "s.db")},
        server={"retry_ms": 300},
    )
    gateway = GatewayProcess(doc, tmp_path).start()
    sent: list[str | None] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.headers.get("last-event-id"))

    reconnects: list[pc.Reconnecting] = []
    events: list[pc.AnyEvent] = []
    killed_after = 0
    restart: asyncio.Task[GatewayProcess] | None = None
    caplog.set_level(logging.DEBUG, logger="pollcast_client")
    try:
        async with (
            asyncio.timeout(40),
            httpx.AsyncClient(trust_env=False, event_hooks={"request": [record]}) as http,
            aclosing(
                pc.watch(
                    gateway.url,
                    task,
                    client=http,
                    reconnect=FAST_RECONNECT,
                    on_reconnect=reconnects.append,
                )
            ) as stream,
        ):
            async for event in stream:
                events.append(event)
                if restart is None and event.seq >= 2:
                    gateway.stop()  # SIGKILL: no drain, no goodbye
                    killed_after = len(events)
                    restart = asyncio.create_task(asyncio.to_thread(gateway.start))
        assert restart is not None
        await restart
    finally:
        gateway.stop()

    assert isinstance(events[0], pc.Snapshot)
    assert [e for e in events if isinstance(e, pc.Snapshot)] == [events[0]]
    numbered = seqs(events)
    assert numbered == list(range(events[0].seq, numbered[-1] + 1)), numbered
    assert events[-1].state is pc.State.SUCCEEDED and events[-1].terminal
    assert len(events) > killed_after  # the restarted gateway delivered the rest
    # It reconnected with Last-Event-ID = the last seq it had; delays honour the
    # server's retry (300 ms, doubling per failure) under the 1 s cap.
    last_before_kill = str(seqs(events[:killed_after])[-1])
    assert sent[0] is None and last_before_kill in sent[1:]
    assert reconnects and all(r.delay_s <= 1.0 for r in reconnects)
    assert reconnects[0].failures == 1 and reconnects[0].delay_s <= 0.6
    assert any("reconnecting" in r.message for r in caplog.records)


async def test_wait_and_the_sync_wrappers_return_the_terminal_event(
    sim: str, client: httpx.AsyncClient
) -> None:
    with running_gateway(sim_config(sim)) as (base, _gw):
        # Held until each wait has the task's first polled state: on a busy machine
        # the first poll can come a second after the task was made.
        ok = await create_sim_task(client, sim, "videoproc", stepped(2, 0.4), held=True)
        failing = await create_sim_task(
            client,
            sim,
            "ailab",
            [{"at": 0, "state": "running"}, {"at": 0.6, "state": "failed"}],
            held=True,
        )
        waits = asyncio.gather(pc.wait(base, ok, timeout=20), pc.wait(base, failing))
        for task in (ok, failing):
            await until_watched(client, base, task)
        await release_sim_tasks(client, sim, ok, failing)
        final, failed = await waits
        blocking = await asyncio.to_thread(sync.wait, base, ok, None, 20)
        iterated = await asyncio.to_thread(lambda: list(sync.watch_iter(base, ok)))
        endless = await create_sim_task(client, sim, "ailab", [{"at": 0, "state": "running"}])
        with pytest.raises(TimeoutError):
            await pc.wait(base, endless, timeout=0.5)

        def first_then_leave() -> pc.AnyEvent:
            events = sync.watch_iter(base, endless)
            first = next(events)
            events.close()  # must end the stream and its thread, not hang
            return first

        first = await asyncio.wait_for(asyncio.to_thread(first_then_leave), 10)
        with pytest.raises(pc.RequestRejected) as rejected:
            await pc.wait(base, "nosuchprovider:1", timeout=10)

    assert final.state is pc.State.SUCCEEDED and final.terminal and final.seq > 1
    assert failed.state is pc.State.FAILED and failed.terminal
    assert (blocking.seq, blocking.state, blocking.result) == (final.seq, final.state, final.result)
    assert [type(e) for e in iterated] == [pc.Snapshot] and iterated[0].terminal
    assert isinstance(first, pc.Snapshot) and first.task == endless and not first.terminal
    assert rejected.value.status == 404 and rejected.value.code == "unknown_provider"
