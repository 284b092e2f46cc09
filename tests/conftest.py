"""Fixtures every test folder shares: a live simulator and an HTTP client."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.integration.gateway_server import stop_leftover_gateways
from tests.integration.sim_server import running_sim
from tests.scheduling import deal


@pytest.hookimpl(trylast=True)  # on what is left after -m and -k
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the collection dealt out over the workers (tests/scheduling.py).

    Raises:
        pytest.UsageError: a mark on a helper rather than a test (pytest never
            reads it: a ``solo`` test would run in the parallel pass unseen).
    """
    misplaced = _marked_helpers(items)
    if misplaced:
        raise pytest.UsageError(f"marks on functions that are not tests: {', '.join(misplaced)}")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        items[:] = deal(items, int(workerinput["workercount"]))


def _marked_helpers(items: list[pytest.Item]) -> list[str]:
    seen: set[str] = set()
    found: list[str] = []
    for item in items:
        module = getattr(item, "module", None)
        if module is None or module.__name__ in seen:
            continue
        seen.add(module.__name__)
        for name, obj in vars(module).items():
            if (
                inspect.isfunction(obj)
                and obj.__module__ == module.__name__
                and not name.startswith("test")
                and getattr(obj, "pytestmark", None)
            ):
                found.append(f"{module.__name__}.{name}")
    return found


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
