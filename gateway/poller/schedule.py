"""When each task is polled next, and who may poll it: the schedule.

The poller asks the schedule for the tasks that are due (``claim``), polls
them, and hands them back with their next due time (``release``). A claim
is exclusive until released or, in a cluster, until its lease runs out —
which is how a cluster polls each task once per round without agreeing on
membership (``RedisSchedule``).

*Interest* decides whether a due task is still wanted: subscribers keep it
alive for a grace period at a time (``keep``), a watch keeps it alive until
removed. A claimed task whose interest has lapsed is dropped instead.
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from gateway.core.policy import PollState

__all__ = ["FOREVER", "Entry", "LocalSchedule", "Schedule"]

FOREVER = math.inf


class Entry(msgspec.Struct, kw_only=True):
    """A scheduled task and the policy state that travels with it between nodes."""

    task: str
    interval_s: float
    failures: int = 0
    deadline_at: float | None = None  # wall clock
    # Subscribers were told the upstream is slow or failing (a recovery is owed);
    # ``faulted``: failing, and told so with when it is retried.
    degraded: bool = False
    faulted: bool = False
    # The claim token a fenced schedule hands out with the entry; a commit
    # made under a lease that is no longer held is refused. Empty: unfenced.
    lease: str = ""
    # What the duration model needs (gateway/core/eta.py): when this task was
    # first observed, when it was last seen not finished (wall clock) and its
    # queue-position bucket at first sight.
    since: float | None = None
    seen_at: float | None = None
    bucket: int = 0

    @property
    def poll(self) -> PollState:
        return PollState(self.interval_s, self.failures)

    def apply(self, state: PollState) -> None:
        self.interval_s = state.interval_s
        self.failures = state.failures


class Schedule(ABC):
    """Due times, claims and interest per provider. Times are wall-clock seconds."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect, if the schedule has anything to connect to."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Give back what this node holds so another can take it at once."""

    @abstractmethod
    async def add(self, provider: str, entry: Entry, *, keep_until: float) -> bool:
        """Schedule ``entry`` now unless its task is already scheduled or claimed.

        Either way its interest is extended to at least ``keep_until``.
        Returns whether it was new.
        """

    @abstractmethod
    async def keep(self, provider: str, tasks: Sequence[str], until: float) -> None:
        """Extend the tasks' interest to at least ``until`` (``FOREVER`` for a watch)."""

    @abstractmethod
    async def lapse(self, provider: str, task: str, at: float) -> None:
        """Let the task's interest end at ``at`` (a watch was removed)."""

    @abstractmethod
    async def set_deadline(self, provider: str, task: str, deadline_at: float) -> None: ...

    @abstractmethod
    async def claim(self, provider: str, now: float, horizon: float) -> list[Entry]:
        """Take every wanted task due by ``horizon``; drop the unwanted ones."""

    @property
    def renew_every_s(self) -> float | None:
        """How often claims in flight must be renewed (``None``: claims never lapse)."""
        return None

    async def renew(self, provider: str, tasks: Sequence[str]) -> None:  # noqa: B027
        """Extend this node's claims on tasks still being polled."""

    @abstractmethod
    async def release(self, provider: str, due: Sequence[tuple[Entry, float]]) -> None:
        """Give claimed entries back, each due again at the given time."""

    @abstractmethod
    async def remove(self, provider: str, tasks: Iterable[str]) -> None:
        """Forget tasks (terminal): never due again."""

    @abstractmethod
    async def next_due(self, provider: str) -> float | None:
        """The earliest due time, if known locally (``None``: ask again soon)."""

    @abstractmethod
    def known(self, provider: str) -> Mapping[str, Entry]:
        """This node's view of the provider's scheduled tasks (all of them, locally)."""


class LocalSchedule(Schedule):
    """One process: a heap of due times per provider, with lazy invalidation."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {}
        self._due: dict[str, dict[str, float]] = {}  # absent while claimed
        self._heaps: dict[str, list[tuple[float, str]]] = {}
        self._interest: dict[str, float] = {}

    def _of(
        self, provider: str
    ) -> tuple[dict[str, Entry], dict[str, float], list[tuple[float, str]]]:
        return (
            self._entries.setdefault(provider, {}),
            self._due.setdefault(provider, {}),
            self._heaps.setdefault(provider, []),
        )

    def _push(self, provider: str, task: str, at: float) -> None:
        _, due, heap = self._of(provider)
        due[task] = at
        heapq.heappush(heap, (at, task))

    async def add(self, provider: str, entry: Entry, *, keep_until: float) -> bool:
        entries, _, _ = self._of(provider)
        self._interest[entry.task] = max(self._interest.get(entry.task, 0.0), keep_until)
        if entry.task in entries:
            return False
        entries[entry.task] = entry
        self._push(provider, entry.task, 0.0)
        return True

    async def keep(self, provider: str, tasks: Sequence[str], until: float) -> None:
        for task in tasks:
            self._interest[task] = max(self._interest.get(task, 0.0), until)

    async def lapse(self, provider: str, task: str, at: float) -> None:
        if task in self._interest:
            self._interest[task] = at

    async def set_deadline(self, provider: str, task: str, deadline_at: float) -> None:
        entry = self._of(provider)[0].get(task)
        if entry is not None:
            entry.deadline_at = deadline_at

    async def claim(self, provider: str, now: float, horizon: float) -> list[Entry]:
        entries, due, heap = self._of(provider)
        claimed: list[Entry] = []
        while heap and heap[0][0] <= horizon:
            at, task = heapq.heappop(heap)
            if due.get(task) != at:
                continue  # stale: rescheduled or claimed since
            del due[task]
            if self._interest.get(task, 0.0) < now:
                del entries[task]
                self._interest.pop(task, None)
                continue
            claimed.append(entries[task])
        return claimed

    async def release(self, provider: str, due: Sequence[tuple[Entry, float]]) -> None:
        entries, _, _ = self._of(provider)
        for entry, at in due:
            if entries.get(entry.task) is entry:
                self._push(provider, entry.task, at)

    async def remove(self, provider: str, tasks: Iterable[str]) -> None:
        entries, due, _ = self._of(provider)
        for task in tasks:
            entries.pop(task, None)
            due.pop(task, None)
            self._interest.pop(task, None)

    async def next_due(self, provider: str) -> float | None:
        _, due, heap = self._of(provider)
        while heap and due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def known(self, provider: str) -> Mapping[str, Entry]:
        return self._of(provider)[0]
