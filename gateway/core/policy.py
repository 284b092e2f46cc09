"""Polling policy: when to ask an upstream again. Pure; time and randomness injected.

The upstream docs ask for the same things (ailab: "实现指数退避算法避免频繁请求";
tryon: "too frequent will be blocked by the firewall"), so the policy is one
shape for every provider:

* after a change, poll again at the provider's base interval;
* while nothing changes, let the interval grow gently up to a maximum;
* after a failed poll, back off exponentially with *full jitter*
  (delay = uniform(0, min(cap, base · 2^failures))), never sooner than the
  upstream's ``Retry-After``;
* after a few refusals of our credentials, give up instead of hammering.

:class:`PredictivePolicy` (``polling = "predictive"``) replaces the quiet
interval with one read from the duration model (``gateway/core/eta.py``):
rare polls while a task is unlikely to end yet, the near interval from its
earliest probable end on, always between the base interval and a ceiling.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from gateway.core.eta import DurationModel
from gateway.core.model import Fault

__all__ = [
    "CostBudget",
    "Decision",
    "IntervalPolicy",
    "PollState",
    "PredictivePolicy",
    "RetryDelay",
    "TokenBucket",
]


@dataclass(frozen=True, slots=True)
class PollState:
    """Per-task policy state: the current quiet interval and consecutive failures."""

    interval_s: float
    failures: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    state: PollState
    delay_s: float
    give_up: bool = False


@dataclass(frozen=True, slots=True)
class IntervalPolicy:
    base_s: float
    max_s: float
    growth: float = 1.25
    backoff_cap_s: float = 120.0
    min_delay_s: float = 0.05
    max_auth_failures: int = 3

    def start(self) -> PollState:
        return PollState(self.base_s)

    def after_change(self, state: PollState) -> Decision:
        return Decision(PollState(self.base_s), self.base_s)

    def after_no_change(self, state: PollState) -> Decision:
        interval = min(self.max_s, max(self.base_s, state.interval_s * self.growth))
        return Decision(PollState(interval), interval)

    def after_fault(self, state: PollState, fault: Fault, rng: random.Random) -> Decision:
        failures = state.failures + 1
        delay = self.backoff_delay(failures, fault, rng)
        return Decision(
            PollState(state.interval_s, failures), delay, self.gives_up(fault, failures)
        )

    def backoff_delay(self, failures: int, fault: Fault, rng: random.Random) -> float:
        """The wait after the ``failures``-th consecutive failure (``failures >= 1``):
        full jitter up to ``min(backoff_cap_s, base_s · 2^failures)``, at least
        ``min_delay_s`` and never sooner than the fault's ``Retry-After``."""
        ceiling = min(self.backoff_cap_s, self.base_s * 2.0**failures)
        delay = max(self.min_delay_s, rng.uniform(0.0, ceiling))
        if fault.retry_after_s is not None:
            delay = max(delay, fault.retry_after_s)
        return delay

    def gives_up(self, fault: Fault, failures: int) -> bool:
        """Whether ``failures`` consecutive faults like this one mean: stop trying."""
        return not fault.retryable and failures >= self.max_auth_failures


@dataclass(frozen=True, slots=True)
class PredictivePolicy:
    """When to poll a task next, from how long the provider's tasks take.

    The aim: as few polls as possible while all but a share ``tail_budget``
    of tasks are seen ending within ``near_s`` (``near_factor`` base
    intervals) of their end. A task's end falls uniformly within the gap
    between the two polls around it, so a gap ``g`` longer than ``near_s``
    leaves ``1 - near_s / g`` of the ends inside it seen late, and a gap of
    at most ``near_s`` none: the share seen late is the sum over the gaps of
    ``P(end in gap) · max(0, 1 - near_s / g)``. Per unit of that share, a
    long gap saves the most polls where tasks are still running but rarely
    end (a low hazard: early on, for the spreads task durations have), so
    the cheapest schedule is long gaps first and ``near_s`` from a switch
    point on:

    * up to the ``tail_budget``-quantile of the duration
      (:meth:`DurationModel.earliest_end`), gaps of up to ``ceiling_s``, the
      last one landing ``near_s`` after that quantile; at most a share
      ``tail_budget`` of tasks end before it, which bounds the share seen late;
    * from there on every ``near_s``, so every later end is seen within it.

    Each gap is shortened by the request's own time (``request_s``), so the
    bound holds from a task's end to the reply that shows it. The task's own
    ``eta_s`` less ``eta_margin`` brings the next poll sooner when it says the
    end is nearer. A task the model cannot place (no credible prior, too few
    finished tasks) is polled every ``near_s``; one that has outlived every
    finished task at the base interval. Delays are always between the base
    interval and ``ceiling_s``.

    Faults, ``Retry-After``, the rate limit and the budget still apply as
    with the fixed policy: this only replaces the quiet interval.
    """

    base_s: float
    ceiling_s: float
    near_factor: float = 1.5
    tail_budget: float = 0.04
    eta_margin: float = 0.3

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.ceiling_s < self.base_s:
            raise ValueError("need 0 < base_s <= ceiling_s")
        if self.near_factor < 1 or not 0 < self.tail_budget < 0.5:
            raise ValueError("need near_factor >= 1 and 0 < tail_budget < 0.5")
        if not 0 <= self.eta_margin < 1:
            raise ValueError("need 0 <= eta_margin < 1")

    @property
    def near_s(self) -> float:
        """The bound on the time from a task's end to its detection, once it may end."""
        return min(self.ceiling_s, self.base_s * self.near_factor)

    def delay(
        self,
        model: DurationModel,
        *,
        elapsed_s: float,
        bucket: int = 0,
        eta_s: float | None = None,
        request_s: float = 0.0,
    ) -> float:
        """Seconds until the next poll.

        Args:
            model: the provider's duration model.
            elapsed_s: how long the gateway has seen the task.
            bucket: the task's queue-position bucket (``eta.position_bucket``).
            eta_s: the task's own estimate of the time left, as of now.
            request_s: how long the last request took (the next one is
                expected to take as long).
        """
        near = min(self.ceiling_s, max(self.base_s, self.near_s - max(0.0, request_s)))
        earliest = model.earliest_end(self.tail_budget, bucket)
        if earliest is None:
            gap = near  # cannot place the task's end: every end within near_s
        elif elapsed_s >= earliest and model.remaining(elapsed_s, 0.5, bucket) is None:
            return self.base_s  # outlived every finished task: as a fixed poller would
        else:
            gap = earliest + near - elapsed_s  # the last long gap ends near_s past it
        if eta_s is not None:
            gap = min(gap, max(0.0, eta_s) * (1.0 - self.eta_margin))
        return min(self.ceiling_s, max(near, gap))


class RetryDelay:
    """How long a failing loop waits before its next try: doubling, capped, reset on success.

    The shape of ``websockets.client.backoff()``, without its jitter: one
    loop per process retries, so there is no herd to spread.
    """

    def __init__(self, first_s: float = 0.2, cap_s: float = 5.0, factor: float = 2.0) -> None:
        if first_s <= 0 or cap_s < first_s or factor < 1:
            raise ValueError("need 0 < first_s <= cap_s and factor >= 1")
        self.first_s = first_s
        self.cap_s = cap_s
        self.factor = factor
        self._next = first_s

    def next_delay(self) -> float:
        """The wait after one more consecutive failure."""
        delay = self._next
        self._next = min(self.cap_s, delay * self.factor)
        return delay

    def reset(self) -> None:
        """A success: the next failure waits ``first_s`` again."""
        self._next = self.first_s


class TokenBucket:
    """Requests-per-second limit. ``reserve`` books a slot and says how long to wait."""

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.rate = rate_per_s
        self.capacity = burst if burst is not None else max(1.0, rate_per_s)
        self._tokens = self.capacity
        self._stamp: float | None = None

    def reserve(self, now: float) -> float:
        """Take one token (possibly going into debt); seconds until it is really ours."""
        if self._stamp is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class CostBudget:
    """A strict cap on spend in any sliding window (default: one hour).

    ``wait_time`` says how long until one more call fits; ``spend`` records a
    call. A strict window, not a token bucket, because a budget is a promise:
    no window of ``window_s`` may ever hold more than ``limit``.
    """

    def __init__(self, limit: float, cost_per_call: float, window_s: float = 3600.0) -> None:
        if cost_per_call <= 0:
            raise ValueError("cost_per_call must be positive")
        self.limit = limit
        self.cost = cost_per_call
        self.window_s = window_s
        self._calls: deque[float] = deque()
        # Compare in whole calls, not floating coins (0.1 * 3 > 0.3).
        self._max_calls = int(limit / cost_per_call + 1e-9)

    def _expire(self, now: float) -> None:
        while self._calls and self._calls[0] <= now - self.window_s:
            self._calls.popleft()

    def wait_time(self, now: float) -> float:
        self._expire(now)
        if len(self._calls) < self._max_calls:
            return 0.0
        if self._max_calls == 0:
            return self.window_s
        return self._calls[0] + self.window_s - now

    def spend(self, now: float) -> None:
        self._expire(now)
        self._calls.append(now)

    def spent(self, now: float) -> float:
        self._expire(now)
        return len(self._calls) * self.cost
