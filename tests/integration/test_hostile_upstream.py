"""Upstreams that attack the gateway: endless heads, bombs, drips, cut-off bodies.

Each hostile upstream is a server this file writes, over real sockets. The
first tests aim at the transport itself; the last ones at a live gateway
process, reading what its subscribers see, its ``/healthz`` latency and its
memory (``/proc/<pid>/status``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.exceptions import UpstreamError, UpstreamTimeout
from gateway.poller.upstream import AiohttpUpstreamClient, HttpSettings
from tests.integration.conftest import events_url
from tests.integration.gateway_server import GatewayProcess
from tests.scripted_upstream import listening, read_request, reset

pytestmark = pytest.mark.integration

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

RUNNING = b'{"status":"processing","progress":50}'
HEAD_FLOOD_BYTES = 20 * 1024 * 1024
BOMB_DECODED = 10 * 1024 * 1024
BOMB = gzip.compress(b"\0" * BOMB_DECODED, compresslevel=9)  # ~10 KB on the wire


async def flood_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """20 MB of short, valid, repeated header lines, and no end of the head."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    line = b"x-flood: aaaaaaaaaaaaaaaa\r\n"
    block = line * (65536 // len(line))
    sent = 0
    while sent < HEAD_FLOOD_BYTES:
        writer.write(block)
        sent += len(block)
        await writer.drain()


def gzip_bomb(served: list[float]) -> Behaviour:
    """A small gzip body that inflates to 10 MB (and says it is JSON), to every request."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            served.append(time.monotonic())
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(BOMB), BOMB)
            )
            await writer.drain()

    return behave


async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A reply that never ends: one byte every 100 ms."""
    await read_request(reader)
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b" " * 1000
    for byte in reply:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.1)


def cut_off(reply: bytes, *, rst: bool) -> Behaviour:
    """Answer every request with ``reply`` and end the connection (RST or FIN)."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(0.05)  # the bytes are out before the end of the connection
        if rst:
            reset(writer)
        else:
            writer.close()

    return behave


def counted(behave: Behaviour, hits: list[float]) -> Behaviour:
    """``behave``, noting when each connection came."""

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(time.monotonic())
        await behave(reader, writer)

    return count


def status_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api/status/t1"


# -- the transport alone -----------------------------------------------------------


_HEALTHZ_PROBE = """
import http.client, json, sys, time, urllib.parse
url, n, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
parts = urllib.parse.urlsplit(url)
out = []
for _ in range(n):
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    started = time.monotonic()
    conn.request("GET", parts.path)
    reply = conn.getresponse()
    reply.read()
    out.append(time.monotonic() - started)
    assert reply.status == 200, reply.status
    conn.close()
    time.sleep(gap)
print(json.dumps(out))
"""


async def _healthz_latencies(url: str, n: int, gap_s: float) -> list[float]:
    """Each ``GET url`` timed by a separate Python process (a fresh connection each)."""
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HEALTHZ_PROBE,
        url,
        str(n),
        str(gap_s),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await probe.communicate()
    assert probe.returncode == 0
    latencies: list[float] = json.loads(out)
    return latencies


@pytest.mark.solo
async def test_a_flood_of_header_lines_is_refused_within_a_second() -> None:
    client = AiohttpUpstreamClient()
    async with listening(flood_headers) as port:
        started = time.monotonic()
        with pytest.raises(UpstreamError, match="more than 128 header lines"):
            await client.request("GET", status_url(port), timeout_s=10.0)
        elapsed = time.monotonic() - started
    await client.aclose()
    assert elapsed < 1.0


async def test_an_endless_header_line_is_refused_at_the_limit() -> None:
    async def long_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx-long: " + b"a" * 100_000)
        await writer.drain()
        await asyncio.sleep(5)

    client = AiohttpUpstreamClient(HttpSettings(max_header_bytes=4096))
    async with listening(long_line) as port:
        with pytest.raises(UpstreamError, match="line longer than 4096 bytes"):
            await client.request("GET", status_url(port), timeout_s=3.0)
    await client.aclose()


async def test_a_gzip_bomb_is_refused_at_the_decoded_limit_without_inflating_it() -> None:
    import tracemalloc

    client = AiohttpUpstreamClient(HttpSettings(max_body_bytes=1024 * 1024))
    async with listening(gzip_bomb([])) as port:
        tracemalloc.start()
        try:
            with pytest.raises(UpstreamError, match=r"larger than 1048576 bytes"):
                await client.request("GET", status_url(port), timeout_s=5.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    await client.aclose()
    assert len(BOMB) < 20_000
    assert peak < 4 * 1024 * 1024, f"{peak} bytes allocated to refuse a {len(BOMB)}-byte bomb"


@pytest.mark.solo
async def test_a_slow_drip_ends_at_the_request_timeout() -> None:
    client = AiohttpUpstreamClient()
    async with listening(drip) as port:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"no response within 0\.5 s"):
            await client.request("GET", status_url(port), timeout_s=0.5)
        elapsed = time.monotonic() - started
    await client.aclose()
    assert 0.45 <= elapsed < 0.9


CUT_SHORT = {
    "content-length not reached, FIN": (
        b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n" + RUNNING,
        False,
    ),
    "content-length not reached, RST": (
        b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n" + RUNNING,
        True,
    ),
    "chunked stream cut, FIN": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n"
        % (len(RUNNING), RUNNING),
        False,
    ),
    "chunked stream cut, RST": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n"
        % (len(RUNNING), RUNNING),
        True,
    ),
    # A complete JSON document, then a reset: without the FIN it is not a body.
    "until close, RST": (b"HTTP/1.1 200 OK\r\n\r\n" + RUNNING + b"   ", True),
    "gzip until close, RST": (
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n\r\n" + gzip.compress(RUNNING),
        True,
    ),
}


@pytest.mark.parametrize("case", sorted(CUT_SHORT))
async def test_a_body_cut_short_is_a_failure_never_a_reply(case: str) -> None:
    reply, rst = CUT_SHORT[case]
    client = AiohttpUpstreamClient()
    async with listening(cut_off(reply, rst=rst)) as port:
        with pytest.raises(UpstreamError, match=r"before (a|the response was) complete"):
            await client.request("GET", status_url(port), timeout_s=3.0)
    await client.aclose()


async def test_a_body_ended_by_a_clean_close_is_complete() -> None:
    client = AiohttpUpstreamClient()
    async with listening(cut_off(b"HTTP/1.1 200 OK\r\n\r\n" + RUNNING, rst=False)) as port:
        reply = await client.request("GET", status_url(port), timeout_s=3.0)
    await client.aclose()
    assert (reply.status_code, reply.body) == (200, RUNNING)


# -- a live gateway ----------------------------------------------------------------


@contextmanager
def gateway_on(port: int, workdir: Path, **http: Any) -> Iterator[GatewayProcess]:
    doc = {
        "backend": {"kind": "local", "path": ":memory:"},
        "polling": {"grace_s": 5.0},
        "providers": {
            "videoproc": {
                "kind": "videoproc",
                "base_url": f"http://127.0.0.1:{port}",
                "interval_s": 0.2,
                "max_interval_s": 0.4,
                "backoff_max_s": 0.4,
                "timeout_s": 3.0,
                **http,
            }
        },
    }
    gateway = GatewayProcess(doc, workdir).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def read_events(client: httpx.AsyncClient, url: str, seconds: float) -> list[dict[str, Any]]:
    """Every SSE event of ``url`` for ``seconds``."""
    out: list[dict[str, Any]] = []

    async def collect() -> None:
        async with client.stream("GET", url) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data:"):
                    out.append(json.loads(line[5:]))

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(collect(), seconds)
    return out


@pytest.mark.solo
async def test_live_a_header_flood_is_refused_while_healthz_stays_fast(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    floods: list[float] = []
    async with listening(counted(flood_headers, floods)) as port:
        with gateway_on(port, tmp_path) as gateway:
            reader = asyncio.create_task(
                read_events(client, events_url(gateway.url, "videoproc:t1"), 3.0)
            )
            await asyncio.sleep(0.3)
            window = time.monotonic()
            # Timed from a process of its own: this one is busy writing the floods,
            # and its own pauses must not count as the gateway's.
            latencies = await _healthz_latencies(f"{gateway.url}/healthz", 50, 0.03)
            during = [t for t in floods if t >= window]
            events = await reader
    # Each poll met a fresh 20 MB flood while /healthz was being timed.
    assert len(during) >= 3, floods
    notices = [e for e in events if e.get("event") == "notice"]
    assert notices and notices[0]["code"] == "upstream_network", events
    assert "header lines" in notices[0]["message"]
    assert not [e for e in events if e.get("event") in ("state", "progress")], events
    assert max(latencies) < 0.05, f"slowest /healthz {max(latencies) * 1000:.0f} ms"


@pytest.mark.solo
async def test_live_a_gzip_bomb_is_a_fault_and_the_gateway_does_not_grow(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    bombs: list[float] = []
    async with listening(gzip_bomb(bombs)) as port:
        with gateway_on(port, tmp_path, max_body_bytes=1024 * 1024) as gateway:
            assert gateway.proc is not None
            pid = gateway.proc.pid
            before = rss_kib(pid)
            events = await read_events(client, events_url(gateway.url, "videoproc:t1"), 3.0)
            after, peak = rss_kib(pid), rss_kib(pid, "VmHWM")
    assert len(bombs) >= 3  # polled again and again, a bomb each time
    notices = [e for e in events if e.get("event") == "notice"]
    assert notices and notices[0]["code"] == "upstream_network", events
    assert "larger than 1048576 bytes" in notices[0]["message"]
    assert not [e for e in events if e.get("event") in ("state", "progress")], events
    assert after - before < 20 * 1024, f"RSS {before} → {after} KiB"
    assert peak - before < 20 * 1024, f"RSS {before} KiB, peak {peak} KiB"


async def test_live_a_valid_json_prefix_then_a_reset_changes_no_state(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    behave = cut_off(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + RUNNING, rst=True
    )
    async with listening(behave) as port:
        with gateway_on(port, tmp_path) as gateway:
            events = await read_events(client, events_url(gateway.url, "videoproc:t1"), 2.5)
    notices = [e for e in events if e.get("event") == "notice"]
    assert notices and notices[0]["code"] == "upstream_network", events
    assert "reset before the response was complete" in notices[0]["message"]
    assert not [e for e in events if e.get("event") in ("state", "progress")], events
