"""deploy/nginx.conf: ``nginx -t`` on it, its shape, and real traffic through it.

The traffic tests run the production file (rendered with local addresses by
tests/deploy/nginx.py) in front of one live gateway wired to the simulator,
and check what the file is tuned for: SSE and NDJSON events pass through as
they happen (no buffering, no compression), WebSockets upgrade, ordinary JSON
is compressed, and idempotent requests fail over past a dead node.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from httpx_sse import aconnect_sse

from gateway.config import parse_config
from gateway.server import uvicorn_config
from gateway.web.app import create_app
from tests.deploy.nginx import (
    NGINX_CONF,
    Directive,
    RunningNginx,
    nginx_seconds,
    nginx_test,
    parse_nginx_conf,
    render_nginx_conf,
    running_nginx,
)
from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import free_port, running_gateway, sim_config
from tests.integration.readers import read_sse, read_ws, transitions
from tests.integration.sim_server import running_sim

COMPOSE = NGINX_CONF.parent / "compose.yaml"
STREAM_PATHS = ("/v1/tasks/videoproc/abc/events", "/v1/events")
# Long enough apart that buffering (everything at the end) cannot pass for streaming.
TIMELINE = [
    {"at": 0, "state": "running", "progress": 10},
    {"at": 1.0, "state": "running", "progress": 50},
    {"at": 2.5, "state": "succeeded"},
]
FIRST_EVENT_WITHIN_S = 1.0


# -- the file itself ----------------------------------------------------------


def test_nginx_t_accepts_the_production_file(tmp_path: Path) -> None:
    config = tmp_path / "nginx.conf"
    upstreams = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    config.write_text(
        render_nginx_conf(
            NGINX_CONF.read_text(), workdir=tmp_path, listen_port=free_port(), upstreams=upstreams
        )
    )
    result = nginx_test(config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def _locations(server: Directive) -> dict[str, Directive]:
    return {" ".join(loc.args): loc for loc in server.children("location")}


def _stream_location(server: Directive, path: str) -> Directive:
    """The location nginx would pick for ``path`` (exact, then regex, then prefix)."""
    locations = server.children("location")
    for loc in locations:
        if loc.args[0] == "=" and loc.args[1] == path:
            return loc
    for loc in locations:
        if loc.args[0] == "~" and re.search(loc.args[1], path):
            return loc
    return max(
        (loc for loc in locations if len(loc.args) == 1 and path.startswith(loc.args[0])),
        key=lambda loc: len(loc.args[0]),
    )


def test_nginx_conf_is_tuned_for_streams() -> None:
    http = parse_nginx_conf(NGINX_CONF.read_text()).child("http")
    server = http.child("server")

    # Upstream: HTTP/1.1 with keep-alive, closed before the gateway's own idle cutoff.
    upstream = http.child("upstream")
    assert upstream.args == ["pollcast"]
    assert upstream.children("keepalive")
    assert server.child("proxy_http_version").args == ["1.1"]
    assert server.values("proxy_set_header").count(["Connection", ""]) == 1
    config = parse_config({}, env={})
    gateway_idle_s = uvicorn_config(create_app(config), config).timeout_keep_alive
    assert nginx_seconds(upstream.child("keepalive_timeout").args[0]) < gateway_idle_s

    # Failover for idempotent requests only.
    next_upstream = server.child("proxy_next_upstream").args
    assert {"error", "timeout", "http_503"} <= set(next_upstream)
    assert "non_idempotent" not in next_upstream
    # The gateways' X-Accel-Buffering is honoured.
    ignored = [a for d in http.children("proxy_ignore_headers") for a in d.args]
    assert "X-Accel-Buffering" not in ignored

    # Streams: unbuffered, uncompressed, long read timeout (heartbeats every 15 s).
    for path in STREAM_PATHS:
        loc = _stream_location(server, path)
        assert loc.child("proxy_pass").args == ["http://pollcast"], path
        assert loc.child("proxy_buffering").args == ["off"], path
        assert loc.child("gzip").args == ["off"], path
        assert nginx_seconds(loc.child("proxy_read_timeout").args[0]) >= 600, path
    gzip_types = [t for d in http.children("gzip_types") for t in d.args]
    assert "text/event-stream" not in gzip_types and "application/x-ndjson" not in gzip_types
    assert "application/json" in gzip_types

    # WebSocket: the upgrade pair, and the headers a location no longer inherits.
    ws = _locations(server)["= /v1/ws"]
    headers = dict((name, value) for name, value in ws.values("proxy_set_header"))
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"
    assert {"Host", "X-Forwarded-For", "X-Forwarded-Proto"} <= set(headers)
    assert nginx_seconds(ws.child("proxy_read_timeout").args[0]) >= 600


def test_nginx_upstreams_are_the_compose_gateways() -> None:
    http = parse_nginx_conf(NGINX_CONF.read_text()).child("http")
    servers = [args[0] for args in http.child("upstream").values("server")]
    compose = yaml.safe_load(COMPOSE.read_text())
    gateways = sorted(name for name in compose["services"] if name.startswith("gateway"))
    assert servers == [f"{name}:8000" for name in gateways]
    assert len(servers) == 3
    assert ["80"] in http.child("server").values("listen")


# -- real traffic through nginx -------------------------------------------------


@dataclass(frozen=True)
class Edge:
    sim: str  # simulator base URL
    gateway: str  # the gateway, direct
    nginx: RunningNginx  # nginx in front of it

    @property
    def url(self) -> str:
        return self.nginx.url


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """Simulator → one gateway → nginx (the production file), all live."""
    with (
        running_sim() as sim,
        running_gateway(sim_config(sim)) as (gateway, _gw),
        running_nginx(tmp_path_factory.mktemp("nginx"), [gateway.removeprefix("http://")]) as nginx,
    ):
        yield Edge(sim, gateway, nginx)


async def _timed_sse(
    client: httpx.AsyncClient, url: str
) -> tuple[httpx.Headers, list[tuple[float, dict[str, Any]]]]:
    started = time.monotonic()
    events: list[tuple[float, dict[str, Any]]] = []
    async with aconnect_sse(client, "GET", url, headers={"Accept-Encoding": "gzip"}) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            if sse.data:
                events.append((time.monotonic() - started, {**json.loads(sse.data), "_id": sse.id}))
        return source.response.headers, events


async def _timed_ndjson(
    client: httpx.AsyncClient, url: str
) -> tuple[httpx.Headers, list[tuple[float, dict[str, Any]]]]:
    started = time.monotonic()
    events: list[tuple[float, dict[str, Any]]] = []
    headers = {"Accept": "application/x-ndjson", "Accept-Encoding": "gzip"}
    async with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line:
                events.append((time.monotonic() - started, json.loads(line)))
        return response.headers, events


def _assert_streamed_live(events: list[tuple[float, dict[str, Any]]]) -> None:
    """Each event arrived when it happened: the first at once, the last ~1 s after the
    progress before it."""
    kinds = [e["event"] for _, e in events]
    assert kinds[0] == "snapshot" and events[-1][1]["state"] == "succeeded", kinds
    assert events[0][0] < FIRST_EVENT_WITHIN_S, events[0][0]
    progressed = next(t for t, e in events if e["event"] == "progress" and e["progress"] == 50)
    # Buffered by the proxy, everything would land together at the end.
    assert events[-1][0] - progressed > 0.4, [t for t, _ in events]


async def test_sse_events_pass_through_nginx_as_they_happen(
    edge: Edge, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, edge.sim, "videoproc", TIMELINE)
    headers, events = await _timed_sse(client, events_url(edge.url, task))
    assert headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in headers  # asked for gzip: streams are never compressed
    assert headers["cache-control"] == "no-cache"
    _assert_streamed_live(events)
    assert [e["_id"] for _, e in events] == [str(e["seq"]) for _, e in events]

    # A reconnect through nginx with the last id gets 204: the stream is over.
    last = events[-1][1]["_id"]
    again = await client.get(events_url(edge.url, task), headers={"Last-Event-ID": last})
    assert again.status_code == 204


async def test_multiplexed_sse_passes_through_nginx(edge: Edge, client: httpx.AsyncClient) -> None:
    a = await create_sim_task(
        client,
        edge.sim,
        "videoproc",
        [{"at": 0, "state": "running"}, {"at": 0.5, "state": "succeeded"}],
    )
    b = await create_sim_task(client, edge.sim, "ailab", [{"at": 0, "state": "succeeded"}])
    headers, events = await _timed_sse(client, f"{edge.url}/v1/events?tasks={a},{b}")
    assert "content-encoding" not in headers
    assert events[0][0] < FIRST_EVENT_WITHIN_S
    assert {e["task"] for _, e in events if e.get("terminal")} == {a, b}
    assert all(e["_id"].startswith("c1.") for _, e in events if e["event"] != "notice")


async def test_ndjson_lines_pass_through_nginx_as_they_happen(
    edge: Edge, client: httpx.AsyncClient
) -> None:
    task = await create_sim_task(client, edge.sim, "videoproc", TIMELINE)
    headers, events = await _timed_ndjson(client, events_url(edge.url, task))
    assert headers["content-type"].startswith("application/x-ndjson")
    assert "content-encoding" not in headers
    _assert_streamed_live(events)


async def test_websocket_upgrades_through_nginx(edge: Edge, client: httpx.AsyncClient) -> None:
    task = await create_sim_task(client, edge.sim, "videoproc", TIMELINE)
    # Observed once first, so both subscribers start from the same snapshot.
    provider, _, task_id = task.partition(":")
    first = await client.get(f"{edge.gateway}/v1/tasks/{provider}/{task_id}")
    assert first.json()["seq"] == 1
    via_nginx, direct = await asyncio.gather(
        read_ws(edge.url.replace("http", "ws", 1) + "/v1/ws", [task]),
        read_ws(edge.gateway.replace("http", "ws", 1) + "/v1/ws", [task]),
    )
    assert via_nginx[0] == {"event": "subscribed", "tasks": [task]}
    assert via_nginx[-1]["state"] == "succeeded"
    # The proxy passes frames intact: the same transitions as a direct subscriber.
    assert transitions(via_nginx) == transitions(direct)


async def test_ordinary_json_is_compressed_by_nginx(edge: Edge, client: httpx.AsyncClient) -> None:
    via_nginx = await client.get(f"{edge.url}/v1/providers", headers={"Accept-Encoding": "gzip"})
    direct = await client.get(f"{edge.gateway}/v1/providers")
    assert via_nginx.status_code == 200
    assert via_nginx.headers["content-encoding"] == "gzip"
    assert len(direct.content) >= 1024  # above gzip_min_length, so this is a real check
    assert via_nginx.json().keys() == direct.json().keys()

    own = await client.get(f"{edge.url}/_nginx/healthz")
    assert own.status_code == 200 and own.text == "ok\n"


async def test_metrics_stay_internal(edge: Edge, client: httpx.AsyncClient) -> None:
    direct = await client.get(f"{edge.gateway}/metrics")
    assert direct.status_code == 200  # scraped per node …
    assert (await client.get(f"{edge.url}/metrics")).status_code == 404  # … never via the edge


async def test_idempotent_requests_fail_over_past_a_dead_node(
    edge: Edge, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    live = edge.gateway.removeprefix("http://")
    with running_nginx(tmp_path / "nginx", [dead, live]) as nginx:
        replies = [await client.get(f"{nginx.url}/healthz") for _ in range(6)]
        log = nginx.error_log()
    assert [r.status_code for r in replies] == [200] * 6
    assert all(r.json()["status"] == "ok" for r in replies)
    assert "connect() failed" in log and dead in log  # the dead node was tried


async def test_new_streams_skip_a_draining_node(
    edge: Edge, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    live = edge.gateway.removeprefix("http://")
    with running_gateway(sim_config(edge.sim)) as (draining_url, draining):
        # No stream is open on it, so this only flips it to refusing (503) new ones.
        draining.drain()
        refused = await client.get(events_url(draining_url, "videoproc:any"))
        assert refused.status_code == 503
        draining_node = draining_url.removeprefix("http://")
        with running_nginx(tmp_path / "nginx", [draining_node, live]) as nginx:
            tasks = [
                await create_sim_task(
                    client, edge.sim, "videoproc", [{"at": 0, "state": "succeeded"}]
                )
                for _ in range(4)
            ]
            streams = [await read_sse(client, events_url(nginx.url, task)) for task in tasks]
            access = (nginx.workdir / "access.log").read_text()
    assert [s[-1]["state"] for s in streams] == ["succeeded"] * 4
    # The draining node was asked first and nginx moved on to the live one.
    assert f"upstream={draining_node}, {live}" in access
