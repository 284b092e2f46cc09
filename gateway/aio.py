"""asyncio helpers the long-running loops share."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["cancel_and_wait", "raise_if_cancelled"]

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
