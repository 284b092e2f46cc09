"""When a failed delivery is tried again: exponential backoff with jitter, up to a maximum age.

Pure and clock-free, like :mod:`gateway.core.policy`: callers pass the time
and the random source.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "RetrySchedule"]


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """``base_s`` doubles per failed attempt up to ``max_s``; deliveries older than
    ``max_age_s`` are abandoned."""

    base_s: float
    max_s: float
    max_age_s: float

    def delay(self, attempts: int, rng: random.Random) -> float:
        """The wait after the ``attempts``-th failed attempt (1 = the first failure).

        "Equal jitter" (AWS Architecture Blog, "Exponential Backoff And
        Jitter"): half the step is fixed, so retries really do slow down; the
        other half is random, so many deliveries that failed together (one
        receiver down) do not come back together.
        """
        step = min(self.max_s, self.base_s * 2.0 ** min(max(attempts - 1, 0), 60))
        return step / 2 + rng.uniform(0, step / 2)

    def next_attempt(
        self, *, created_at: float, attempts: int, now: float, rng: random.Random
    ) -> float | None:
        """When to try again after a failure at ``now``, or ``None`` to give up."""
        due = now + self.delay(attempts, rng)
        if due - created_at > self.max_age_s:
            return None
        return due


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long the delivery loop waits after its store failed ``failures`` times in a row.

    The same equal jitter as :meth:`RetrySchedule.delay`: a store that is down
    (Redis restarting, a SQLite file locked by a backup) is asked again soon,
    then less and less often, and nodes that failed together spread out.
    """

    base_s: float
    max_s: float

    def delay(self, failures: int, rng: random.Random) -> float:
        step = min(self.max_s, self.base_s * 2.0 ** min(max(failures - 1, 0), 60))
        return step / 2 + rng.uniform(0, step / 2)
