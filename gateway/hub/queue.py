"""A subscriber's bounded queue and its overflow policy.

Policy ``COALESCE_PROGRESS`` (docs/protocol.md, "Slow subscribers": one slow
subscriber never slows the others): when the queue holds ``maxsize`` items,
the *oldest queued progress event* is discarded to make room, so intermediate
progress collapses toward the latest while the order of what remains is kept.
``state`` events are never discarded: if they alone exceed ``hard_limit``
the queue is closed with :attr:`CloseReason.OVERFLOW` and the client resumes
later from its last seq with nothing lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import StrEnum

from gateway.core.model import EventKind
from gateway.core.sse import Encoded

__all__ = ["CloseReason", "QueueClosed", "QueueStats", "SubscriberQueue"]

log = logging.getLogger("pollcast.hub")


class CloseReason(StrEnum):
    OVERFLOW = "overflow"  # too slow: resume from the last seq
    DRAINING = "server_draining"  # this node is shutting down: reconnect elsewhere
    BACKEND_LOST = "backend_unavailable"
    TOKEN_EXPIRED = "token_expired"
    # The consumer's direct write raised (its connection broke under it): the
    # stream is dropped without a notice and the client resumes by seq.
    WRITE_FAILED = "write_failed"


class QueueClosed(Exception):
    def __init__(self, reason: CloseReason) -> None:
        self.reason = reason
        super().__init__(reason.value)


class QueueStats:
    """Counters shared by every queue of one gateway (plain ints: the hot path)."""

    __slots__ = ("coalesced", "delivered", "direct", "direct_failures", "overflows")

    def __init__(self) -> None:
        self.delivered = 0
        self.direct = 0  # of ``delivered``: written by the consumer's direct writer
        self.coalesced = 0
        self.overflows = 0
        self.direct_failures = 0


class SubscriberQueue:
    """Single-consumer queue of :class:`Encoded` events. Not thread-safe (one loop)."""

    __slots__ = (
        "_closed",
        "_items",
        "_loop",
        "_waiter",
        "coalesced",
        "direct",
        "hard_limit",
        "maxsize",
        "stats",
    )

    def __init__(
        self, maxsize: int = 256, hard_limit: int | None = None, stats: QueueStats | None = None
    ) -> None:
        self.maxsize = maxsize
        self.hard_limit = hard_limit or maxsize * 4
        # A list, not a deque: an empty deque is 624 bytes, an empty list 56,
        # and there are as many queues as open streams.
        self._items: list[Encoded] = []
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: CloseReason | None = None
        # Set by a consumer that can take an item at once while it waits (see put_nowait).
        self.direct: Callable[[Encoded], bool] | None = None
        self.coalesced = 0
        self.stats = stats or QueueStats()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> CloseReason | None:
        return self._closed

    def put_nowait(self, item: Encoded) -> None:
        if self._closed is not None:
            return
        waiter = self._waiter
        direct = self.direct
        if direct is not None and waiter is not None and not waiter.done() and not self._items:
            # The consumer waits with nothing queued: it may take the item itself,
            # without being woken (one task step less per subscriber per event).
            try:
                took = direct(item)
            except Exception:
                # The caller is a commit or the Redis listener fanning out to
                # every subscriber: one broken connection must not stop it.
                self._direct_failed()
                return
            if took:
                stats = self.stats
                stats.delivered += 1
                stats.direct += 1
                return
        items = self._items
        if len(items) >= self.maxsize:
            self._make_room()
            if len(items) >= self.hard_limit:
                self.stats.overflows += 1
                self.close(CloseReason.OVERFLOW)
                return
        items.append(item)
        self.stats.delivered += 1
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _direct_failed(self) -> None:
        log.debug("a direct write raised; closing that subscriber", exc_info=True)
        self.direct = None
        self.stats.direct_failures += 1
        self.close(CloseReason.WRITE_FAILED)

    def _make_room(self) -> None:
        for i, queued in enumerate(self._items):
            if queued.event.event is EventKind.PROGRESS:
                del self._items[i]
                self.coalesced += 1
                self.stats.coalesced += 1
                return

    def wake(self) -> None:
        """Make a waiting consumer return ``[]`` now (the gateway's heartbeat tick)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: CloseReason) -> None:
        """Stop accepting; the consumer drains what is queued, then gets :class:`QueueClosed`."""
        if self._closed is None:
            self._closed = reason
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get_batch(self, max_wait_s: float | None = None) -> list[Encoded]:
        """Everything queued (waiting for at least one item), or ``[]`` after ``max_wait_s``.

        Raises:
            QueueClosed: once closed and empty.
        """
        if not self._items:
            if self._closed is not None:
                raise QueueClosed(self._closed)
            loop = self._loop
            if loop is None:  # once: get_running_loop() costs a getpid() on 3.11
                loop = self._loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(max_wait_s, _wake, waiter) if max_wait_s is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._items:
                if self._closed is not None:
                    raise QueueClosed(self._closed)
                return []
        batch = self._items
        self._items = []
        return batch


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
