"""A live simulator for integration tests: uvicorn in a background thread on a free port.

Usage::

    with running_sim() as base_url:          # "http://127.0.0.1:53117"
        httpx.get(f"{base_url}/_sim/stats")

    clock = ManualClock()
    with running_sim(simulator=Simulator(clock=clock)) as base_url:
        ...                                   # timelines advance only with clock.advance()

A simulator started without one runs on a :class:`SimClock`: monotonic time
that stands still while a gateway of this process starts (:func:`timelines_held`,
used by tests/integration/gateway_server.py). Start-up takes milliseconds on an
idle machine and seconds on a loaded one; a timeline's ``at`` counts from the
moment the gateway can poll, so a test's timeline means the same either way.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import uvicorn

from gateway.sim import SimConfig, Simulator
from gateway.sim.server import uvicorn_config

__all__ = ["ManualClock", "SimClock", "running_sim", "timelines_held"]

STARTUP_TIMEOUT_S = 10.0


class ManualClock:
    """A monotonic clock that moves only when told to (safe to read from the server thread)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SimClock:
    """``time.monotonic`` less the time spent held (safe to read from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds = 0
        self._held_since = 0.0
        self._lost = 0.0

    def __call__(self) -> float:
        with self._lock:
            now = self._held_since if self._holds else time.monotonic()
            return now - self._lost

    @contextmanager
    def held(self) -> Iterator[None]:
        """Stand still inside the block (blocks may nest and overlap)."""
        with self._lock:
            if self._holds == 0:
                self._held_since = time.monotonic()
            self._holds += 1
        try:
            yield
        finally:
            with self._lock:
                self._holds -= 1
                if self._holds == 0:
                    self._lost += time.monotonic() - self._held_since


_LIVE_CLOCKS: set[SimClock] = set()
_LIVE_LOCK = threading.Lock()


@contextmanager
def timelines_held() -> Iterator[None]:
    """Every simulator of this process on a :class:`SimClock` stands still inside the block."""
    with _LIVE_LOCK:
        clocks = list(_LIVE_CLOCKS)
    with ExitStack() as stack:
        for clock in clocks:
            stack.enter_context(clock.held())
        yield


@contextmanager
def running_sim(
    config: SimConfig | None = None, *, simulator: Simulator | None = None
) -> Iterator[str]:
    """Serve the simulator on 127.0.0.1 at a free port; yield its base URL.

    The server runs uvicorn (uvloop + httptools) in a daemon thread and is
    shut down when the block exits. ``simulator`` injects prepared state
    (e.g. with a :class:`ManualClock`); its config wins over ``config``.
    Without one, the simulator runs on a :class:`SimClock`.
    """
    clock: SimClock | None = None
    if simulator is None:
        clock = SimClock()
        simulator = Simulator(config, clock=clock)
        with _LIVE_LOCK:
            _LIVE_CLOCKS.add(clock)
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
        if clock is not None:
            with _LIVE_LOCK:
                _LIVE_CLOCKS.discard(clock)
