"""In-process fan-out: which local queues follow which task. Shared by every hub backend."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.core.sse import Encoded
from gateway.hub.queue import CloseReason, SubscriberQueue

__all__ = ["FanOut"]


class FanOut:
    """Delivers one encoded event to every local queue attached to its task."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[SubscriberQueue]] = {}

    def attach(self, queue: SubscriberQueue, tasks: Iterable[str]) -> None:
        for task in tasks:
            self._subscribers.setdefault(task, set()).add(queue)

    def detach(self, queue: SubscriberQueue, tasks: Iterable[str]) -> None:
        for task in tasks:
            queues = self._subscribers.get(task)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._subscribers[task]

    def subscriber_count(self, task: str) -> int:
        return len(self._subscribers.get(task, ()))

    def queues(self, task: str) -> tuple[SubscriberQueue, ...]:
        """The local queues attached to ``task`` (a copy)."""
        return tuple(self._subscribers.get(task, ()))

    def tasks(self) -> list[str]:
        """Tasks with at least one local subscriber."""
        return list(self._subscribers)

    def deliver(self, enc: Encoded) -> None:
        queues = self._subscribers.get(enc.event.task)
        if queues:
            for queue in tuple(queues):
                queue.put_nowait(enc)

    def close_all(self, reason: CloseReason) -> None:
        for queues in self._subscribers.values():
            for queue in queues:
                queue.close(reason)
