"""Blocking wrappers for scripts: no ``async``, same behaviour.

::

    from pollcast_client import sync

    for event in sync.watch_iter("http://127.0.0.1:8000", "ailab:abc"):
        print(event.state, event.progress)
    final = sync.wait("http://127.0.0.1:8000", "ailab:abc", timeout=600)

Each call runs its own event loop: :func:`wait` in the calling thread (or in
a worker thread when that thread already runs a loop, e.g. in a notebook);
:func:`watch_iter` in a worker thread that hands events over through a
queue, so leaving the ``for`` loop early closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from contextlib import aclosing
from typing import Any, TypeVar

from pollcast_client import client
from pollcast_client.events import AnyEvent
from pollcast_client.resume import DEFAULT_RECONNECT, Reconnect

__all__ = ["wait", "watch_iter"]

T = TypeVar("T")


def wait(
    base_url: str,
    task: str,
    token: str | None = None,
    timeout: float | None = None,
    *,
    reconnect: Reconnect = DEFAULT_RECONNECT,
) -> AnyEvent:
    """Block until ``task`` ends; return its terminal event (see :func:`client.wait`)."""
    return _run(lambda: client.wait(base_url, task, token, timeout, reconnect=reconnect))


def watch_iter(
    base_url: str,
    task: str,
    token: str | None = None,
    *,
    last_event_id: int | None = None,
    reconnect: Reconnect = DEFAULT_RECONNECT,
) -> Generator[AnyEvent, None, None]:
    """Every event of ``task`` until the terminal one (see :func:`client.watch`).

    Closing the generator early (``break``, ``.close()``) closes the stream.
    """
    return _iterate(
        lambda: client.watch(
            base_url, task, token, last_event_id=last_event_id, reconnect=reconnect
        )
    )


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(asyncio.run(make()))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=target, name="pollcast-sync", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]


class _End:
    pass


def _iterate(make: Callable[[], AsyncGenerator[T, None]]) -> Generator[T, None, None]:
    """Drive ``make()`` in a worker thread; yield its items here, in order."""
    items: queue.SimpleQueue[T | _End | BaseException] = queue.SimpleQueue()
    ready = threading.Event()
    runner: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[None]]] = []

    async def pump() -> None:
        async with aclosing(make()) as source:
            async for item in source:
                items.put(item)

    async def main() -> None:
        task = asyncio.create_task(pump())
        runner.append((asyncio.get_running_loop(), task))
        ready.set()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            items.put(exc)
            return
        items.put(_End())

    def target() -> None:
        try:
            asyncio.run(main())
        finally:
            ready.set()

    worker = threading.Thread(target=target, name="pollcast-watch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        ready.wait()
        if runner and worker.is_alive():
            loop, task = runner[0]
            with contextlib.suppress(RuntimeError):  # the loop already finished
                loop.call_soon_threadsafe(task.cancel)
        worker.join()
