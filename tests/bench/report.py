"""The results as markdown: the targets, then one table per measurement."""

from __future__ import annotations

from typing import Any

__all__ = ["TARGETS", "evaluate_targets", "render"]

TARGETS = {
    "sse_deliveries_per_s": 25_000,
    "p99_ms_big": 250.0,
    "kib_per_idle_sse": 16.0,
    "single_task_polls_per_s": 2_000,
    "bytes_per_retained_task": 1024.0,
    "restart_ready_s": 2.0,
    "ws_over_sse_deliveries": 0.95,
    "ws_over_sse_p99": 1.1,
    "kib_per_idle_ws": 16.0,
    "many_over_one_task": 0.8,
    "sse_over_nchan": 1.0,
}


SATURATED_CPU_PCT = 85.0
# Above this, the load generator's core (not the server) may have set the figure:
# it is then a floor of the server's capacity, not its ceiling.
LOADGEN_LIMIT_PCT = 90.0


def per_cpu_s(stats: dict[str, Any] | None) -> float | None:
    """Deliveries per second of the server's CPU: steadier than per wall second
    when other work on a shared machine takes the server's core."""
    per_s, cpu = _get(stats or {}, "per_s"), _get(stats or {}, "server_cpu_pct")
    if per_s is None or not cpu:
        return None
    return float(per_s) / (float(cpu) / 100.0)


def loadgen_bound(*stats: dict[str, Any] | None) -> bool:
    return any((_get(s or {}, "loadgen_cpu_pct") or 0.0) > LOADGEN_LIMIT_PCT for s in stats)


def _n(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _get(data: dict[str, Any], *path: str) -> Any:
    current: Any = data
    for key in path:
        if not isinstance(current, dict) or key not in current:
            return None
        current = current[key]
    return current


def _lat(stats: dict[str, Any] | None) -> str:
    lat = _get(stats or {}, "latency_ms")
    if not lat:
        return "—"
    return f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f} ms"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "—"
    return f"{ours / theirs:.2f}×"


def _error(results: dict[str, Any], key: str) -> str | None:
    part = results.get(key)
    if isinstance(part, dict) and "error" in part:
        return f"{key}: {part['error']}"
    return None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    big = results["plan"]["big"]
    rows: list[dict[str, Any]] = []

    def add(name: str, figure: str, met: bool | None) -> None:
        rows.append({"target": name, "measured": figure, "met": met})

    per_s = _get(results, "sse_one", "throughput", "per_s")
    cpu = _get(results, "sse_one", "throughput", "server_cpu_pct")
    met: bool | None = None
    figure = "not measured"
    if per_s is not None:
        figure = f"{_n(per_s)}/s (gateway CPU {_n(cpu)}%)"
        met = per_s >= TARGETS["sse_deliveries_per_s"]
        if not met and (cpu or 0) < SATURATED_CPU_PCT:
            # The offered load, not the gateway, set the figure: no verdict.
            met = None
            figure += "; inconclusive: offered load below capacity"
    add(
        f"≥ {TARGETS['sse_deliveries_per_s']:,} SSE event deliveries/s (1 task × {big:,})",
        figure,
        met,
    )
    p99 = _get(results, "sse_one", "latency", "latency_ms", "p99")
    add(
        f"p99 delivery latency ≤ {TARGETS['p99_ms_big']:.0f} ms with {big:,} subscribers",
        f"{p99:.0f} ms" if p99 is not None else "not measured",
        None if p99 is None else p99 <= TARGETS["p99_ms_big"],
    )
    kib = _get(results, "sse_one", "memory", "per_connection_kib")
    add(
        f"≤ {TARGETS['kib_per_idle_sse']:.0f} KiB RSS per idle SSE connection at {big:,}",
        f"{kib:.1f} KiB" if kib is not None else "not measured",
        None if kib is None else kib <= TARGETS["kib_per_idle_sse"],
    )
    polls = _get(results, "poll", "single", "requests_per_s")
    add(
        f"≥ {TARGETS['single_task_polls_per_s']:,} single-task status polls/s",
        f"{_n(polls)}/s" if polls is not None else "not measured",
        None if polls is None else polls >= TARGETS["single_task_polls_per_s"],
    )
    econ = list(_get(results, "economy", "single") or [])
    econ += [
        {**r, "subscribers": r["subscribers"]} for r in _get(results, "cluster", "single") or []
    ]
    if econ:
        worst = max(row["per_round"] for row in econ)
        never_more = all(row["upstream_requests"] <= row["rounds"] for row in econ)
        figure = ", ".join(
            f"{row['subscribers']:,}{' (3 nodes)' if 'nodes' in row else ''}: "
            f"{row['upstream_requests']}/{row['rounds']}"
            for row in econ
        )
        add(
            "upstream requests per task per round = 1 at every subscriber count",
            f"≤ {worst:.2f} (requests/rounds — {figure})",
            never_more and worst >= 0.8,
        )
    else:
        add("upstream requests per task per round = 1", "not measured", None)
    _ratio_targets(results, big, add)
    retention = results.get("retention") or {}
    n = retention.get("tasks", 100_000)
    per_task = retention.get("bytes_per_task")
    add(
        f"RSS per retained finished task ≤ {TARGETS['bytes_per_retained_task']:.0f} B "
        f"at {n:,} retained tasks",
        f"{per_task:,.1f} B" if per_task is not None else "not measured",
        None if per_task is None else per_task <= TARGETS["bytes_per_retained_task"],
    )
    ready_s = _get(retention, "full", "ready_s")
    add(
        f"restart to ready ≤ {TARGETS['restart_ready_s']:g} s at {n:,} retained tasks",
        f"{ready_s:.2f} s" if ready_s is not None else "not measured",
        None if ready_s is None else ready_s <= TARGETS["restart_ready_s"],
    )
    return rows


def _ratio_targets(results: dict[str, Any], big: int, add: Any) -> None:
    """WebSocket against SSE, many tasks against one, SSE against Nchan."""

    def floor_note(*stats: dict[str, Any] | None) -> str:
        return "; load generator above 90 %: a floor" if loadgen_bound(*stats) else ""

    def deliveries(ours: str, theirs: dict[str, Any] | None, name: str, target: float) -> None:
        a = _get(results, ours, "throughput")
        b = theirs
        ra, rb = _get(a or {}, "per_s"), _get(b or {}, "per_s")
        if not ra or not rb:
            add(name, "not measured", None)
            return
        ratio = ra / rb
        cpu_a, cpu_b = per_cpu_s(a), per_cpu_s(b)
        cpu_ratio = f", {cpu_a / cpu_b:.2f}× per CPU-second" if cpu_a and cpu_b else ""
        add(
            name,
            f"{ratio:.2f}× ({_n(ra)} ÷ {_n(rb)}/s{cpu_ratio}){floor_note(a, b)}",
            ratio >= target,
        )

    t = TARGETS
    sse_one = _get(results, "sse_one", "throughput")
    deliveries(
        "ws_one",
        sse_one,
        f"WebSocket deliveries/s ≥ {t['ws_over_sse_deliveries']:.2f}× SSE (1 task × {big:,})",
        t["ws_over_sse_deliveries"],
    )
    ws_p99 = _get(results, "ws_one", "latency", "latency_ms", "p99")
    sse_p99 = _get(results, "sse_one", "latency", "latency_ms", "p99")
    name = f"WebSocket p99 ≤ {t['ws_over_sse_p99']:.1f}× SSE with {big:,} subscribers"
    if ws_p99 is None or not sse_p99:
        add(name, "not measured", None)
    else:
        ratio = ws_p99 / sse_p99
        add(
            name,
            f"{ratio:.2f}× ({ws_p99:.0f} ÷ {sse_p99:.0f} ms)",
            ratio <= t["ws_over_sse_p99"],
        )
    kib = _get(results, "ws_one", "memory", "per_connection_kib")
    add(
        f"≤ {t['kib_per_idle_ws']:.0f} KiB RSS per idle WebSocket connection at {big:,}",
        f"{kib:.1f} KiB" if kib is not None else "not measured",
        None if kib is None else kib <= t["kib_per_idle_ws"],
    )
    for kind, label in (("sse", "SSE"), ("ws", "WebSocket")):
        deliveries(
            f"{kind}_many",
            _get(results, f"{kind}_one", "throughput"),
            f"{label}: {big // 10:,} tasks × 10 subscribers ≥ "
            f"{t['many_over_one_task']:.1f}× 1 task × {big:,}",
            t["many_over_one_task"],
        )
    nchan = results.get("nchan") or {}
    if "throughput" in nchan:
        deliveries(
            "sse_one",
            nchan["throughput"],
            "SSE deliveries/s ≥ 1.0× Nchan",
            t["sse_over_nchan"],
        )
        n_p99 = _get(nchan, "latency", "latency_ms", "p99")
        if sse_p99 and n_p99:
            add(
                "SSE p99 ≤ 1.0× Nchan",
                f"{sse_p99 / n_p99:.2f}× ({sse_p99:.0f} ÷ {n_p99:.0f} ms)",
                sse_p99 <= n_p99,
            )
        sse_kib = _get(results, "sse_one", "memory", "per_connection_kib")
        n_kib = _get(nchan, "memory", "per_connection_kib")
        if sse_kib and n_kib:
            add(
                "SSE RSS per idle connection ≤ 1.0× Nchan",
                f"{sse_kib / n_kib:.2f}× ({sse_kib:.1f} ÷ {n_kib:.1f} KiB)",
                sse_kib <= n_kib,
            )


def _retention_section(retention: dict[str, Any]) -> str:
    if "bytes_per_task" not in retention:
        return ""
    empty, full, checks = retention["empty"], retention["full"], retention.get("checks", {})
    n = retention["tasks"]
    lines = [
        "### Retained finished tasks (local store)\n",
        f"{n:,} finished tasks × {retention['events_per_task']} events written through "
        f"`LocalHub.commit` in {retention['write_s']:.1f} s ({retention['file_mib']:.1f} MiB "
        "state file). Each gateway timed from spawn to its first `/readyz` 200; RSS after "
        "`gc.collect()` + `malloc_trim(0)`.\n",
        "| state file | restart to ready | RSS (MiB) |",
        "|---|---|---|",
        f"| empty | {empty['ready_s']:.2f} s | {empty['rss_kib'] / 1024:.1f} |",
        f"| {n:,} finished tasks | {full['ready_s']:.2f} s | {full['rss_kib'] / 1024:.1f} |",
        "",
        f"RSS per retained finished task: **{retention['bytes_per_task']:,.1f} B**; "
        f"restart to ready: **{full['ready_s']:.2f} s**.",
    ]
    if checks:
        lines.append(
            f"Read back from the file, {checks['tried']} tasks: snapshot {checks['snapshot']}, "
            f"`Last-Event-ID: 1` replay {checks['resume']}, 204 at the terminal seq "
            f"{checks['no_content']}; RSS after those reads "
            f"{full['rss_after_reads_kib'] / 1024:.1f} MiB."
        )
    return "\n".join(lines) + "\n"


def render(results: dict[str, Any]) -> str:
    plan = results["plan"]
    big = plan["big"]
    machine = results["machine"]
    out: list[str] = []
    w = out.append
    mode = "`make bench-quick`" if plan["quick"] else "`make bench`"
    w("## Performance\n")
    w(
        f"Measured with {mode} ({results['elapsed_s']:.0f} s, code {machine['code']}) on "
        f"{machine['cpu']}, "
        f"{machine['cores']} cores, {machine['kernel']}, Python {machine['python']} "
        f"(uvloop {machine['uvloop']}); load average at start {machine['loadavg_start']}. "
        "Everything runs on loopback. "
        f"Pinning: {machine['pinning']}. Open-files limit raised to {machine['nofile']} "
        "(setrlimit in each child before exec). The load generator is a separate process "
        "(uvloop, one asyncio Protocol per connection; SSE frames counted by their blank-line "
        "terminator, WebSocket frames by a minimal RFC 6455 reader). "
        "One gateway process (uvicorn + uvloop + httptools), SQLite state file.\n"
    )
    if plan["quick"]:
        w(f"*Quick mode: {big:,} connections instead of 10,000, shorter windows.*\n")

    w("### Targets\n")
    w("| target | measured | met |")
    w("|---|---|---|")
    for row in results["targets"]:
        met = "—" if row["met"] is None else ("met" if row["met"] else "**not met**")
        w(f"| {row['target']} | {row['measured']} | {met} |")
    w("")

    econ = results.get("economy") or {}
    cluster = results.get("cluster") or {}
    if econ.get("single"):
        interval = econ["interval_s"]
        w(f"### Upstream economy (one task, provider interval {interval:g} s)\n")
        w(
            "Requests the upstream saw for the task ÷ poll rounds elapsed "
            "(⌊window ÷ interval⌋ + 1), from the first subscriber's connect "
            "through the subscribe phase and a steady window. Naive = every subscriber "
            "polls the upstream itself at the same interval.\n"
        )
        w("| subscribers | pollcast, 1 node | naive baseline | 3-node cluster |")
        w("|---|---|---|---|")
        cluster_rows = {r["subscribers"]: r for r in cluster.get("single", [])}
        for row in econ["single"]:
            if cluster.get("available") and row["subscribers"] in cluster_rows:
                crow = cluster_rows[row["subscribers"]]
                ccell = (
                    f"{crow['per_round']:.2f} ({crow['upstream_requests']} req / "
                    f"{crow['rounds']} rounds)"
                )
            elif cluster.get("available"):
                ccell = "not run at this count (quick mode)"
            elif "not built" in str(cluster.get("reason", "")):
                ccell = "n/a (cluster mode not built yet)"
            else:
                ccell = "n/a (see below)" if cluster else "—"

            w(
                f"| {row['subscribers']:,} | {row['per_round']:.2f} "
                f"({row['upstream_requests']} req / {row['rounds']} rounds) | "
                f"{row['naive_per_round']:,} | {ccell} |"
            )
        if cluster and not cluster.get("available"):
            w(f"\n3-node cluster: {cluster.get('reason', 'n/a')}.")
        naive = econ.get("naive_measured")
        if naive:
            w(
                f"\nNaive baseline measured, scaled down: {naive['clients']} independent pollers "
                f"→ {naive['per_round']:.1f} upstream requests per round."
            )
        if econ.get("batch"):
            w(
                "\n| batch provider | tasks | batch size | requests per round | "
                "requests per task per round | ideal ⌈N/B⌉/N |"
            )
            w("|---|---|---|---|---|---|")
            for row in econ["batch"]:
                w(
                    f"| {row['provider']} | {row['tasks']:,} | {row['batch_size']} | "
                    f"{row['requests_per_round']:.1f} | {row['per_task_per_round']:.4f} | "
                    f"{row['ideal_per_task_per_round']:.4f} |"
                )
        w("")

    fanout = results.get("cluster_fanout") or {}
    if fanout.get("nodes"):
        w(
            f"### Cluster fan-out ({fanout['nodes'][0]['all_committed']:,} events committed "
            f"for {fanout['tasks']} tasks in {fanout['window_s']:g} s; 3 nodes, "
            f"{fanout['masters']}-master Redis Cluster)\n"
        )
        w(
            "Each task's subscribers are on one node, a third of the tasks per node. "
            "Received = events the node's listener got from Redis "
            "(`pollcast_events_received_total`); its share = events committed for its tasks.\n"
        )
        w("| node | tasks | received | its share | all committed | received ÷ share |")
        w("|---|---|---|---|---|---|")
        for row in fanout["nodes"]:
            ratio = row["received_per_share"]
            w(
                f"| {row['node']} | {row['tasks']} | {row['received']:,.0f} | "
                f"{row['share_committed']:,} | {row['all_committed']:,} | "
                f"{'—' if ratio is None else f'{ratio:.2f}'} |"
            )
        w("")
        if "upstream_requests" in fanout:
            w(
                f"Upstream requests for these tasks in the window: {fanout['upstream_requests']:,}"
                f" (the simulator's count, all nodes together); Redis: "
                f"{fanout['redis_commands_per_s']:,.0f} commands/s over the 3 masters.\n"
            )

    nchan, pushpin = results.get("nchan") or {}, results.get("pushpin") or {}
    sse, ws = results.get("sse_one") or {}, results.get("ws_one") or {}
    sse_many, ws_many = results.get("sse_many") or {}, results.get("ws_many") or {}

    if any((sse, ws, sse_many, ws_many, nchan, pushpin)):

        def tput(part: dict[str, Any], key: str = "throughput") -> str:
            stats = part.get(key)
            if not stats:
                return "—"
            other = stats.get("server_cpu_pct") and stats.get("server_core_other_pct", 0.0)
            return (
                f"{_n(stats['per_s'])} (CPU {stats['server_cpu_pct']:.0f}%, "
                f"{_n(per_cpu_s(stats))} per CPU-s, "
                f"load gen {stats['loadgen_cpu_pct']:.0f}%"
                + (" — load gen above 90 %: a floor" if loadgen_bound(stats) else "")
                + (f", others on its core {other:.0f}%" if other and other >= 5 else "")
                + ")"
            )

        w("### Fan-out throughput (event deliveries per second)\n")
        w(
            "Deliveries counted by the load generator ÷ wall time, while a simulated task "
            f"changes every {plan['fast_step_s'] * 1000:.0f} ms and its provider is polled "
            "as often "
            "(offered load above capacity: the figure is the server's ceiling when its CPU is "
            "~100%). CPU = the server's processes; per CPU-s = deliveries per second of the "
            "server's CPU time (steadier on a shared machine); load gen = the load "
            "generator's own core (above 90 % the figure is flagged: a floor, not the "
            "server's ceiling); "
            '"others on its core" = time other jobs on this shared machine took from the '
            "server's core during the window (when large, the figure is a low estimate). "
            "Many tasks: each task moves through four statuses, two steps per poll interval "
            "(so every poll finds a change); refreshes/s = the task refreshes the simulator "
            "answered in the window, at most one per task per interval.\n"
        )
        w(
            "| scenario | pollcast SSE | pollcast WS | Nchan | Pushpin | pollcast SSE ÷ Nchan | "
            "pollcast SSE ÷ Pushpin |"
        )
        w("|---|---|---|---|---|---|---|")
        w(
            f"| 1 task × {big:,} subscribers | {tput(sse)} | {tput(ws)} | {tput(nchan)} | "
            f"{tput(pushpin)} | {_ratio(_get(sse, 'throughput', 'per_s'), _get(nchan, 'throughput', 'per_s'))} | "  # noqa: E501
            f"{_ratio(_get(sse, 'throughput', 'per_s'), _get(pushpin, 'throughput', 'per_s'))} |"
        )

        def refreshes(part: dict[str, Any]) -> str:
            stats = part.get("throughput") or {}
            if "task_refreshes_per_s" not in stats:
                return ""
            return (
                f", {_n(stats['task_refreshes_per_s'])} refreshes/s of "
                f"{_n(stats['refreshes_due_per_s'])} due"
            )

        interval = _get(sse_many, "interval_s") or _get(ws_many, "interval_s")
        every = f", polled every {interval * 1000:.0f} ms" if interval else ""
        w(
            f"| {big // 10:,} tasks × 10 subscribers (aholo, batch polls{every}) | "
            f"{tput(sse_many)}{refreshes(sse_many)} | {tput(ws_many)}{refreshes(ws_many)} | "
            "— | — | — | — |"
        )
        feeds = [
            f"{name} every {part['feeder_interval_s']:g} s"
            for name, part in (("Nchan", nchan), ("Pushpin", pushpin))
            if part.get("feeder_interval_s")
        ]
        if feeds:
            w(
                "\nPeers are fed by `tests/bench/feeder.py` (polls the simulated task, publishes "
                f"each change): {', '.join(feeds)}. Pushpin's publish API queues without "
                "backpressure; offered 0.02 s changes (~5× its capacity) its delivery "
                "collapsed to ~3,000/s, so it gets the load it can sustain."
            )
        if pushpin.get("handler_settings"):
            settings = ", ".join(f"{k}={v:,}" for k, v in pushpin["handler_settings"].items())
            w(f"\nPushpin `[handler]`: {settings} (defaults 2,500 / 25,000 throttle and drop).")
        w("")

        w("### Delivery latency (poller observed the change → subscriber received it)\n")
        w(
            "`observed_at` in the event (ms, wall clock) vs the load generator's receive time, "
            "same machine clock; p50 / p99 / max. The peers' feeder stamps `observed_at` the "
            "same way before publishing.\n"
        )
        w("| subscribers | pollcast SSE | pollcast WS | Nchan | Pushpin |")
        w("|---|---|---|---|---|")
        for small in sse.get("latency_small", []):
            w(f"| {small['subscribers']:,} | {_lat(small)} | — | — | — |")
        w(
            f"| {big:,} | {_lat(sse.get('latency'))} | {_lat(ws.get('latency'))} | "
            f"{_lat(nchan.get('latency'))} | {_lat(pushpin.get('latency'))} |"
        )
        p99 = _get(sse, "latency", "latency_ms", "p99")
        if nchan or pushpin:
            w(
                f"\np99 ratio pollcast ÷ Nchan: "
                f"{_ratio(p99, _get(nchan, 'latency', 'latency_ms', 'p99'))}; pollcast ÷ Pushpin: "
                f"{_ratio(p99, _get(pushpin, 'latency', 'latency_ms', 'p99'))}\n"
            )
        else:
            w("")

        def mem(part: dict[str, Any]) -> str:
            m = part.get("memory")
            if not m:
                return "—"
            return f"{m['per_connection_kib']:.1f} KiB ({m['connections']:,} conns)"

        w(f"### Memory per idle connection ({big:,} connections)\n")
        w("(RSS after − RSS before) ÷ N from /proc VmRSS (peers: all their processes).\n")
        w("| pollcast SSE | pollcast WS | Nchan | Pushpin | SSE ÷ Nchan | SSE ÷ Pushpin |")
        w("|---|---|---|---|---|---|")
        kib = _get(sse, "memory", "per_connection_kib")
        w(
            f"| {mem(sse)} | {mem(ws)} | {mem(nchan)} | {mem(pushpin)} | "
            f"{_ratio(kib, _get(nchan, 'memory', 'per_connection_kib'))} | "
            f"{_ratio(kib, _get(pushpin, 'memory', 'per_connection_kib'))} |"
        )
        w("")

    churn = results.get("churn") or {}
    if "per_s" in churn:
        w("### Connection churn\n")
        w(
            f"{churn['cycles']:,} SSE connect → snapshot → disconnect cycles in "
            f"{churn['elapsed_s']:.1f} s (32 concurrent clients, errors: {churn['errors']}): "
            f"**{churn['per_s']:,.0f} cycles/s**.\n"
        )
        w("| gateway RSS (MiB) | connections | after | after gc.collect() | after malloc_trim(0) |")
        w("|---|---|---|---|---|")
        w(f"| before | — | {churn['rss_baseline_kib'] / 1024:.1f} | | |")
        for n, r in enumerate(churn.get("rounds") or [churn], 1):
            mib = [r[k] / 1024 for k in ("rss_after_kib", "rss_after_gc_kib", "rss_after_trim_kib")]
            w(f"| round {n} | {r['cycles']:,} | " + " | ".join(f"{v:.1f}" for v in mib) + " |")
        rounds = churn.get("rounds") or []
        if len(rounds) == 2:
            growth = (rounds[1]["rss_after_trim_kib"] - rounds[0]["rss_after_trim_kib"]) / 1024
            w(
                f"\nRound 2 ended {growth:+.1f} MiB from round 1 (after malloc_trim): "
                "a leak would grow by about as much again each round."
            )
        w("")

    poll = results.get("poll") or {}
    if poll.get("single") or poll.get("batch"):
        w("### Poll throughput (gateway → simulator, simulator on its own core)\n")
        w(
            "| provider | tasks | interval | offered | upstream requests/s | task refreshes/s | "
            "gateway CPU | simulator CPU |"
        )
        w("|---|---|---|---|---|---|---|---|")
        rows = [*poll.get("single_by_concurrency", []), poll.get("batch")]
        for row in rows:
            if row:
                kind = (
                    f"single-task, concurrency {row['concurrency']}"
                    if "concurrency" in row
                    else "batch of 100"
                )
                w(
                    f"| {row['provider']} ({kind}) | "
                    f"{row['tasks']:,} | {row['interval_s']:g} s | "
                    f"{_n(row['offered_per_s'])} refreshes/s | {_n(row['requests_per_s'])} | "
                    f"{_n(row['refreshes_per_s'])} | {row['gateway_cpu_pct']:.0f}% | "
                    f"{row.get('sim_cpu_pct', 0):.0f}% |"
                )
        w("")

    w(_retention_section(results.get("retention") or {}))
    w(_predict_section(results.get("predict") or {}))
    w(_errors_section(results))
    return "\n".join(out)


def _predict_row(name: str, row: dict[str, Any]) -> str:
    fixed, pred = row["fixed"], row["predictive"]
    base = fixed["base_s"]
    best = row.get("best_ratio")
    if row["met"]:
        verdict = "met"
    elif row.get("feasible") is False:
        verdict = "**not met**: not reachable (best possible ratio > 0.5)"
    else:
        verdict = "**not met**"
    return (
        f"| {name} | {fixed['tasks']} | {base:g} s | {fixed['requests_per_task']:.1f} | "
        f"{pred['requests_per_task']:.1f} | **{row['request_ratio']:.2f}×** | "
        f"{'—' if best is None else f'{best:.2f}×'} | "
        f"{fixed['delay_p50_s']:.2f} / {fixed['delay_p95_s']:.2f} s | "
        f"{pred['delay_p50_s']:.2f} / {pred['delay_p95_s']:.2f} s "
        f"({pred['delay_p95_s'] / base:.2f}×) | {100 * pred.get('late_share', 0.0):.1f} % | "
        f"{verdict} | {_seeds(row.get('seeds'))} |"
    )


def _seeds(seeds: dict[str, Any] | None) -> str:
    if not seeds:
        return "—"
    (r0, r1), (p0, p1) = seeds["ratio"], seeds["p95_intervals"]
    return f"{seeds['met']}/{seeds['of']}: {r0:.2f}–{r1:.2f}×, p95 {p0:.2f}–{p1:.2f}×"


def _predict_section(predict: dict[str, Any]) -> str:
    if not predict.get("simulated"):
        return ""
    out = [
        "### Predictive polling (requests per task, delay from a task's end to its "
        "terminal event)\n",
        "Target: ≤ 0.5× the requests of a fixed poller at the base interval, at a p95 "
        "detection delay ≤ 1.5× the base interval. Simulated: the real lane planner over "
        "a fake clock, tasks arriving every 3 s with seeded log-normal durations. Live: "
        "a gateway against the simulator, one lane per policy, requests as the simulator "
        "counted them. *best*: the lowest ratio a schedule of the cheapest shape reaches "
        "on the exact distribution at that p95 (above 0.5×: the target is out of reach by "
        "construction). *late*: the share of tasks seen more than 1.5 base intervals "
        "after their end (a p95 within the bound allows 5 %). *seeds*: the target met "
        "in how many of five draws of the durations (the row's own and the next four), "
        "with the range of the ratio and of the p95 delay in base intervals.\n",
        "| scenario | tasks | base | fixed req/task | predictive req/task | ratio | best | "
        "fixed delay p50 / p95 | predictive delay p50 / p95 | late | target | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in predict["simulated"]:
        out.append(_predict_row("sim: " + row["scenario"]["name"], row))
    live = predict.get("live") or {}
    if live.get("fixed"):
        out.append(_predict_row(live["scenario"]["name"], live))
        unfinished = live["fixed"].get("unfinished", 0) + live["predictive"].get("unfinished", 0)
        if unfinished:
            out.append(f"\n{unfinished} live task(s) not seen ending in time.")
    out.append("")
    return "\n".join(out)


def _errors_section(results: dict[str, Any]) -> str:
    errors = [e for e in (_error(results, k) for k in results) if e is not None]
    if not errors:
        return ""
    return "### Errors\n\n" + "\n".join(f"- {e}" for e in errors) + "\n"
