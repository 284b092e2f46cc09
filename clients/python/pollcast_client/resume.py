"""What a reconnecting client needs, as pure code: when to retry, and what is news.

* :class:`Reconnect` — the delay before the next attempt. After a stream that
  ended normally it is the server's reconnection time (the SSE ``retry:``
  field, WHATWG "reconnection time"); after failures it grows exponentially
  with *full jitter* (a uniformly random delay between 0 and the capped
  exponential), so that many clients cut off at once do not come back in
  lockstep.
* :class:`SeqTracker` — the last seq delivered per task, so that an event
  replayed across a reconnect is delivered once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from pollcast_client.events import Event, Snapshot

__all__ = ["DEFAULT_RECONNECT", "Reconnect", "SeqTracker"]


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Reconnection policy.

    Attributes:
        base_s: the delay after a stream ended normally and the unit of the
            backoff. ``None`` uses the server's ``retry:`` (SSE) or 1 s.
        cap_s: the longest delay after failures.
        max_failures: consecutive failed attempts before giving up
            (``None``: never give up).
    """

    base_s: float | None = None
    cap_s: float = 30.0
    max_failures: int | None = 8

    def delay(
        self,
        failures: int,
        server_retry_s: float | None,
        rng: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait before the next attempt.

        Args:
            failures: consecutive failed attempts so far (0 after a stream
                that ended normally).
            server_retry_s: the reconnection time the server asked for, if any.
            rng: a uniform source on [0, 1), injected for tests.
        """
        base = self.base_s if self.base_s is not None else server_retry_s
        if base is None:
            base = 1.0
        if failures <= 0:
            return min(base, self.cap_s)
        ceiling = min(self.cap_s, base * 2.0 ** min(failures, 32))
        return ceiling * rng()

    def gives_up(self, failures: int) -> bool:
        return self.max_failures is not None and failures >= self.max_failures


DEFAULT_RECONNECT = Reconnect()


class SeqTracker:
    """The last seq delivered per task, and which tasks delivered their terminal event.

    ``admit`` is the de-duplication rule: a ``state``/``progress`` event is
    news if its seq is above the last one delivered; a snapshot with the same
    seq is a repeat. A snapshot with a *lower* seq is the server starting the
    task over (it answers a resume point it does not know with a ``resync``
    notice and its current snapshot), so it is delivered and becomes the new
    resume point. Notices carry no seq of their own and always pass.
    """

    def __init__(self, since: dict[str, int] | None = None) -> None:
        self.last: dict[str, int] = dict(since or {})
        self.finished: set[str] = set()

    def admit(self, event: Event) -> bool:
        if not event.counts_for_resume:
            return True
        last = self.last.get(event.task)
        restart = isinstance(event, Snapshot) and last is not None and event.seq < last
        if last is not None and event.seq <= last and not restart:
            return False
        self.last[event.task] = event.seq
        if event.terminal:
            self.finished.add(event.task)
        return True

    def since(self, task: str) -> int | None:
        return self.last.get(task)
