"""Fixtures every test folder shares: a live simulator and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.integration.gateway_server import stop_leftover_gateways
from tests.integration.sim_server import running_sim
from tests.scheduling import deal


@pytest.hookimpl(trylast=True)  # on what is left after -m and -k
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the collection dealt out over the workers (tests/scheduling.py)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        items[:] = deal(items, int(workerinput["workercount"]))


@pytest.fixture(autouse=True)
def _no_gateway_process_outlives_its_test() -> Iterator[None]:
    """No test keeps a ``pollcast serve`` child for the next one: a test that
    failed before its ``finally``, or whose restart finished after it, would
    otherwise leave a gateway polling (and loading the machine) to the end."""
    yield
    stop_leftover_gateways()


@pytest.fixture
def sim() -> Iterator[str]:
    """A live simulator (its own, fresh) for this test."""
    with running_sim() as url:
        yield url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as c:
        yield c
