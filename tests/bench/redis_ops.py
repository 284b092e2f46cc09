"""``python -m tests.bench.redis_ops``: Redis operations per poll, per commit, per subscribe.

Starts a throwaway ``redis-server``, the simulator and gateway processes on
the Redis backend, runs known workloads and reads ``INFO commandstats``
(``CONFIG RESETSTAT`` before each). Commands run inside a Lua script are
counted under their own names as well as the ``evalsha`` that ran them, so
``ops_*`` counts every command Redis executed and ``evalsha_*`` the scripts
among them. Then ``redis-benchmark`` measures
what one Redis does per second on this machine, for the ceilings.

Phases (one node, then ``--nodes`` nodes, default 3):

* subscribe: more subscribers join tasks that are already polled (ailab,
  with a long interval so that no poll falls into the window);
* poll: tasks that do not change, polled every ``interval_s``: a batch
  provider (aholo, 100 ids a request) and a single-task one (videoproc);
* commit: videoproc tasks whose progress changes at every poll; the ops of
  a commit are what it costs beyond the single-task poll.

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.integration.conftest import create_sim_task, events_url, sim_stats
from tests.integration.gateway_server import GatewayProcess, sim_config
from tests.integration.sim_server import running_sim
from tests.redis_server import RedisServer

GRACE_S = 1.0  # a phase's tasks stop being polled this long after its streams close
_INTERNAL = {"info", "config", "ping", "client", "hello", "select", "command"}


def commandstats(r: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = r.info("commandstats")
    out: dict[str, int] = {}
    for name, row in stats.items():
        cmd = name.removeprefix("cmdstat_")
        if cmd.split("|")[0] not in _INTERNAL:
            out[cmd] = int(row["calls"])
    return out


# State and progress events the benchmark's subscribers received, all streams together.
DELIVERED = [0]


async def open_streams(client: httpx.AsyncClient, urls: list[str]) -> list[asyncio.Task[None]]:
    """Open SSE streams; return once each has received its first bytes."""
    started: list[asyncio.Future[None]] = []

    async def read(url: str, first: asyncio.Future[None]) -> None:
        with contextlib.suppress(httpx.HTTPError):
            async with client.stream("GET", url) as reply:
                async for line in reply.aiter_lines():
                    if not first.done():
                        first.set_result(None)
                    if line in ("event: state", "event: progress"):
                        DELIVERED[0] += 1
        if not first.done():
            first.set_result(None)

    loop = asyncio.get_running_loop()
    readers = []
    for url in urls:
        first = loop.create_future()
        started.append(first)
        readers.append(asyncio.create_task(read(url, first)))
    await asyncio.wait_for(asyncio.gather(*started), 60)
    return readers


async def close_streams(readers: list[asyncio.Task[None]]) -> None:
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


async def phase(r: redis.Redis, seconds: float, work: Any = None) -> tuple[dict[str, int], float]:
    r.config_resetstat()
    started = time.monotonic()
    if work is not None:
        await work
    else:
        await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    return commandstats(r), elapsed


async def run_nodes(
    sim: str,
    redis_url: str,
    workdir: Path,
    nodes: int,
    *,
    tasks: int,
    subscribers: int,
    window_s: float,
    interval_s: float,
    shards: int,
) -> dict[str, Any]:
    r = redis.Redis.from_url(redis_url)
    result: dict[str, Any] = {"nodes": nodes, "schedule_shards": shards}
    limits = httpx.Limits(max_connections=5000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
        # -- subscribe: long interval, tasks already followed ------------------
        slow = {"interval_s": 60.0, "max_interval_s": 60.0}
        doc = sim_config(
            sim,
            providers={
                "ailab": slow,
                "aholo": {"interval_s": interval_s, "max_interval_s": interval_s},
                "videoproc": {
                    "interval_s": interval_s,
                    "max_interval_s": interval_s,
                    "rate_per_s": 10_000,  # measure polls, not the rate limit
                    "concurrency": 64,
                },
            },
            backend={
                "kind": "redis",
                "url": redis_url,
                "prefix": f"ops{nodes}",
                "schedule_shards": shards,
            },
            polling={"grace_s": GRACE_S},
        )
        procs = []
        for i in range(nodes):
            d = workdir / f"n{nodes}-{i}"
            d.mkdir(parents=True, exist_ok=True)
            procs.append(GatewayProcess(doc, d).start())
        try:
            quiet = [{"at": 0, "state": "running"}, {"at": 3600, "state": "succeeded"}]
            vp = [await create_sim_task(client, sim, "ailab", quiet) for _ in range(20)]
            warm = await open_streams(
                client, [events_url(procs[i % nodes].url, t) for i, t in enumerate(vp)]
            )
            await asyncio.sleep(1.0)
            urls = [events_url(procs[i % nodes].url, vp[i % len(vp)]) for i in range(subscribers)]
            holder: list[list[asyncio.Task[None]]] = []

            async def join() -> None:
                holder.append(await open_streams(client, urls))

            stats, elapsed = await phase(r, 0, join())
            result["subscribe"] = {
                "subscribers": subscribers,
                "seconds": round(elapsed, 2),
                "commands": stats,
                "ops_per_subscribe": round(sum(stats.values()) / subscribers, 2),
                "evalsha_per_subscribe": round(stats.get("evalsha", 0) / subscribers, 2),
            }
            await close_streams(holder[0] + warm)

            # -- poll: tasks that never change ------------------------------------
            for name, provider in (("poll_batch", "aholo"), ("poll_single", "videoproc")):
                ids = [await create_sim_task(client, sim, provider, quiet) for _ in range(tasks)]
                result[name] = await measure(
                    r, client, sim, procs, provider, ids, window_s=window_s, interval_s=interval_s
                )

            # -- commit: tasks whose progress moves at every poll ---------------
            steps = [{"at": 0, "state": "running", "progress": 0}] + [
                {"at": round(k * interval_s, 3), "state": "running", "progress": k % 100}
                for k in range(1, int(8 * window_s / interval_s))
            ]
            moving = [await create_sim_task(client, sim, "videoproc", steps) for _ in range(tasks)]
            row = await measure(
                r, client, sim, procs, "videoproc", moving, window_s=window_s, interval_s=interval_s
            )
            # Beyond a poll without a change; the schedule reads (zrange, which
            # vary with how often the lanes look) left out of both.
            per_poll = result["poll_single"]["other_ops_per_poll"]
            total = row["other_ops_per_poll"] * row["task_polls"]
            row["ops_per_commit"] = round(
                (total - per_poll * row["task_polls"]) / max(1, row["events_committed"]), 2
            )
            result["commit"] = row
        finally:
            for p in procs:
                p.stop()
    return result


async def measure(
    r: redis.Redis,
    client: httpx.AsyncClient,
    sim: str,
    procs: list[GatewayProcess],
    provider: str,
    ids: list[str],
    *,
    window_s: float,
    interval_s: float,
) -> dict[str, Any]:
    """Subscribe to ``ids`` (spread over the nodes), let polling settle, measure a window."""
    n = len(procs)
    warm = await open_streams(client, [events_url(procs[i % n].url, t) for i, t in enumerate(ids)])
    await asyncio.sleep(3 * interval_s)
    published0 = sum([await _published(client, p.url) for p in procs])
    before = await sim_stats(client, sim)
    delivered0 = DELIVERED[0]
    stats, elapsed = await phase(r, window_s)
    delivered = DELIVERED[0] - delivered0
    after = await sim_stats(client, sim)
    published = sum([await _published(client, p.url) for p in procs]) - published0
    await close_streams(warm)
    await asyncio.sleep(GRACE_S + 2.0)  # their polling stops before the next phase
    polls = sum(after["tasks"].get(t, 0) - before["tasks"].get(t, 0) for t in ids)
    requests = after["requests"].get(provider, 0) - before["requests"].get(provider, 0)
    rounds = elapsed / interval_s
    total = sum(stats.values())
    return {
        "provider": provider,
        "tasks": len(ids),
        "seconds": round(elapsed, 2),
        "task_polls": polls,
        "upstream_requests": requests,
        "requests_per_round": round(requests / rounds, 2),
        "ids_per_request": round(polls / max(1, requests), 2),
        "polls_per_task_per_round": round(polls / len(ids) / rounds, 2),
        "events_committed": int(published),
        "events_delivered": delivered,  # one subscriber per task
        "commands": stats,
        "ops_per_s": round(total / elapsed),
        "ops_per_poll": round(total / max(1, polls), 2),
        "evalsha_per_poll": round(stats.get("evalsha", 0) / max(1, polls), 2),
        # next_due's reads (2 per shard per lane turn) apart from the rest
        "zrange_per_poll": round(stats.get("zrange", 0) / max(1, polls), 2),
        "other_ops_per_poll": round((total - stats.get("zrange", 0)) / max(1, polls), 2),
    }


async def _published(client: httpx.AsyncClient, base: str) -> float:
    text = (await client.get(f"{base}/metrics")).text
    match = re.search(r"^pollcast_events_published_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def benchmark(port: int) -> dict[str, float]:
    """``redis-benchmark`` ops/s on this machine (50 clients, no pipelining)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {}
    out: dict[str, float] = {}
    tests = {
        "get": ["-t", "get"],
        "zadd": ["-t", "zadd"],
        "evalsha_like": ["eval", "redis.call('ZADD', KEYS[1], 1, 'x') return 1", "1", "k"],
    }
    for name, args in tests.items():
        run = subprocess.run(
            [binary, "-p", str(port), "-q", "-n", "200000", "-c", "50", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        match = re.search(r"([\d.]+) requests per second", run.stdout)
        if match:
            out[name] = float(match.group(1))
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="pollcast-redis-ops-"))
    with RedisServer(workdir / "redis", persist=False) as server, running_sim() as sim:
        runs = []
        for n in sorted({1, args.nodes}):
            runs.append(
                await run_nodes(
                    sim,
                    server.url,
                    workdir,
                    n,
                    tasks=args.tasks,
                    subscribers=args.subscribers,
                    window_s=args.window_s,
                    interval_s=args.interval_s,
                    shards=args.shards,
                )
            )
        bench = benchmark(server.port)
    return {"runs": runs, "redis_benchmark_ops_per_s": bench}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--interval-s", type=float, default=0.5)
    parser.add_argument("--shards", type=int, default=16, help="backend.schedule_shards")
    print(json.dumps(asyncio.run(main_async(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
