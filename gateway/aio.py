"""asyncio helpers the long-running loops share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Batcher", "cancel_and_wait", "raise_if_cancelled"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("pollcast")


def raise_if_cancelled() -> None:
    """Raise :class:`asyncio.CancelledError` if this task was asked to stop.

    On Python 3.11, ``asyncio.wait_for`` returns the result instead of raising
    when a cancel arrives just as the awaited call completes (CPython
    bpo-42130, fixed in 3.12), and redis-py awaits every socket write through
    ``wait_for``: about one cancel in five that lands on a Redis call is
    swallowed. The task still counts the request (``Task.cancelling()``), so a
    loop that awaits Redis calls this at every turn and stops as it was told.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended.

    Unlike ``task.cancel(); with suppress(CancelledError): await task``, a
    cancel of the *caller* while it waits still propagates. A task that ended
    with an error instead is logged, not raised: this is for shutting down.
    """
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed while stopping", task.get_name(), exc_info=task.exception())


class Batcher(Generic[T, R]):
    """Calls made within one pass of the event loop go out as one batch.

    ``await batcher(item)`` queues ``item``; on the loop's next pass
    ``run(items)`` handles everything queued meanwhile (at most ``max_size``
    per batch) and each caller gets its own item's result, or the batch's
    error. With ``share``, callers queueing an equal item share one (items
    must then be hashable). A reconnect storm's thousand reads are then a few
    pipelines, not a thousand commands each waiting for a pooled connection.

    Every item is sent after its caller asked for it, so a read through the
    batcher is never older than the call (what a subscriber that attached
    first and reads second relies on). A caller cancelled while it waits
    leaves the batch running for the others.
    """

    __slots__ = ("_max_size", "_pending", "_run", "_shared", "_tasks")

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_size: int = 512,
        share: bool = False,
    ) -> None:
        self._run = run
        self._max_size = max_size
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._shared: dict[T, asyncio.Future[R]] | None = {} if share else None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> R:
        shared = self._shared
        future = shared.get(item) if shared is not None else None
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._pending:
                loop.call_soon(self._flush)
            future = loop.create_future()
            self._pending.append((item, future))
            if shared is not None:
                shared[item] = future
        return await asyncio.shield(future)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if self._shared is not None:
            self._shared.clear()
        for start in range(0, len(pending), self._max_size):
            task = asyncio.create_task(self._send(pending[start : start + self._max_size]))
            self._tasks.add(task)  # a strong reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():  # (a caller that left: asyncio.shield retrieves it)
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
