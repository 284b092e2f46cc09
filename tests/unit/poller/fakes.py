"""A fake clock and an in-memory upstream for driving the poller without sockets or sleeps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import parse_config
from gateway.poller.provider import ProviderRuntime
from gateway.poller.schedule import Entry
from gateway.providers.base import UpstreamResponse
from gateway.sim.credentials import SIM_CREDENTIALS

START = 1_800_000_000.0  # wall clock of every test's first instant


class FakeClock:
    """Wall and monotonic time that only move when told; ``sleep`` moves them."""

    def __init__(self, wall: float = START, mono: float = 1000.0) -> None:
        self._wall = wall
        self._mono = mono
        self.slept: list[float] = []

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would


@dataclass
class Call:
    method: str
    url: str
    params: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout_s: float

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"null")


Handler = Callable[[Call], UpstreamResponse]


@dataclass
class FakeUpstream:
    """The upstream transport's protocol, answered in memory by ``handler``.

    ``latency_s`` is added to ``clock`` for each request, as if the upstream
    took that long to answer.
    """

    handler: Handler
    clock: FakeClock | None = None
    latency_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # wall clock of each call

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: tuple[tuple[str, str], ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
        timeout_s: float,
    ) -> UpstreamResponse:
        call = Call(method, url, params, headers, body, timeout_s)
        self.calls.append(call)
        if self.clock is not None:
            self.times.append(self.clock.wall())
        if self.clock is not None and self.latency_s:
            self.clock.advance(self.latency_s)
        await asyncio.sleep(0)
        return self.handler(call)


def response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> UpstreamResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return UpstreamResponse(status_code=status, headers=headers or {}, body=raw)


def server_error(retry_after: str | None = None) -> UpstreamResponse:
    return response(b"<html>500</html>", 500, {"retry-after": retry_after} if retry_after else {})


def aholo_listing(ids: Sequence[str], status: int = 2) -> UpstreamResponse:
    """aholo's task list reply: every id in ``status`` (2 running, 3 succeeded)."""
    tasks = [{"taskId": i, "status": status} for i in ids]
    return response({"c": "0", "d": tasks, "m": None, "f": ""})


def videoproc_status(
    task_id: str, status: str = "processing", progress: int = 45
) -> UpstreamResponse:
    return response(
        {"task_id": task_id, "status": status, "progress": progress, "message": "", "files": {}}
    )


def runtime(kind: str, **overrides: Any) -> ProviderRuntime:
    """The runtime of one provider as a gateway configured with ``overrides`` builds it."""
    creds = SIM_CREDENTIALS.provider_credentials("http://upstream.test")[kind]
    doc = {
        "backend": {"kind": "local", "path": ":memory:"},
        "providers": {kind: {"kind": kind, **creds, **overrides}},
    }
    return parse_config(doc, env={}).runtimes()[kind]


def entries(provider: str, n: int, *, interval_s: float = 1.0, prefix: str = "T") -> list[Entry]:
    return [
        Entry(task=f"{provider}:{prefix}{i:04d}", interval_s=interval_s, deadline_at=START + 86400)
        for i in range(n)
    ]
