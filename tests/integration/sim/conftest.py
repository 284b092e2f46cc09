"""Fixtures of the simulator's own tests: one simulator per module, reset per test.

Its timelines move only when a test advances ``clock``; a module that needs a
simulator on real time overrides ``sim_url``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.sim import Simulator
from tests.integration.sim_server import ManualClock, running_sim


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def sim_url(clock: ManualClock) -> Iterator[str]:
    with running_sim(simulator=Simulator(clock=clock)) as url:
        yield url


@pytest.fixture
def client(sim_url: str) -> Iterator[httpx.Client]:
    """A synchronous client on a freshly reset simulator."""
    with httpx.Client(base_url=sim_url, timeout=5.0) as http:
        http.post("/_sim/reset").raise_for_status()
        yield http
