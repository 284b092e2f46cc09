"""The hub: latest snapshot, bounded history and fan-out, behind one interface.

Two backends implement it — ``local`` (one process, SQLite) and ``redis``
(a cluster) — and both pass ``tests/contract/test_hub_contract.py``.

Ordering contract: :meth:`Hub.commit` stores an event and then delivers it
to every attached queue; a subscriber attaches (and awaits
:meth:`Hub.attached`) *before* reading the snapshot and history, and drops
anything whose seq it has already seen, so no event falls between "read"
and "live".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from gateway.core.model import Event
from gateway.core.sse import Encoded
from gateway.hub.fanout import FanOut
from gateway.hub.queue import SubscriberQueue

__all__ = ["HistoryPage", "Hub", "Watch", "page_of"]


class Watch(msgspec.Struct, frozen=True):
    """An explicit request to follow a task until it ends, subscribers or not."""

    task: str
    created_at: float
    deadline_at: float | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of a task's kept history (:meth:`Hub.history_page`).

    ``events`` have seqs above the requested ``after``, in order. ``gap`` says
    the history no longer reaches back to ``after + 1``: the events are then
    the oldest still kept. ``latest`` is the task's stored seq (0: none);
    ``known`` whether the store holds the task at all.
    """

    events: list[Encoded]
    gap: bool
    latest: int
    known: bool
    after: int

    @property
    def next_after(self) -> int:
        """Where the next page starts: the last seq given, else what was asked
        (or the latest seq, when a gap left nothing to give)."""
        if self.events:
            return self.events[-1].event.seq
        return self.latest if self.gap else self.after

    @property
    def more(self) -> bool:
        """Whether kept events after this page exist right now."""
        return bool(self.events) and self.events[-1].event.seq < self.latest


def page_of(
    kept: Sequence[Encoded], *, after: int, limit: int, latest: int, known: bool
) -> HistoryPage:
    """The page of ``kept`` (events with seq > ``after``, in order, as stored) to answer.

    History is trimmed from its oldest end only, so the seqs kept are
    consecutive: the first one kept above ``after`` tells whether it reaches back.
    """
    if after >= latest:
        return HistoryPage([], gap=False, latest=latest, known=known, after=after)
    events = [enc for enc in kept if enc.event.seq > after][:limit]
    gap = not events or events[0].event.seq > after + 1
    return HistoryPage(events, gap=gap, latest=latest, known=known, after=after)


class Hub(ABC):
    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ready(self) -> bool:
        """Whether the backing store answers right now (``/readyz``)."""

    @property
    def fault(self) -> str | None:
        """What is wrong with the store, for ``/readyz`` (``None``: nothing known)."""
        return None

    # -- state ------------------------------------------------------------

    @abstractmethod
    async def snapshot(self, task: str) -> Event | None:
        """The latest ``state``/``progress`` event of ``task``, or ``None`` if never seen."""

    async def snapshots(self, tasks: Sequence[str]) -> dict[str, Event | None]:
        """:meth:`snapshot` of each task (a backend may read them in one round trip)."""
        return {task: await self.snapshot(task) for task in tasks}

    @abstractmethod
    async def commit(
        self,
        events: Sequence[Event],
        *,
        terminal_ttl_s: float,
        leases: Mapping[str, str] | None = None,
    ) -> list[Encoded]:
        """Store ``events`` (each with seq = previous + 1) and fan them out.

        Terminal snapshots are kept for ``terminal_ttl_s`` seconds.

        ``leases`` maps a task to the fencing token of the claim its events
        come from (``Entry.lease``). An event whose task's lease is no longer
        held by that token is neither stored nor delivered, and is left out
        of the returned list (a backend whose claims cannot lapse ignores it).

        Raises:
            SeqConflict: if another writer already committed one of these seqs.
        """

    @abstractmethod
    async def announce(self, event: Event) -> None:
        """Fan out a ``notice`` without storing it."""

    @abstractmethod
    async def history(self, task: str, after_seq: int) -> list[Encoded] | None:
        """Events with seq > ``after_seq`` in order, or ``None`` if history no longer
        reaches back that far (the caller then sends a gap notice and a snapshot)."""

    @abstractmethod
    async def history_page(self, task: str, after: int, limit: int) -> HistoryPage:
        """Up to ``limit`` kept events with seq > ``after``; see :class:`HistoryPage`."""

    # -- fan-out (to this node's subscribers; every backend does it alike) --

    fanout: FanOut

    def attach(self, queue: SubscriberQueue, tasks: Iterable[str]) -> None:
        self.fanout.attach(queue, tasks)

    def detach(self, queue: SubscriberQueue, tasks: Iterable[str]) -> None:
        self.fanout.detach(queue, tasks)

    async def attached(self, tasks: Iterable[str]) -> None:
        """Until events of ``tasks`` committed from now on are sure to reach this
        node's queues; call it after :meth:`attach`, before reading the snapshot.

        A backend that receives events by per-task subscriptions (Redis) waits
        for them to be confirmed; one that fans out in process has nothing to wait for.

        Raises:
            BackendError: the store did not confirm in time.
        """
        return None

    def subscriber_count(self, task: str) -> int:
        return self.fanout.subscriber_count(task)

    # -- watchers (open subscriptions, as far as the backend can see) ------

    async def watched_tasks(self) -> list[str]:
        """Tasks with open subscriptions anywhere the backend sees (here: this node)."""
        return self.fanout.tasks()

    async def watcher_counts(self, tasks: Sequence[str], node: str) -> dict[str, int]:
        """Open subscriptions per task, for every task asked (0 when none).

        ``node`` is this node: its own subscribers are counted from memory,
        the other nodes' from what they published.
        """
        return {task: self.fanout.subscriber_count(task) for task in tasks}

    async def publish_watchers(self, node: str, counts: Mapping[str, int], ttl_s: float) -> None:
        """Tell the other nodes this node's subscriber counts (0 withdraws one).

        A backend that sees only one process has nothing to do.
        """
        return None

    # -- watches ----------------------------------------------------------

    @abstractmethod
    async def put_watch(self, watch: Watch) -> None: ...

    @abstractmethod
    async def drop_watch(self, task: str) -> bool:
        """Remove a watch; whether there was one."""

    @abstractmethod
    async def watches(self) -> list[Watch]: ...

    @abstractmethod
    async def purge(self, now: float) -> int:
        """Forget terminal tasks whose retention ran out; how many were removed."""
