"""The simulator is cheap enough to be everyone's upstream: a throughput floor.

The load comes from plain keep-alive HTTP/1.1 over asyncio streams rather
than httpx: one httpx client tops out far below the simulator (about 2,000
requests/s on a core, and less with many concurrent connections), so it
would measure itself. Server and client share this process (and its GIL)
here, so the floor is deliberately low; a simulator on its own core answers
well over 10,000 status requests per second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.integration.sim_server import running_sim

pytestmark = pytest.mark.integration

CONNECTIONS = 16
DURATION_S = 0.6
FLOOR_PER_S = 1000


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with running_sim() as url:
        yield url


async def keep_alive_load(host: str, port: int, request: bytes, stop_at: float) -> int:
    """Send ``request`` over one connection until ``stop_at``; the number of 200s."""
    answered = 0
    async with await anyio.connect_tcp(host, port) as stream:
        buffered = b""
        while time.monotonic() < stop_at:
            await stream.send(request)
            while b"\r\n\r\n" not in buffered:
                buffered += await stream.receive()
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head[:40]
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(buffered) < length:
                buffered += await stream.receive()
            buffered = buffered[length:]
            answered += 1
    return answered


async def test_status_requests_per_second(sim_url: str) -> None:
    async with httpx.AsyncClient(base_url=sim_url) as http:
        await http.post("/_sim/reset")
        created = await http.post(
            "/_sim/tasks",
            json={"provider": "videoproc", "timeline": [{"at": 0, "state": "running"}]},
        )
        task_id = created.json()["task_id"]
    url = httpx.URL(sim_url)
    assert url.port is not None
    request = (
        f"GET /videoproc/api/status/{task_id} HTTP/1.1\r\nHost: {url.netloc.decode()}\r\n\r\n"
    ).encode()
    counts: list[int] = []

    async def one_connection(stop_at: float) -> None:
        counts.append(await keep_alive_load(url.host, url.port or 80, request, stop_at))

    started = time.monotonic()
    async with anyio.create_task_group() as group:
        for _ in range(CONNECTIONS):
            group.start_soon(one_connection, started + DURATION_S)
    rate = sum(counts) / (time.monotonic() - started)
    print(f"simulator: {rate:.0f} status requests/s ({CONNECTIONS} keep-alive connections)")
    assert rate >= FLOOR_PER_S
    async with httpx.AsyncClient(base_url=sim_url) as http:
        stats = (await http.get("/_sim/stats")).json()
    assert stats["requests"]["videoproc"] == sum(counts)
