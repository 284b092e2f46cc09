"""A live simulator for integration tests: uvicorn in a background thread on a free port.

Usage::

    with running_sim() as base_url:          # "http://127.0.0.1:53117"
        httpx.get(f"{base_url}/_sim/stats")

    clock = ManualClock()
    with running_sim(simulator=Simulator(clock=clock)) as base_url:
        ...                                   # timelines advance only with clock.advance()
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from gateway.sim import SimConfig, Simulator
from gateway.sim.server import uvicorn_config

__all__ = ["ManualClock", "running_sim"]

STARTUP_TIMEOUT_S = 10.0


class ManualClock:
    """A monotonic clock that moves only when told to (safe to read from the server thread)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def running_sim(
    config: SimConfig | None = None, *, simulator: Simulator | None = None
) -> Iterator[str]:
    """Serve the simulator on 127.0.0.1 at a free port; yield its base URL.

    The server runs uvicorn (uvloop + httptools) in a daemon thread and is
    shut down when the block exits. ``simulator`` injects prepared state
    (e.g. with a :class:`ManualClock`); its config wins over ``config``.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        server = uvicorn.Server(
            uvicorn_config("127.0.0.1", port, config, simulator=simulator, configure_logging=False)
        )
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name=f"sim:{port}", daemon=True
        )
        thread.start()
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"simulator did not start on port {port}")
                time.sleep(0.01)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=STARTUP_TIMEOUT_S)
    finally:
        listener.close()
