"""``python -m tests.bench [--quick] [--peers | --no-peers]``: pollcast's benchmark suite.

Starts the simulator, the load generator and, one measurement at a time, a
fresh gateway (or a peer: Nchan, Pushpin), all on 127.0.0.1; prints the
results as markdown and writes them as JSON to ``bench-results/latest.json``.
The full run takes roughly ten minutes, ``--quick`` under two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench import peers
from tests.bench.procs import ROOT, LoadGen, Pinning, raise_nofile, start_sim
from tests.bench.report import evaluate_targets, render
from tests.bench.scenarios import Bench, Plan

STEPS = (
    "economy",
    "cluster",
    "cluster_fanout",
    "sse_one",
    "ws_one",
    "sse_many",
    "ws_many",
    "churn",
    "poll",
    "retention",
    "predict",
)
PEERS = ("nchan", "pushpin")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _machine(pin: Pinning, nofile: int) -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop

        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = "not installed"
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "kernel": f"Linux {platform.release()}",
        "python": platform.python_version(),
        "uvloop": uvloop_version,
        "pinning": pin.describe(),
        "nofile": nofile,
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "code": _code_version(),
    }


def _code_version() -> str:
    """The commit measured, and whether gateway/ had uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in gateway/' if dirty else ''}"


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, argv in (("nginx", ["nginx", "-v"]), ("pushpin", ["pushpin", "--version"])):
        if shutil.which(argv[0]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            found[name] = (done.stdout + done.stderr).strip().splitlines()[-1]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 connections, short windows")
    peer_flag = parser.add_mutually_exclusive_group()
    peer_flag.add_argument(
        "--peers",
        dest="peers",
        action="store_true",
        default=None,
        help="also measure Nchan and Pushpin (default in the full run)",
    )
    peer_flag.add_argument("--no-peers", dest="peers", action="store_false")
    parser.add_argument("--connections", type=int, help="override the big subscriber count")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(STEPS + PEERS)}")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "latest.json"))
    args = parser.parse_args(argv)
    with_peers = (not args.quick) if args.peers is None else args.peers
    plan = Plan.make(args.quick, with_peers, args.connections)
    only = set(args.only.split(",")) if args.only else None

    # A SIGTERM (e.g. from a timeout) must still stop every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pin = Pinning.detect()
    machine = _machine(pin, raise_nofile())
    if pin.separate:
        os.sched_setaffinity(0, pin.client)
    out_path = Path(args.out)
    workdir = out_path.parent / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    results: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "plan": {k: v for k, v in vars(plan).items()},
        "machine": machine,
    }
    steps: list[str] = [s for s in STEPS if only is None or s in only]
    if plan.peers:
        wanted = [p for p in PEERS if only is None or p in only]
        if wanted:
            _log("checking the peers (nginx + libnginx-mod-nchan, pushpin) ...")
            problem = peers.ensure_installed()
            if problem:
                for p in wanted:
                    results[p] = {"error": problem}
            else:
                steps.extend(wanted)
                results["machine"]["peers"] = _versions()

    started = time.monotonic()
    sim = start_sim(workdir, pin)
    loadgen = LoadGen(workdir, pin)
    bench = Bench(plan, workdir, pin, sim, loadgen, _log)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "economy": bench.economy,
        "cluster": bench.cluster,
        "cluster_fanout": bench.cluster_fanout,
        "sse_one": lambda: bench.pollcast_one_task("sse"),
        "ws_one": lambda: bench.pollcast_one_task("ws"),
        "sse_many": lambda: bench.many_tasks("sse"),
        "ws_many": lambda: bench.many_tasks("ws"),
        "churn": bench.churn,
        "poll": bench.poll_throughput,
        "retention": bench.retention,
        "predict": bench.predictive_polling,
        "nchan": lambda: bench.peer("nchan"),
        "pushpin": lambda: bench.peer("pushpin"),
    }
    try:
        for step in steps:
            _log(f"[{time.monotonic() - started:5.0f} s] {step}")
            try:
                results[step] = runners[step]()
            except Exception as exc:
                _log(traceback.format_exc())
                results[step] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        loadgen.stop()
        sim.stop()
    results["elapsed_s"] = time.monotonic() - started
    results["machine"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["targets"] = evaluate_targets(results)
    out_path.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(render(results))
    print(f"\n(JSON: {out_path}; logs: {workdir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
