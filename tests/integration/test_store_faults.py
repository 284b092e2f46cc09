"""The local store on a filesystem that refuses writes: at start, and mid-task.

A real ``pollcast serve`` process keeps its state file on a small tmpfs of
its own. The tests need root (``mount``); they skip, saying why, without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import GatewayProcess, sim_config, to_toml

pytestmark = pytest.mark.integration

SUBSCRIBERS_PER_TASK = 2


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "16M") -> Iterator[Path]:
    where.mkdir()
    # A full disk is a fault the suite must show, not pass over: without the
    # mount these tests fail and say why.
    if os.geteuid() != 0:
        pytest.fail("a full filesystem needs a small tmpfs, and mounting one needs root")
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    if done.returncode != 0:
        pytest.fail(f"mount -t tmpfs failed: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    out.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def store_config(sim: str, state: Path) -> dict[str, Any]:
    return sim_config(sim, backend={"kind": "local", "path": str(state)})


def steps(start: float, gap: float, n: int, end: float) -> list[dict[str, Any]]:
    """running 10 %, 20 %, … every ``gap`` s from ``start``, succeeded at ``end``."""
    timeline: list[dict[str, Any]] = [
        {"at": start + i * gap, "state": "running", "progress": 5 * (i + 1)} for i in range(n)
    ]
    timeline.append({"at": end, "state": "succeeded"})
    return timeline


class Subscriber:
    """One SSE subscriber, recording every event until the stream ends."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read(client, url))

    async def _read(self, client: httpx.AsyncClient, url: str) -> None:
        async with aconnect_sse(client, "GET", url) as source:
            source.response.raise_for_status()
            async for sse in source.aiter_sse():
                if sse.data:
                    self.events.append(json.loads(sse.data))

    def codes(self) -> list[str]:
        return [e["code"] for e in self.events if e["event"] == "notice"]

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events if e["event"] in ("snapshot", "state", "progress")]


async def wait_for(what: str, check: Any, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def serve_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# -- (a) at start ------------------------------------------------------------------


def test_a_read_only_state_file_stops_serve_with_one_clear_line(sim: str, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "store", "1M") as store:
        state = store / "state.db"
        state.write_bytes(b"")
        done = _mount("-o", "remount,ro", str(store))
        assert done.returncode == 0, done.stderr
        doc = store_config(sim, state)
        doc["server"] = {"host": "127.0.0.1", "port": 1}  # never reached
        config = tmp_path / "pollcast.toml"
        config.write_text(to_toml(doc))
        result = serve_once(config)

    assert result.returncode not in (0, None)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(state) in lines[0]
    assert "Read-only file system" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_full_disk_at_start_stops_serve_with_one_clear_line(sim: str, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "store", "1M") as store:
        fill(store)
        state = store / "state.db"
        config = tmp_path / "pollcast.toml"
        config.write_text(to_toml(store_config(sim, state)))
        result = serve_once(config)

    assert result.returncode not in (0, None)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(state) in lines[0] and "full" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_directory_that_is_not_there_stops_serve_with_one_clear_line(
    sim: str, tmp_path: Path
) -> None:
    state = tmp_path / "missing" / "state.db"
    doc = store_config(sim, state)
    config = tmp_path / "pollcast.toml"
    config.write_text(to_toml(doc))
    result = serve_once(config)

    assert result.returncode not in (0, None)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(state) in lines[0] and "No such file or directory" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


# -- (b), (c) mid-task: the store stops taking writes, then takes them again ------------------


# Mid-task, the store stops taking writes by filling its filesystem. A read-only
# remount cannot stand in: Linux refuses it (EBUSY) while the gateway holds the
# state file open for writing, so only the read-only state file at start is tested.
Outage = Callable[[Path], Callable[[], None]]


def disk_full(store: Path) -> Callable[[], None]:
    filler = fill(store)
    return filler.unlink


async def test_a_full_disk_mid_task_is_told_and_healed_without_a_gap(
    sim: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    await _outage(sim, client, tmp_path, disk_full)


async def _outage(sim: str, client: httpx.AsyncClient, tmp_path: Path, outage: Outage) -> None:
    with small_tmpfs(tmp_path / "store") as store:
        gateway = GatewayProcess(store_config(sim, store / "state.db"), tmp_path).start()
        subscribers: list[Subscriber] = []
        try:
            await _break_and_heal(sim, client, gateway, store, outage, subscribers)
        finally:
            for sub in subscribers:
                sub.task.cancel()
            await asyncio.gather(*(s.task for s in subscribers), return_exceptions=True)
            gateway.stop()


async def _break_and_heal(
    sim: str,
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    store: Path,
    outage: Outage,
    subscribers: list[Subscriber],
) -> None:
    base = gateway.url
    # Each task moves every 0.5 s and succeeds at 9 s: inside the outage below.
    created = time.monotonic()
    tasks = [
        await create_sim_task(client, sim, "videoproc", steps(0.0, 0.5, 16, 9.0)) for _ in range(3)
    ]
    subscribers.extend(
        Subscriber(client, events_url(base, task))
        for task in tasks
        for _ in range(SUBSCRIBERS_PER_TASK)
    )

    async def all_moving() -> bool:
        return all(len(s.seqs()) >= 2 for s in subscribers)

    await wait_for("every subscriber to see the tasks move", all_moving)
    heal = outage(store)

    async def not_ready() -> bool:
        return (await client.get(f"{base}/readyz")).status_code == 503

    await wait_for("/readyz to turn 503", not_ready)
    reason = (await client.get(f"{base}/readyz")).json()["reason"]
    assert "state file" in reason and "state.db" in reason

    async def all_told() -> bool:
        return all("store_unavailable" in s.codes() for s in subscribers)

    await wait_for("every subscriber to get store_unavailable", all_told)

    refused = await client.post(
        f"{base}/v1/tasks", json={"provider": "videoproc", "task_id": "during-outage"}
    )
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["code"] == "backend_unavailable"
    assert "state.db" not in refused.text  # paths stay in the log

    # Hold the outage past the tasks' terminal step (9 s), then heal the store.
    await asyncio.sleep(max(0.0, created + 10.5 - time.monotonic()))
    assert await not_ready()
    assert not any(e.get("terminal") for s in subscribers for e in s.events)
    heal()

    await asyncio.wait_for(asyncio.gather(*(s.task for s in subscribers)), timeout=30)
    assert (await client.get(f"{base}/readyz")).status_code == 200
    for sub in subscribers:
        seqs = sub.seqs()
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no gap, no duplicate
        assert sub.events[-1]["event"] == "state" and sub.events[-1]["terminal"] is True
        assert sub.events[-1]["state"] == "succeeded"
        assert sub.codes().count("store_unavailable") == 1
    # What the subscribers saw is what the store kept: a full replay matches.
    for task in tasks:
        replay = Subscriber(client, events_url(base, task) + "?last_event_id=0")
        await asyncio.wait_for(replay.task, timeout=10)
        stored = replay.seqs()
        assert stored == list(range(1, stored[-1] + 1))
        seen = subscribers[tasks.index(task) * SUBSCRIBERS_PER_TASK].events
        live = {e["seq"]: e for e in seen if e["event"] in ("state", "progress")}
        kept = {e["seq"]: e for e in replay.events if e["seq"] in live}
        assert kept == live
