"""The measurements. Each one starts what it needs, measures over a bounded window, stops it.

Every figure comes from outside the process under test: deliveries and
latencies from the load generator, upstream requests from the simulator's
``/_sim/stats``, memory and CPU from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.config import ServerConfig
from gateway.core.model import Event, EventKind, Result, State
from gateway.hub.local import LocalHub
from gateway.sim.credentials import SIM_CREDENTIALS
from tests.bench import peers, predictive
from tests.bench.procs import (
    LoadGen,
    Pinning,
    Proc,
    core_busy_seconds,
    cpu_seconds,
    process_tree,
    rss_kib,
    start_gateway,
    tree_rss_kib,
)

__all__ = ["Bench", "Plan"]

ECON_INTERVAL_S = 0.5
BATCH_INTERVAL_S = 1.0
POLL_INTERVAL_S = 0.1
MANY_INTERVAL_S = 0.1
# The many-tasks timeline: aholo's four non-final statuses, each distinct from
# the one before (0 排队中 and 1 等待执行 are "queued", 8 预处理中 and 2 执行中
# "running", with different messages), as (state, native status).
MANY_CYCLE = (("queued", 0), ("queued", 1), ("running", 8), ("running", 2))
# Each task moves to its next status twice per poll interval: a poll that
# comes early (the planner batches tasks due within a short horizon) or late
# still finds the task changed, so the offered load does not hang on the
# poller's phase. The cycle comes back to a status only after four steps.
MANY_STEP_S = MANY_INTERVAL_S / 2
MANY_CREATE_MARGIN_S = 30.0
POLL_CONCURRENCIES = (2, 16, 64)  # requests in flight: one poll-throughput lane each
BATCH_POLL_INTERVAL_S = 0.1
# The peers' feeder polls at the fast lane's interval, except Pushpin: its publish
# API takes everything at once (no backpressure), and offered ~5x its capacity
# (0.02 s) its delivery collapsed to ~3,000/s here; at 0.1 s it runs saturated.
PEER_FEED_INTERVAL_S: dict[str, float] = {"pushpin": 0.1}
# A directory: each pollcast window is sampled there by py-spy (see Bench._profiled).
PROFILE_ENV = "POLLCAST_BENCH_PROFILE"
REDIS_URL = "redis://127.0.0.1:6379/0"  # cluster mode: the machine's Redis


@dataclass(frozen=True)
class Plan:
    quick: bool
    big: int  # "10,000 subscribers" (1,000 in quick mode)
    window_s: float  # throughput windows
    fast_step_s: float  # the fan-out task's progress step and its lane's interval
    latency_runs: tuple[tuple[int, float, int], ...]  # (subscribers, spacing s, events)
    economy_counts: tuple[int, ...]
    economy_window_s: float
    batch_tasks: int
    poll_tasks: int
    batch_poll_tasks: int
    poll_window_s: float
    churn_s: float
    peers: bool
    cluster_counts: tuple[int, ...] = ()
    poll_concurrencies: tuple[int, ...] = (2, 16, 64)
    retained_tasks: int = 100_000  # finished tasks in the state file (retention step)
    settle_s: float = 2.0  # after subscribing, before a window

    @classmethod
    def make(cls, quick: bool, peers: bool, big: int | None = None) -> Plan:
        if quick:
            n = big or 1_000
            return cls(
                quick=True,
                big=n,
                window_s=3.0,
                fast_step_s=0.02,
                latency_runs=((1, 0.1, 15), (n, 1.0, 3)),
                economy_counts=tuple(sorted({1, n})),
                economy_window_s=1.5,
                batch_tasks=200,
                poll_tasks=600,
                batch_poll_tasks=1_000,
                poll_window_s=1.5,
                churn_s=2.5,
                peers=peers,
                cluster_counts=(n,),
                poll_concurrencies=(2, 64),
                settle_s=1.0,
            )
        n = big or 10_000
        return cls(
            quick=False,
            big=n,
            window_s=10.0,
            fast_step_s=0.02,
            latency_runs=((1, 0.1, 50), (1_000, 0.25, 20), (n, 1.0, 8)),
            economy_counts=tuple(sorted({1, 100, 1_000, n})),
            economy_window_s=5.0,
            batch_tasks=1_000,
            poll_tasks=2_000,
            batch_poll_tasks=5_000,
            poll_window_s=5.0,
            churn_s=10.0,
            peers=peers,
            cluster_counts=tuple(sorted({1, 100, 1_000, n})),
        )


def _lane(kind: str, creds: dict[str, str], interval_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        **creds,
        "interval_s": interval_s,
        "max_interval_s": interval_s,
        "timeout_s": 10.0,
        **extra,
    }


def gateway_doc(sim_url: str, plan: Plan, db_path: Path, grace_s: float) -> dict[str, Any]:
    """The gateway's config: one provider table ("lane") per scenario, all on the simulator."""
    creds = SIM_CREDENTIALS.provider_credentials(sim_url)
    vp, ah, gp = creds["videoproc"], creds["aholo"], creds["genpic"]
    wanted_server = {
        # No ": ping" frames inside a measurement window (they would count as frames).
        "heartbeat_s": 3600.0,
        "ws_ping_s": 3600.0,
        # All subscribers come from this machine's loopback addresses.
        "max_connections_per_ip": 1_000_000,
    }
    fields = set(ServerConfig.__struct_fields__)
    return {
        "backend": {"kind": "local", "path": str(db_path)},
        "auth": {"mode": "open"},
        "polling": {"grace_s": grace_s, "coalesce_s": 0.02},
        "server": {k: v for k, v in wanted_server.items() if k in fields},
        "providers": {
            "econ": _lane("videoproc", vp, ECON_INTERVAL_S),
            "fast": _lane("videoproc", vp, plan.fast_step_s, rate_per_s=10_000.0),
            **{
                f"poll{c}": _lane("videoproc", vp, POLL_INTERVAL_S, concurrency=c, rate_per_s=1e6)
                for c in POLL_CONCURRENCIES
            },
            "batch": _lane("aholo", ah, BATCH_INTERVAL_S),
            "gbatch": _lane("genpic", gp, BATCH_INTERVAL_S),
            "mtask": _lane("aholo", ah, MANY_INTERVAL_S, rate_per_s=10_000.0),
            "apoll": _lane("aholo", ah, BATCH_POLL_INTERVAL_S, concurrency=16, rate_per_s=1e6),
            **predictive.live_lanes(sim_url),
        },
    }


def _cluster_commands(cluster: Any) -> int:
    """Commands processed so far by the cluster's live masters (``INFO stats``)."""
    total = 0
    for node in cluster.nodes:
        if not node.alive:
            continue
        client = node.client()
        try:
            if client.execute_command("ROLE")[0] in (b"master", "master"):
                total += int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()
    return total


def _received(node: Proc) -> float:
    """The node's ``pollcast_events_received_total``."""
    text = httpx.get(f"{node.extra['url']}/metrics", timeout=30).text
    found = re.search(r"^pollcast_events_received_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _seq(node: Proc, task_id: str) -> int:
    """The latest seq of ``econ:<task_id>`` as the node reads it from the store."""
    reply = httpx.get(f"{node.extra['url']}/v1/tasks/econ/{task_id}", timeout=30)
    reply.raise_for_status()
    return int(reply.json().get("seq", 0))


def vp_steps(start_s: float, every_s: float, count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` videoproc progress changes (progress and message move every step)."""
    return [
        {
            "at": round(start_s + i * every_s, 3),
            "state": "running",
            "progress": i % 101,
            "message": f"{tag} {i}",
        }
        for i in range(count)
    ]


RETAINED_STATES = (
    (EventKind.STATE, State.QUEUED, None),
    (EventKind.STATE, State.RUNNING, 10),
    (EventKind.PROGRESS, State.RUNNING, 60),
    (EventKind.STATE, State.SUCCEEDED, 100),
)


async def write_finished_tasks(path: Path, provider: str, n: int, batch: int = 1_000) -> list[str]:
    """``n`` tasks that ran queued → running → running → succeeded, through ``LocalHub``."""
    hub = LocalHub(str(path), snapshot_cache=0)
    await hub.start()
    ids = [f"done{i:07d}" for i in range(n)]
    stamp = "2026-11-21T10:00:00.000Z"
    try:
        for first in range(0, n, batch):
            events = [
                Event(
                    event=kind,
                    task=f"{provider}:{task_id}",
                    seq=seq,
                    state=state,
                    terminal=state.terminal,
                    progress=progress,
                    position=None,
                    message=None,
                    result=Result(files={"video": f"/download/{task_id}.mp4"})
                    if state.terminal
                    else None,
                    error=None,
                    upstream={"status": state.value},
                    updated_at=stamp,
                    observed_at=stamp,
                )
                for task_id in ids[first : first + batch]
                for seq, (kind, state, progress) in enumerate(RETAINED_STATES, 1)
            ]
            await hub.commit(events, terminal_ttl_s=24 * 3600.0)
    finally:
        await hub.close()
    return ids


def _pct_of(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


@dataclass
class Target:
    """A server under test: where subscribers connect and which processes to read."""

    name: str
    port: int
    pids: Callable[[], list[int]]
    ready_frames: int  # frames a subscriber gets before it counts as subscribed


@dataclass
class Bench:
    plan: Plan
    workdir: Path
    pin: Pinning
    sim: Proc
    loadgen: LoadGen
    log: Callable[[str], None]
    results: dict[str, Any] = field(default_factory=dict)
    _serial: int = 0

    # -- helpers ------------------------------------------------------------

    @property
    def sim_url(self) -> str:
        return str(self.sim.extra["url"])

    @property
    def sim_port(self) -> int:
        return int(self.sim_url.rsplit(":", 1)[1])

    def fresh_id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}{self._serial:06d}"

    def sim_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.sim_url}/_sim/stats", timeout=30).json()
        return stats

    def create_task(self, provider: str, task_id: str, timeline: list[dict[str, Any]]) -> None:
        reply = httpx.post(
            f"{self.sim_url}/_sim/tasks",
            json={"provider": provider, "task_id": task_id, "timeline": timeline},
            timeout=30,
        )
        reply.raise_for_status()

    def create_tasks(
        self, provider: str, specs: Sequence[tuple[str, list[dict[str, Any]]]]
    ) -> None:
        async def run() -> None:
            gate = asyncio.Semaphore(16)
            async with httpx.AsyncClient(base_url=self.sim_url, timeout=60) as http:

                async def one(task_id: str, timeline: list[dict[str, Any]]) -> None:
                    async with gate:
                        reply = await http.post(
                            "/_sim/tasks",
                            json={"provider": provider, "task_id": task_id, "timeline": timeline},
                        )
                        reply.raise_for_status()

                await asyncio.gather(*(one(t, tl) for t, tl in specs))

        asyncio.run(run())

    @contextlib.contextmanager
    def gateway(self, name: str, grace_s: float = 30.0) -> Iterator[Proc]:
        db = self.workdir / f"{name}.db"
        for old in self.workdir.glob(f"{name}.db*"):
            old.unlink()
        doc = gateway_doc(self.sim_url, self.plan, db, grace_s)
        proc = start_gateway(doc, self.workdir, self.pin, name)
        try:
            yield proc
        finally:
            with contextlib.suppress(Exception):
                self.loadgen.call(op="close", timeout=60)
            proc.stop()

    def pollcast_target(self, gw: Proc) -> Target:
        return Target("pollcast", int(gw.extra["port"]), lambda: [gw.pid], ready_frames=2)

    def open(self, target: Target, paths: list[str], count: int, **extra: Any) -> dict[str, Any]:
        reply = self.loadgen.call(
            op="open",
            port=target.port,
            paths=paths,
            count=count,
            ready_frames=extra.pop("ready_frames", target.ready_frames),
            timeout=180,
            **extra,
        )
        if reply["ready"] < count:
            self.log(f"    only {reply['ready']}/{count} subscribers ready: {reply}")
        return reply

    def window(
        self, target: Target, seconds: float, latency: bool = False, match: str = ""
    ) -> dict[str, Any]:
        """Count what the load generator receives over ``seconds``; CPU of both sides.

        ``latency``: also time every message (containing ``match``, if given).
        """
        pids = target.pids()
        self.loadgen.call(op="reset", latency=latency, match=match)
        server_cpu0 = cpu_seconds(pids)
        core0 = core_busy_seconds(self.pin.server)
        started = time.monotonic()
        with self._profiled(target, seconds):
            time.sleep(seconds)
        stats = self.loadgen.call(op="stats")
        elapsed = time.monotonic() - started
        stats["server_cpu_pct"] = _pct_of(cpu_seconds(pids) - server_cpu0, elapsed)
        # How much of the server's core something else took (others' jobs on a
        # shared machine): a figure with a high value here is a low estimate.
        core_busy = _pct_of(core_busy_seconds(self.pin.server) - core0, elapsed)
        stats["server_core_other_pct"] = max(0.0, core_busy - stats["server_cpu_pct"])
        stats["loadgen_cpu_pct"] = _pct_of(stats["cpu_s"], stats["elapsed_s"])
        stats["per_s"] = stats["frames"] / stats["elapsed_s"] if stats["elapsed_s"] else 0.0
        return stats

    @contextlib.contextmanager
    def _profiled(self, target: Target, seconds: float) -> Iterator[None]:
        """With ``PROFILE_ENV`` set to a directory: py-spy samples the server over the window.

        One raw (collapsed-stack) file per window, named after the server, the
        time and the window's length; py-spy runs on the load generator's core.
        """
        out_dir = os.environ.get(PROFILE_ENV)
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if not out_dir or not spy or target.name != "pollcast":
            yield
            return
        out = Path(out_dir) / f"{target.name}-{time.strftime('%H%M%S')}-{seconds:.0f}s.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [spy, "record", "--pid", str(target.pids()[0]), "-d", str(max(1, int(seconds)))]
        argv += ["-r", "200", "-f", "raw", "-o", str(out)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.log(f"    profile of the window: {out}")

    # -- 1. upstream economy ---------------------------------------------------

    def economy(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interval_s": ECON_INTERVAL_S, "single": [], "batch": []}
        with self.gateway("gw-economy", grace_s=1.0) as gw:
            target = self.pollcast_target(gw)
            for n in self.plan.economy_counts:
                task_id = self.fresh_id("econ")
                self.create_task(
                    "videoproc",
                    task_id,
                    [{"at": 0, "state": "running", "progress": 0}, *vp_steps(1, 1.0, 200, "e")],
                )
                sent0 = self._requests_sent(gw, "econ")
                started = time.monotonic()
                opened = self.open(target, [f"/v1/tasks/econ/{task_id}/events"], n)
                subscribed_s = time.monotonic() - started
                time.sleep(self.plan.economy_window_s)
                elapsed = time.monotonic() - started
                polls = self.sim_stats()["tasks"].get(f"videoproc:{task_id}", 0)
                sent = self._requests_sent(gw, "econ") - sent0
                self.loadgen.call(op="close", timeout=60)
                rounds = math.floor(elapsed / ECON_INTERVAL_S) + 1
                row = {
                    "subscribers": n,
                    "ready": opened["ready"],
                    "subscribe_s": round(subscribed_s, 2),
                    "elapsed_s": round(elapsed, 2),
                    "upstream_requests": polls,
                    "gateway_requests_sent": sent,
                    "rounds": rounds,
                    "per_round": polls / rounds,
                    "naive_per_round": n,
                }
                out["single"].append(row)
                self.log(
                    f"  economy: {n} subscribers -> {polls} upstream requests in "
                    f"{rounds} rounds ({polls / rounds:.2f}/round)"
                )
                time.sleep(1.2)  # grace (1 s) ends that task's polling before the next
            for lane, provider, batch_size in (("batch", "aholo", 100), ("gbatch", "genpic", 50)):
                out["batch"].append(self._batch_economy(target, lane, provider, batch_size))
        out["naive_measured"] = self._naive()
        return out

    def _requests_sent(self, gw: Proc, lane: str) -> int:
        reply = httpx.get(f"{gw.extra['url']}/v1/providers", timeout=30).json()
        for provider in reply["providers"]:
            if provider["name"] == lane:
                return int(provider["requests_sent"])
        return 0

    def _batch_economy(
        self, target: Target, lane: str, provider: str, batch_size: int
    ) -> dict[str, Any]:
        n = self.plan.batch_tasks
        ids = [self.fresh_id(f"B{lane[0].upper()}").ljust(12, "0") for _ in range(n)]
        native = 2 if provider == "aholo" else "Running"
        idle = [{"at": 0, "state": "running", "native": native}]
        self.create_tasks(provider, [(task_id, idle) for task_id in ids])
        self.open(target, [f"/v1/tasks/{lane}/{t}/events" for t in ids], n)
        time.sleep(BATCH_INTERVAL_S * 1.2)  # the first rounds put every task on one beat
        before = self.sim_stats()
        time.sleep(self.plan.economy_window_s)
        after = self.sim_stats()
        self.loadgen.call(op="close", timeout=60)
        requests = after["requests"].get(provider, 0) - before["requests"].get(provider, 0)
        refreshes = sum(
            after["tasks"].get(f"{provider}:{t}", 0) - before["tasks"].get(f"{provider}:{t}", 0)
            for t in ids
        )
        rounds = refreshes / n if n else 0.0
        row = {
            "lane": lane,
            "provider": provider,
            "tasks": n,
            "batch_size": batch_size,
            "upstream_requests": requests,
            "task_refreshes": refreshes,
            "rounds": rounds,
            "requests_per_round": requests / rounds if rounds else 0.0,
            "per_task_per_round": requests / refreshes if refreshes else 0.0,
            "ideal_per_task_per_round": math.ceil(n / batch_size) / n,
        }
        self.log(
            f"  economy: {provider} {n} tasks -> {requests} requests for {refreshes} task "
            f"refreshes ({row['per_task_per_round']:.4f} per task per round)"
        )
        time.sleep(1.0)
        return row

    def _naive(self) -> dict[str, Any]:
        """The baseline measured, scaled down: every subscriber polls the upstream itself."""
        clients = 100
        task_id = self.fresh_id("naive")
        self.create_task("videoproc", task_id, [{"at": 0, "state": "running", "progress": 1}])
        duration = self.plan.economy_window_s + 1.0
        self.loadgen.call(
            op="naive",
            port=self.sim_port,
            path=f"/videoproc/api/status/{task_id}",
            clients=clients,
            interval_s=ECON_INTERVAL_S,
            duration_s=duration,
            timeout=60,
        )
        polls = self.sim_stats()["tasks"].get(f"videoproc:{task_id}", 0)
        rounds = duration / ECON_INTERVAL_S
        self.log(f"  naive baseline: {clients} pollers -> {polls / rounds:.1f} requests/round")
        return {"clients": clients, "upstream_requests": polls, "per_round": polls / rounds}

    def cluster(self) -> dict[str, Any]:
        """The 3-node column: only if ``backend.kind = "redis"`` is really honoured.

        The probe: a gateway whose Redis URL points at a closed port. If it
        still reports ready, the setting is ignored (no Redis backend yet).
        """
        probe_doc = gateway_doc(self.sim_url, self.plan, self.workdir / "probe.db", 1.0)
        probe_doc["backend"] = {"kind": "redis", "url": "redis://127.0.0.1:1/0"}
        try:
            probe = start_gateway(probe_doc, self.workdir, self.pin, "gw-redis-probe", 2.0)
        except RuntimeError:
            pass  # it would not run without its Redis: the backend is real
        else:
            probe.stop()
            return {
                "available": False,
                "reason": 'n/a (cluster mode not built yet: backend.kind = "redis" still '
                "runs the local hub)",
            }
        try:
            import redis

            redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
        except Exception as exc:
            return {"available": False, "reason": f"n/a (no Redis at {REDIS_URL}: {exc})"}
        try:
            return {"available": True, "single": self._cluster_economy()}
        except Exception as exc:
            return {"available": False, "reason": f"error: {type(exc).__name__}: {exc}"}

    def _cluster_economy(self) -> list[dict[str, Any]]:
        """3 gateway nodes on one Redis; each count's subscribers spread over the nodes."""
        import redis

        prefix = f"pcbench{os.getpid()}x{self.fresh_id('')}"
        nodes: list[Proc] = []
        rows = []
        try:
            docs = []
            for i in range(3):
                doc = gateway_doc(self.sim_url, self.plan, self.workdir / f"node{i}.db", 1.0)
                doc["backend"] = {"kind": "redis", "url": REDIS_URL, "prefix": prefix}
                docs.append(doc)
            with ThreadPoolExecutor(3) as pool:
                futures = [
                    pool.submit(start_gateway, doc, self.workdir, self.pin, f"gw-node{i}")
                    for i, doc in enumerate(docs)
                ]
                for future in futures:
                    with contextlib.suppress(Exception):
                        nodes.append(future.result())
            if len(nodes) < 3:
                raise RuntimeError("a cluster node did not start (see gw-node*.log)")
            for n in self.plan.cluster_counts:
                task_id = self.fresh_id("clu")
                self.create_task(
                    "videoproc",
                    task_id,
                    [{"at": 0, "state": "running", "progress": 0}, *vp_steps(1, 1.0, 200, "c")],
                )
                started = time.monotonic()
                path = f"/v1/tasks/econ/{task_id}/events"
                for i, node in enumerate(nodes):
                    share = n // 3 + (1 if i < n % 3 else 0)
                    if share:
                        self.open(self.pollcast_target(node), [path], share)
                time.sleep(self.plan.economy_window_s)
                elapsed = time.monotonic() - started
                polls = self.sim_stats()["tasks"].get(f"videoproc:{task_id}", 0)
                self.loadgen.call(op="close", timeout=60)
                rounds = math.floor(elapsed / ECON_INTERVAL_S) + 1
                rows.append(
                    {
                        "subscribers": n,
                        "nodes": len(nodes),
                        "upstream_requests": polls,
                        "rounds": rounds,
                        "per_round": polls / rounds,
                    }
                )
                self.log(
                    f"  cluster: {n} subscribers on 3 nodes -> {polls} upstream requests in "
                    f"{rounds} rounds ({polls / rounds:.2f}/round)"
                )
                time.sleep(1.2)
        finally:
            for node in nodes:
                node.stop()
            with contextlib.suppress(Exception):
                client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
                keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                if keys:
                    client.delete(*keys)
        return rows

    def cluster_fanout(self) -> dict[str, Any]:
        """Fan-out in proportion to what a node serves, on a real 3-master Redis Cluster.

        Three gateway nodes; each task's subscribers are on one node, a third of
        the tasks per node. Over the window, each node's listener counts the
        events it received from Redis (``pollcast_events_received_total``); the
        tasks' seqs say how many events were committed, in all and per node's share.
        """
        from tests.redis_cluster import RedisCluster

        n_tasks = 30 if self.plan.quick else 90
        window_s = 2 * self.plan.economy_window_s
        prefix = f"pcfan{os.getpid()}"
        nodes: list[Proc] = []
        with RedisCluster(self.workdir / "redis-cluster", masters=3, persist=False) as cluster:
            try:
                with ThreadPoolExecutor(3) as pool:
                    futures = []
                    for i in range(3):
                        doc = gateway_doc(self.sim_url, self.plan, self.workdir / f"fan{i}.db", 5.0)
                        doc["backend"] = {"kind": "redis", "url": cluster.url, "prefix": prefix}
                        futures.append(
                            pool.submit(start_gateway, doc, self.workdir, self.pin, f"gw-fan{i}")
                        )
                    for future in futures:
                        with contextlib.suppress(Exception):
                            nodes.append(future.result())
                if len(nodes) < 3:
                    raise RuntimeError("a cluster node did not start (see gw-fan*.log)")
                ids = [self.fresh_id("fan") for _ in range(n_tasks)]
                steps = [{"at": 0, "state": "running", "progress": 0}, *vp_steps(1, 0.5, 400, "f")]
                self.create_tasks("videoproc", [(task_id, steps) for task_id in ids])
                shares = [ids[i::3] for i in range(3)]
                for node, share in zip(nodes, shares, strict=True):
                    paths = [f"/v1/tasks/econ/{task_id}/events" for task_id in share]
                    self.open(self.pollcast_target(node), paths, len(paths))
                time.sleep(self.plan.settle_s + 1.0)
                received0 = [_received(node) for node in nodes]
                seq0 = {t: _seq(nodes[0], t) for t in ids}
                asked0 = self.sim_stats()["tasks"]
                ops0 = _cluster_commands(cluster)
                started = time.monotonic()
                time.sleep(window_s)
                ops1 = _cluster_commands(cluster)
                asked1 = self.sim_stats()["tasks"]
                elapsed = time.monotonic() - started
                received1 = [_received(node) for node in nodes]
                seq1 = {t: _seq(nodes[0], t) for t in ids}
                self.loadgen.call(op="close", timeout=60)
            finally:
                for node in nodes:
                    node.stop()
        committed = {t: seq1[t] - seq0[t] for t in ids}
        total = sum(committed.values())
        rows = []
        for i, share in enumerate(shares):
            got = received1[i] - received0[i]
            own = sum(committed[t] for t in share)
            rows.append(
                {
                    "node": i,
                    "tasks": len(share),
                    "received": got,
                    "share_committed": own,
                    "all_committed": total,
                    "received_per_share": got / own if own else None,
                    "received_of_all": got / total if total else None,
                }
            )
            self.log(
                f"  node {i}: {len(share)}/{n_tasks} tasks, received {got:.0f} events; "
                f"its share committed {own}, all nodes' tasks {total}"
            )
        # Each change was polled once cluster-wide: upstream requests for these
        # tasks vs the events committed for them (one per change seen).
        keys = [f"videoproc:{t}" for t in ids]  # how the simulator counts them
        asked = sum(asked1.get(k, 0) - asked0.get(k, 0) for k in keys)
        ops_per_s = (ops1 - ops0) / elapsed
        self.log(
            f"  upstream requests {asked} for {total} committed events; "
            f"Redis commands {ops_per_s:,.0f}/s over the 3 masters"
        )
        return {
            "tasks": n_tasks,
            "window_s": window_s,
            "masters": 3,
            "nodes": rows,
            "upstream_requests": asked,
            "redis_commands_per_s": ops_per_s,
        }

    # -- 2-4. fan-out, latency, memory on one task -------------------------------

    def one_task(
        self,
        target: Target,
        path: str,
        *,
        kind: str = "sse",
        ws_task: str | None = None,
        create: Callable[[list[dict[str, Any]]], None],
        warm: bool = True,
    ) -> dict[str, Any]:
        """Memory of N idle subscribers, then latency, then throughput, on the same N.

        The task does not exist upstream while subscribers connect (the
        upstream answers 404 and the stream stays idle); ``create`` then
        starts its timeline: one change per second for the latency window,
        then progress every ``fast_step_s`` for the throughput window.
        """
        plan = self.plan
        n = plan.big
        extra: dict[str, Any] = {"kind": kind}
        if ws_task is not None:
            extra["tasks"] = [ws_task]
        if warm:
            self.open(target, [path], 200, **extra)
            self.loadgen.call(op="close", timeout=60)
            time.sleep(1.0)
        rss_before = sum(rss_kib(p) for p in target.pids())
        opened = self.open(target, [path], n, **extra)
        time.sleep(self.plan.settle_s)
        rss_after = sum(rss_kib(p) for p in target.pids())
        ready = max(1, opened["ready"])
        memory = {
            "connections": opened["ready"],
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "per_connection_kib": (rss_after - rss_before) / ready,
            "open_s": opened["elapsed_s"],
        }
        self.log(
            f"  {target.name} {kind}: {opened['ready']} idle subscribers, "
            f"{memory['per_connection_kib']:.1f} KiB each"
        )
        # Latency first, on a quiet server: one change per second. Then the
        # saturating phase, so that no backlog of it can count as latency.
        lat_spacing, lat_events = 1.0, next(c for m, _, c in plan.latency_runs if m == n)
        slow_end_s = 1.0 + lat_events * lat_spacing
        fast = int((1.0 + plan.window_s + 1.0) / plan.fast_step_s)
        timeline = [
            {"at": 0, "state": "running", "progress": 0, "message": "start"},
            *vp_steps(1.0, lat_spacing, lat_events, "slow"),
            *vp_steps(slow_end_s + 0.5, plan.fast_step_s, fast, "fast"),
        ]
        created = time.monotonic()
        create(timeline)
        time.sleep(0.5)
        latency = self.window(
            target,
            created + slow_end_s + 0.3 - time.monotonic(),
            latency=True,
            match='"message":"slow ',
        )
        time.sleep(max(0.0, created + slow_end_s + 1.0 - time.monotonic()))
        throughput = self.window(target, plan.window_s)
        self.log(
            f"  {target.name} {kind}: {throughput['per_s']:,.0f} deliveries/s "
            f"(server CPU {throughput['server_cpu_pct']:.0f}%, "
            f"load generator CPU {throughput['loadgen_cpu_pct']:.0f}%)"
        )
        self._log_latency(target.name, kind, n, latency)
        self.loadgen.call(op="close", timeout=60)
        return {
            "subscribers": n,
            "memory": memory,
            "throughput": throughput,
            "latency": {**latency, "spacing_s": lat_spacing, "events": lat_events},
        }

    def _log_latency(self, name: str, kind: str, n: int, stats: dict[str, Any]) -> None:
        lat = stats.get("latency_ms")
        if lat:
            self.log(
                f"  {name} {kind} latency at {n}: p50 {lat['p50']:.1f} ms, "
                f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms ({lat['n']} samples)"
            )
        else:
            self.log(f"  {name} {kind} latency at {n}: no samples")

    def pollcast_one_task(self, kind: str) -> dict[str, Any]:
        with self.gateway(f"gw-one-{kind}") as gw:
            task_id = self.fresh_id(f"one{kind}")
            target = self.pollcast_target(gw)
            path = "/v1/ws" if kind == "ws" else f"/v1/tasks/fast/{task_id}/events"
            result = self.one_task(
                target,
                path,
                kind=kind,
                ws_task=f"fast:{task_id}" if kind == "ws" else None,
                create=lambda tl: self.create_task("videoproc", task_id, tl),
            )
            if kind == "sse":
                result["latency_small"] = [
                    self._latency_only(target, n, spacing, events)
                    for n, spacing, events in self.plan.latency_runs
                    if n != self.plan.big
                ]
            return result

    def _latency_only(self, target: Target, n: int, spacing: float, events: int) -> dict[str, Any]:
        task_id = self.fresh_id("lat")
        self.open(target, [f"/v1/tasks/fast/{task_id}/events"], n)
        time.sleep(0.5)
        created = time.monotonic()
        self.create_task(
            "videoproc",
            task_id,
            [{"at": 0, "state": "running", "progress": 0}, *vp_steps(1.0, spacing, events, "l")],
        )
        time.sleep(0.5)
        stats = self.window(
            target,
            created + 1.0 + events * spacing + 0.5 - time.monotonic(),
            latency=True,
        )
        self._log_latency(target.name, "sse", n, stats)
        self.loadgen.call(op="close", timeout=60)
        return {"subscribers": n, "spacing_s": spacing, "events": events, **stats}

    # -- 2b. many tasks ---------------------------------------------------------

    def many_tasks(self, kind: str) -> dict[str, Any]:
        """``big / 10`` tasks × 10 subscribers each, on a batch provider (aholo).

        Every task changes twice per poll interval, through a cycle of four
        distinct statuses: a poll that comes early or late (one, two or three
        steps passed) still sees a change, so each poll is one event for ten
        subscribers, as each poll of the one-task case is one for all of its.
        (Two alternating statuses, one step per interval, made a poll two
        steps late see no change at all: the offered load hung on the
        poller's jitter.) At most one event per task per poll interval is
        observed, as for any polled task.
        Besides deliveries, the window counts the upstream task refreshes and
        the simulator's CPU: either one says whether the poller or the
        upstream, rather than the fan-out, set the figure.
        """
        plan = self.plan
        tasks = plan.big // 10
        with self.gateway(f"gw-many-{kind}") as gw:
            target = self.pollcast_target(gw)
            ids = [self.fresh_id(f"M{kind[0].upper()}").ljust(12, "0") for _ in range(tasks)]
            if kind == "ws":
                opened = self.open(
                    target, ["/v1/ws"], tasks * 10, kind="ws", tasks=[f"mtask:{t}" for t in ids]
                )
            else:
                paths = [f"/v1/tasks/mtask/{t}/events" for t in ids]
                opened = self.open(target, paths, tasks * 10)
            # Long enough to cover the creation of all the tasks (several
            # seconds on a busy machine), the pause and the window.
            steps = int((MANY_CREATE_MARGIN_S + plan.window_s) / MANY_STEP_S)
            timeline = [
                {
                    "at": round(i * MANY_STEP_S, 3),
                    "state": MANY_CYCLE[i % 4][0],
                    "native": MANY_CYCLE[i % 4][1],
                }
                for i in range(steps)
            ]
            started = time.monotonic()
            self.create_tasks("aholo", [(t, timeline) for t in ids])
            created_s = time.monotonic() - started
            time.sleep(1.0)
            asked0 = self.sim_stats()["tasks"]
            sim_cpu0 = cpu_seconds([self.sim.pid])
            sim_started = time.monotonic()
            stats = self.window(target, plan.window_s)
            asked1 = self.sim_stats()["tasks"]
            sim_elapsed = time.monotonic() - sim_started
            stats["sim_cpu_pct"] = _pct_of(cpu_seconds([self.sim.pid]) - sim_cpu0, sim_elapsed)
        keys = [f"aholo:{t}" for t in ids]
        refreshes = sum(asked1.get(k, 0) - asked0.get(k, 0) for k in keys)
        stats["task_refreshes_per_s"] = refreshes / sim_elapsed
        stats["refreshes_due_per_s"] = tasks / MANY_INTERVAL_S
        self.log(
            f"  pollcast {kind}: {tasks} tasks x 10: {stats['per_s']:,.0f} deliveries/s "
            f"({stats['task_refreshes_per_s']:,.0f} task refreshes/s of "
            f"{stats['refreshes_due_per_s']:,.0f} due/s; server CPU "
            f"{stats['server_cpu_pct']:.0f}%, other processes on its core "
            f"{stats['server_core_other_pct']:.0f}%, load generator CPU "
            f"{stats['loadgen_cpu_pct']:.0f}%, simulator CPU {stats['sim_cpu_pct']:.0f}%)"
        )
        return {
            "tasks": tasks,
            "subscribers_per_task": 10,
            "interval_s": MANY_INTERVAL_S,
            "ready": opened["ready"],
            "create_s": created_s,
            "throughput": stats,
        }

    # -- 5. churn ---------------------------------------------------------------

    def churn(self) -> dict[str, Any]:
        """Two equal rounds of connect → snapshot → disconnect, RSS measured after each.

        One round cannot tell a leak from memory the allocator keeps for
        reuse; a second round that ends where the first did can: a leak
        would grow again by as much.
        """
        with self.gateway("gw-churn", grace_s=30.0) as gw:
            task_id = self.fresh_id("churn")
            self.create_task("videoproc", task_id, [{"at": 0, "state": "running", "progress": 3}])
            target = self.pollcast_target(gw)
            path = f"/v1/tasks/econ/{task_id}/events"
            self.open(target, [path], 200)
            self.loadgen.call(op="close", timeout=60)
            time.sleep(1.0)
            baseline = self._settled_rss(gw)
            rounds = []
            for _ in range(2):
                reply = self.loadgen.call(
                    op="churn",
                    port=target.port,
                    path=path,
                    duration_s=self.plan.churn_s,
                    concurrency=32,
                    ready_frames=2,
                    timeout=self.plan.churn_s + 60,
                )
                time.sleep(2.0)
                after = rss_kib(gw.pid)
                gw.signal(signal.SIGUSR1)
                time.sleep(0.5)
                after_gc = rss_kib(gw.pid)
                gw.signal(signal.SIGUSR2)
                time.sleep(0.5)
                rounds.append(
                    {
                        **reply,
                        "per_s": reply["cycles"] / reply["elapsed_s"],
                        "rss_after_kib": after,
                        "rss_after_gc_kib": after_gc,
                        "rss_after_trim_kib": rss_kib(gw.pid),
                    }
                )
            still_open = self._feeds_open(gw)
        cycles = sum(r["cycles"] for r in rounds)
        elapsed = sum(r["elapsed_s"] for r in rounds)
        last = rounds[-1]
        for n, r in enumerate(rounds, 1):
            self.log(
                f"  churn round {n}: {r['per_s']:,.0f} connect+disconnect/s ({r['errors']} "
                f"errors); RSS {baseline / 1024:.1f} -> {r['rss_after_kib'] / 1024:.1f} MiB, "
                f"after gc {r['rss_after_gc_kib'] / 1024:.1f}, after malloc_trim "
                f"{r['rss_after_trim_kib'] / 1024:.1f}"
            )
        return {
            "cycles": cycles,
            "elapsed_s": elapsed,
            "errors": sum(r["errors"] for r in rounds),
            "per_s": cycles / elapsed,
            "rounds": rounds,
            "rss_baseline_kib": baseline,
            "rss_after_kib": last["rss_after_kib"],
            "rss_after_gc_kib": last["rss_after_gc_kib"],
            "rss_after_trim_kib": last["rss_after_trim_kib"],
            "tasks_polled_after": still_open,
        }

    def _settled_rss(self, gw: Proc) -> int:
        gw.signal(signal.SIGUSR1)
        time.sleep(0.3)
        gw.signal(signal.SIGUSR2)
        time.sleep(0.5)
        return rss_kib(gw.pid)

    def _feeds_open(self, gw: Proc) -> int | None:
        with contextlib.suppress(Exception):
            reply = httpx.get(f"{gw.extra['url']}/v1/providers", timeout=10).json()
            return sum(int(p["tasks_polled"]) for p in reply["providers"])
        return None

    # -- 6. poll throughput -----------------------------------------------------

    def predictive_polling(self) -> dict[str, Any]:
        """Predictive against fixed polling: a pure simulation, then a short live run."""
        self.log("    simulating the planner over a fake clock ...")
        out: dict[str, Any] = {"simulated": predictive.simulated_scenarios()}
        with self.gateway("gw-predict") as gw:
            out["live"] = predictive.live_run(
                self.sim_url, str(gw.extra["url"]), self.log, prefix=self.fresh_id("pp")
            )
        return out

    def poll_throughput(self) -> dict[str, Any]:
        """Status polls/s on a single-task provider at several concurrency limits, and
        task refreshes/s on a batch provider, each over many idle tasks."""
        plan = self.plan
        out: dict[str, Any] = {"single_by_concurrency": []}
        with self.gateway("gw-poll", grace_s=1.0) as gw:
            target = self.pollcast_target(gw)
            ids = self._idle_tasks("videoproc", "PV", plan.poll_tasks)
            for concurrency in plan.poll_concurrencies:
                row = self._poll_lane(gw, target, f"poll{concurrency}", "videoproc", ids)
                row["concurrency"] = concurrency
                out["single_by_concurrency"].append(row)
                self.loadgen.call(op="close", timeout=60)
                time.sleep(2.0)  # grace (1 s) ends this lane's polling
            out["single"] = max(out["single_by_concurrency"], key=lambda r: r["requests_per_s"])
            ids = self._idle_tasks("aholo", "PA", plan.batch_poll_tasks)
            out["batch"] = self._poll_lane(gw, target, "apoll", "aholo", ids)
            out["batch"]["interval_s"] = BATCH_POLL_INTERVAL_S
            out["batch"]["offered_per_s"] = len(ids) / BATCH_POLL_INTERVAL_S
        return out

    def _idle_tasks(self, provider: str, prefix: str, n: int) -> list[str]:
        ids = [self.fresh_id(prefix).ljust(12, "0") for _ in range(n)]
        idle = (
            [{"at": 0, "state": "running", "progress": 7}]
            if provider == "videoproc"
            else [{"at": 0, "state": "running", "native": 2}]
        )
        self.create_tasks(provider, [(t, idle) for t in ids])
        return ids

    def _poll_lane(
        self, gw: Proc, target: Target, lane: str, provider: str, ids: list[str]
    ) -> dict[str, Any]:
        n = len(ids)
        # One multiplexed stream per 100 tasks (the default per-stream limit).
        paths = [
            "/v1/events?tasks=" + ",".join(f"{lane}:{t}" for t in ids[i : i + 100])
            for i in range(0, n, 100)
        ]
        opened = self.open(target, paths, len(paths), ready_frames=1 + 100)
        time.sleep(self.plan.settle_s)
        before = self.sim_stats()
        cpu0 = cpu_seconds([gw.pid])
        sim_cpu0 = cpu_seconds([self.sim.pid])
        started = time.monotonic()
        time.sleep(self.plan.poll_window_s)
        after = self.sim_stats()
        elapsed = time.monotonic() - started
        cpu = _pct_of(cpu_seconds([gw.pid]) - cpu0, elapsed)
        sim_cpu = _pct_of(cpu_seconds([self.sim.pid]) - sim_cpu0, elapsed)
        requests = after["requests"].get(provider, 0) - before["requests"].get(provider, 0)
        refreshes = sum(
            after["tasks"].get(f"{provider}:{t}", 0) - before["tasks"].get(f"{provider}:{t}", 0)
            for t in ids
        )
        row = {
            "lane": lane,
            "provider": provider,
            "tasks": n,
            "interval_s": POLL_INTERVAL_S,
            "offered_per_s": n / POLL_INTERVAL_S,
            "requests_per_s": requests / elapsed,
            "refreshes_per_s": refreshes / elapsed,
            "gateway_cpu_pct": cpu,
            "sim_cpu_pct": sim_cpu,
            "streams_ready": opened["ready"],
        }
        self.log(
            f"  poll throughput {lane}: {row['requests_per_s']:,.0f} requests/s, "
            f"{row['refreshes_per_s']:,.0f} task refreshes/s ({n} tasks, gateway CPU "
            f"{cpu:.0f}%, simulator CPU {sim_cpu:.0f}%)"
        )
        return row

    # -- 7. retention: finished tasks in the state file --------------------------

    def retention(self) -> dict[str, Any]:
        """RSS per retained finished task and restart-to-ready time on a full state file.

        The file is written through the gateway's own hub (``LocalHub.commit``,
        a batch of tasks per transaction): the same rows, encoding and trimming
        a running gateway writes. Each gateway is timed from spawn to its first
        ``/readyz`` 200, then its RSS is read after ``gc.collect()`` and
        ``malloc_trim(0)``. The empty file is measured the same way.
        """
        n = self.plan.retained_tasks
        out: dict[str, Any] = {"tasks": n, "events_per_task": len(RETAINED_STATES)}
        empty_db = self.workdir / "gw-retention-empty.db"
        full_db = self.workdir / "gw-retention.db"
        for old in self.workdir.glob("gw-retention*.db*"):
            old.unlink()
        started = time.monotonic()
        ids = asyncio.run(write_finished_tasks(full_db, "econ", n))
        out["write_s"] = round(time.monotonic() - started, 2)
        out["file_mib"] = round(
            sum(f.stat().st_size for f in self.workdir.glob("gw-retention.db*")) / 2**20, 1
        )
        self.log(f"  retention: wrote {n:,} finished tasks in {out['write_s']} s")
        for label, db in (("empty", empty_db), ("full", full_db)):
            doc = gateway_doc(self.sim_url, self.plan, db, grace_s=30.0)
            started = time.monotonic()
            gw = start_gateway(doc, self.workdir, self.pin, f"gw-retention-{label}")
            try:
                ready_s = time.monotonic() - started
                out[label] = {"ready_s": round(ready_s, 3), "rss_kib": self._settled_rss(gw)}
                if label == "full":
                    out["checks"] = self._finished_reads(gw, ids)
                    out["full"]["rss_after_reads_kib"] = self._settled_rss(gw)
            finally:
                gw.stop()
            self.log(f"  retention: {label} store ready in {ready_s:.2f} s, {out[label]}")
        extra_kib = out["full"]["rss_kib"] - out["empty"]["rss_kib"]
        out["bytes_per_task"] = round(extra_kib * 1024 / n, 1)
        return out

    def _finished_reads(self, gw: Proc, ids: Sequence[str]) -> dict[str, Any]:
        """A few finished tasks served from the file: snapshot, resume, 204 at the end."""
        base = gw.extra["url"]
        last = len(RETAINED_STATES)
        checks: dict[str, Any] = {"snapshot": 0, "resume": 0, "no_content": 0, "tried": 0}
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
            for task_id in ids[:: max(1, len(ids) // 50)]:
                checks["tried"] += 1
                snap = http.get(f"/v1/tasks/econ/{task_id}").json()
                checks["snapshot"] += snap["seq"] == last and snap["terminal"] is True
                events = f"/v1/tasks/econ/{task_id}/events"
                done = http.get(events, headers={"Last-Event-ID": str(last)})
                checks["no_content"] += done.status_code == 204
                replay = http.get(events, headers={"Last-Event-ID": "1"}).text
                ids_seen = [line[4:] for line in replay.splitlines() if line.startswith("id: ")]
                checks["resume"] += ids_seen == [str(i) for i in range(2, last + 1)]
        return checks

    # -- peers --------------------------------------------------------------------

    def peer(self, which: str) -> dict[str, Any]:
        started: list[Proc] = []
        try:
            if which == "nchan":
                server = peers.start_nchan(self.workdir, self.pin)
            else:
                backend = peers.start_grip_backend(self.workdir, self.pin)
                started.append(backend)
                server = peers.start_pushpin(self.workdir, self.pin, int(backend.extra["port"]))
            started.append(server)
            time.sleep(1.0)
            root = server.pid
            target = Target(which, int(server.extra["port"]), lambda: process_tree(root), 0)
            channel = f"bench{self.fresh_id('')}"
            task_id = self.fresh_id(f"peer{which}")
            plan = self.plan

            def create(timeline: list[dict[str, Any]]) -> None:
                feeder = peers.start_feeder(
                    self.workdir,
                    self.pin,
                    which,
                    sim_port=self.sim_port,
                    task_id=task_id,
                    publish_port=int(server.extra["publish_port"]),
                    channel=channel,
                    interval_s=PEER_FEED_INTERVAL_S.get(which, plan.fast_step_s),
                    duration_s=plan.window_s + 20.0,
                )
                started.append(feeder)
                time.sleep(0.5)
                self.create_task("videoproc", task_id, timeline)

            result = self.one_task(target, f"/sub/{channel}", create=create)
            result["feeder_interval_s"] = PEER_FEED_INTERVAL_S.get(which, plan.fast_step_s)
            result["processes"] = len(process_tree(root))
            result["rss_total_kib"] = tree_rss_kib(root)
            if which == "pushpin":
                result["handler_settings"] = dict(peers.PUSHPIN_HANDLER)
            return result
        finally:
            with contextlib.suppress(Exception):
                self.loadgen.call(op="close", timeout=60)
            for proc in reversed(started):
                proc.stop()
