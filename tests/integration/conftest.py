"""Helpers for live-server tests (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import httpx
import pytest

from gateway.service import Gateway
from gateway.web.fastpaths import ENV


async def create_sim_task(
    client: httpx.AsyncClient, sim: str, provider: str, timeline: list[dict[str, Any]], **extra: Any
) -> str:
    """Create a simulator task; return its gateway task key ``provider:id``."""
    reply = await client.post(
        f"{sim}/_sim/tasks", json={"provider": provider, "timeline": timeline, **extra}
    )
    reply.raise_for_status()
    return f"{provider}:{reply.json()['task_id']}"


async def release_sim_tasks(client: httpx.AsyncClient, sim: str, *tasks: str) -> None:
    """Let tasks created with ``held=True`` (or held since) go on with their timelines."""
    for task in tasks:
        (await client.post(_sim_task_url(sim, task, "release"))).raise_for_status()


async def until_watched(
    client: httpx.AsyncClient, base: str, task: str, watchers: int = 1, timeout_s: float = 20.0
) -> None:
    """Return once ``task`` has ``watchers`` open subscriptions and a polled state.

    With the task's timeline held until then, a watcher started elsewhere (a
    CLI, a browser) misses no step however long it takes to start.
    """
    deadline = anyio.current_time() + timeout_s
    view: dict[str, Any] = {}
    while anyio.current_time() < deadline:
        view = (await client.get(_task_url(base, task))).json()
        if _watched(view, watchers):
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"{task} not watched {watchers} times in {timeout_s} s: {view}")


def release_once_watched(
    sim: str, base: str, watchers: dict[str, int], timeout_s: float = 20.0
) -> None:
    """:func:`until_watched` for each task, then :func:`release_sim_tasks`; blocking."""
    with httpx.Client(timeout=10, trust_env=False) as client:
        deadline = time.monotonic() + timeout_s
        for task, count in watchers.items():
            view: dict[str, Any] = {}
            while not _watched(view, count):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{task} not watched {count} times: {view}")
                time.sleep(0.05)
                view = client.get(_task_url(base, task)).json()
        for task in watchers:
            client.post(_sim_task_url(sim, task, "release")).raise_for_status()


def _watched(view: dict[str, Any], watchers: int) -> bool:
    return view.get("watchers", 0) >= watchers and view.get("state", "unknown") != "unknown"


def gateway_tasks(gw: Gateway) -> int:
    """How many asyncio tasks the event loop of ``gw`` (in its server thread) holds now."""
    loop = next(h.task for h in gw.poller.loops.values() if h.task is not None).get_loop()

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=10)


def _task_url(base: str, task: str) -> str:
    provider, _, task_id = task.partition(":")
    return f"{base}/v1/tasks/{provider}/{task_id}"


def _sim_task_url(sim: str, task: str, action: str) -> str:
    provider, _, task_id = task.partition(":")
    return f"{sim}/_sim/tasks/{provider}/{task_id}/{action}"


async def sim_stats(client: httpx.AsyncClient, sim: str) -> dict[str, Any]:
    reply = await client.get(f"{sim}/_sim/stats")
    reply.raise_for_status()
    stats: dict[str, Any] = reply.json()
    return stats


def events_url(base: str, task: str) -> str:
    provider, _, task_id = task.partition(":")
    return f"{base}/v1/tasks/{provider}/{task_id}/events"


# -- both HTTP paths ----------------------------------------------------------
#
# The streaming and WebSocket modules run once on the fast path and once on
# the plain one (POLLCAST_FAST_PATHS=off: uvicorn's standard protocol, streams
# through ASGI send), so a uvicorn that turns the fast paths off at start-up
# still serves every stream correctly. Tests about the fast path's own objects
# carry ``@pytest.mark.fast_path_only``; tests in these modules that are not
# about the HTTP layer at all (polling) carry ``@pytest.mark.one_http_path``.
# Both run once, on the fast path.

BOTH_PATHS = frozenset(
    {
        "tests.integration.test_connections",
        "tests.integration.test_fanout",
        "tests.integration.test_resume",
        "tests.integration.test_streams",
        "tests.integration.test_ws_fast_path",
        # The Python client's live tests (tests/clients/python/conftest.py imports these hooks).
        "tests.clients.python.test_watch",
        "tests.clients.python.test_ws_client",
    }
)
HTTP_PATHS = ("fast", "plain")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fast_path_only: about the fast path's own objects; not run on the plain path"
    )
    config.addinivalue_line(
        "markers", "one_http_path: not about the HTTP layer; run on the fast path only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ not in BOTH_PATHS:
        return
    marks = ("fast_path_only", "one_http_path")
    only_fast = any(metafunc.definition.get_closest_marker(mark) for mark in marks)
    metafunc.parametrize("http_path", HTTP_PATHS[:1] if only_fast else HTTP_PATHS, indirect=True)


@pytest.fixture(autouse=True)
def http_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The path every gateway this test starts runs on (in-process or child process).

    Autouse, so that it is part of every test's fixture closure: a parameter
    given to a fixture a test does not request would never reach it (the test
    would run on the fast path whatever its id says).
    """
    path: str = getattr(request, "param", "fast")
    if path == "plain":
        monkeypatch.setenv(ENV, "off")
    else:
        monkeypatch.delenv(ENV, raising=False)
    return path
