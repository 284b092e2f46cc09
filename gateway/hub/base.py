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

import msgspec

from gateway.core.model import Event
from gateway.core.sse import Encoded
from gateway.hub.fanout import FanOut
from gateway.hub.queue import SubscriberQueue

__all__ = ["Hub", "Watch"]


class Watch(msgspec.Struct, frozen=True):
    """An explicit request to follow a task until it ends, subscribers or not."""

    task: str
    created_at: float
    deadline_at: float | None = None


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
