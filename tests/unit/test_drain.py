"""SIGTERM: every open stream gets its ``server_draining`` notice before uvicorn
shuts down (its shutdown closes every WebSocket with 1012 at once)."""

from __future__ import annotations

import asyncio
import signal
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn

from gateway import server as server_module
from gateway.server import DrainingServer


class Gateway(SimpleNamespace):
    def __init__(self) -> None:
        super().__init__(draining=False, feeds={"a stream"}, drains=0)

    def drain(self) -> None:
        self.drains += 1
        self.draining = True


def drainer(gateway: Gateway) -> DrainingServer:
    server = DrainingServer(uvicorn.Config(app=lambda *_: None), gateway)  # type: ignore[arg-type]
    server._loop = asyncio.get_running_loop()
    return server


async def test_uvicorn_shuts_down_once_the_streams_have_ended() -> None:
    gateway = Gateway()
    server = drainer(gateway)
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.sleep(0.1)
    assert gateway.drains == 1
    assert not server.should_exit  # a stream is still writing its notice
    gateway.feeds.clear()  # it has, and ended
    await asyncio.sleep(0.1)
    assert server.should_exit
    assert server._captured_signals == []  # a completed drain exits 0, not by signal


async def test_a_stream_that_never_ends_holds_shutdown_back_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_module, "DRAIN_WAIT_S", 0.2)
    gateway = Gateway()
    server = drainer(gateway)
    loop: Any = asyncio.get_running_loop()
    started = loop.time()
    server.handle_exit(signal.SIGTERM, None)
    for _ in range(100):
        if server.should_exit:
            break
        await asyncio.sleep(0.01)
    assert server.should_exit and 0.15 <= loop.time() - started < 0.6


async def test_a_second_signal_goes_straight_to_uvicorn() -> None:
    gateway = Gateway()
    server = drainer(gateway)
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.sleep(0.05)
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit  # without waiting for the stream
    assert gateway.drains == 1
