"""How long a task has left: the duration model and the ``eta_s`` of events. Pure.

Two sources, one model:

* :class:`DurationModel` learns, per provider, how long tasks take from the
  gateway's first sight of them to their end (a bounded window of completed
  durations per queue-position bucket, with the provider's
  ``typical_duration_s`` as the prior until enough tasks have finished). It
  answers "given that a task has run ``e`` seconds, when will it probably
  end?" as conditional quantiles, and "how soon may a task end at the
  earliest?" as a low quantile it only gives when the evidence places it
  (:meth:`DurationModel.earliest_end`). The predictive polling policy
  (``gateway/core/policy.py``) schedules polls from the same model. A prior
  that the finished tasks contradict (one ends far sooner than the prior
  allows) is dropped: the model then says nothing until its own samples do.
* :func:`estimate` turns the previous event, a new observation and the
  model's expectation into the next event's ``eta_s``: from the progress
  rate between the two observations, from the queue position's movement,
  or from the model.

Rules of ``eta_s`` (the contract in ``docs/protocol.md``):

* ``None`` rather than wrong: ``None`` when terminal or ``unknown``, and
  never from one sample — a progress rate needs two progress readings; a
  queue rate two positions; the model needs the provider's prior or
  ``min_samples`` finished tasks.
* It is the seconds left *as of the event's* ``observed_at``; a client
  counts it down from there.
* Between two events of the same state, the predicted end time
  (``observed_at + eta_s``) moves later by at most
  ``max(ETA_SLIP_MIN_S, ETA_SLIP_FRACTION * previous eta_s)``, unless the
  progress or the queue position went backwards. A state change starts a
  fresh estimate.
* It only rides on events that happen anyway: the tracker never makes an
  event because the estimate changed.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from datetime import datetime
from statistics import NormalDist

from gateway.core.model import Event, Observation, State

__all__ = [
    "ETA_SLIP_FRACTION",
    "ETA_SLIP_MIN_S",
    "DurationModel",
    "estimate",
    "eta_at",
    "position_bucket",
]

ETA_SLIP_MIN_S = 2.0
ETA_SLIP_FRACTION = 0.25
# How much of the new progress-rate estimate enters the predicted end at each
# event (exponential smoothing of the end time; the rest is the previous one).
SMOOTHING = 0.5
MAX_BUCKET = 6

_STANDARD = NormalDist()
# typical_duration_s = (low, high) is read as the 10th and 90th percentile of
# a log-normal distribution.
_Z90 = _STANDARD.inv_cdf(0.9)
# The prior is dropped when the shortest of the n tasks that ended while it was
# in use is so short that n tasks drawn from the prior would have one that
# short with a probability below this.
PRIOR_DOUBT = 0.001


def position_bucket(position: int | None) -> int:
    """The model's key for a queue position: 0 (none), then 1 + ⌊log2(position)⌋, capped."""
    if position is None or position <= 0:
        return 0
    return min(MAX_BUCKET, 1 + int(math.log2(position)))


class DurationModel:
    """An online estimate of how long one provider's tasks take.

    Args:
        prior: ``(low, high)`` seconds, read as the 10th and 90th percentile
            of a log-normal distribution (the provider's ``typical_duration_s``).
        window: completed durations kept per bucket (the oldest drop out, so
            the model follows a drifting upstream).
        min_samples: finished tasks a bucket needs before its own samples
            replace the prior (a bucket without enough falls back to bucket
            0, then to the prior).
    """

    def __init__(
        self,
        prior: tuple[float, float] | None = None,
        *,
        window: int = 200,
        min_samples: int = 5,
    ) -> None:
        if window < 1 or min_samples < 1:
            raise ValueError("window and min_samples must be positive")
        self.window = window
        self.min_samples = min_samples
        self._prior: tuple[float, float] | None = None  # (mu, sigma) of ln(duration)
        if prior is not None:
            low, high = sorted(prior)
            if low <= 0:
                raise ValueError("typical durations must be positive")
            mu = (math.log(low) + math.log(high)) / 2
            sigma = max(0.05, (math.log(high) - math.log(low)) / (2 * _Z90))
            self._prior = (mu, sigma)
        self._recent: dict[int, deque[float]] = {}
        self._sorted: dict[int, list[float]] = {}
        self._tested = 0  # finished tasks held against the prior
        self._lowest = 1.0  # the prior's CDF at the shortest of them

    def record(self, duration_s: float, bucket: int = 0) -> None:
        """One finished task took ``duration_s`` seconds (ignored unless positive, finite)."""
        if not math.isfinite(duration_s) or duration_s <= 0:
            return
        self._test_prior(duration_s)
        recent = self._recent.setdefault(bucket, deque())
        ordered = self._sorted.setdefault(bucket, [])
        if len(recent) >= self.window:
            old = recent.popleft()
            del ordered[bisect.bisect_left(ordered, old)]
        recent.append(duration_s)
        bisect.insort(ordered, duration_s)

    def _test_prior(self, duration_s: float) -> None:
        if self._prior is None:
            return
        mu, sigma = self._prior
        self._tested += 1
        self._lowest = min(self._lowest, _STANDARD.cdf((math.log(duration_s) - mu) / sigma))
        if 1.0 - (1.0 - self._lowest) ** self._tested < PRIOR_DOUBT:
            self._prior = None  # a task ended far sooner than the prior allows

    def samples(self, bucket: int = 0) -> int:
        return len(self._recent.get(bucket, ()))

    @property
    def has_prior(self) -> bool:
        """Whether the prior is still in use (it is dropped when the data contradict it)."""
        return self._prior is not None

    @property
    def known(self) -> bool:
        """Whether the model can say anything at all (a prior or some finished tasks)."""
        return self._prior is not None or any(
            len(v) >= self.min_samples for v in self._recent.values()
        )

    def remaining(self, elapsed_s: float, p: float, bucket: int = 0) -> float | None:
        """The ``p``-quantile of the time left for a task that has run ``elapsed_s``.

        That is, the quantile of ``D - elapsed`` given ``D > elapsed``.
        ``None`` if the model knows nothing, or the task has outlived every
        duration in the window (an empirical model cannot extrapolate).
        """
        elapsed_s = max(0.0, elapsed_s)
        for key in (bucket, 0) if bucket else (0,):
            ordered = self._sorted.get(key, [])
            if len(ordered) >= self.min_samples:
                return _empirical_remaining(ordered, elapsed_s, p)
        if self._prior is None:
            return None
        mu, sigma = self._prior
        survived = 0.0 if elapsed_s <= 0 else _STANDARD.cdf((math.log(elapsed_s) - mu) / sigma)
        target = survived + p * (1.0 - survived)
        if target >= 1.0 - 1e-12:
            return None
        return max(0.0, math.exp(mu + sigma * _STANDARD.inv_cdf(target)) - elapsed_s)

    def earliest_end(self, p: float, bucket: int = 0) -> float | None:
        """The ``p``-quantile of a task's whole duration, if the model can place it.

        From the bucket's samples (else bucket 0's) once there are enough to
        put at least one at or below it: the ``⌊p·(n + 1)⌋``-th shortest of
        ``n``, which a new task undercuts with a probability of at most ``p``
        on average. Until then from the prior; ``None`` if neither can (a
        low quantile read off a few samples would be too late: the shortest
        of ``n`` is undercut ``1/(n + 1)`` of the time).
        """
        if not 0 < p < 1:
            raise ValueError("p must be within (0, 1)")
        for key in (bucket, 0) if bucket else (0,):
            ordered = self._sorted.get(key, [])
            rank = math.floor(p * (len(ordered) + 1))
            if rank >= 1:
                return ordered[rank - 1]
        if self._prior is None:
            return None
        mu, sigma = self._prior
        return math.exp(mu + sigma * _STANDARD.inv_cdf(p))


def _empirical_remaining(ordered: list[float], elapsed_s: float, p: float) -> float | None:
    first = bisect.bisect_right(ordered, elapsed_s)
    tail = len(ordered) - first
    if tail == 0:
        return None
    index = first + min(tail - 1, max(0, math.ceil(p * tail) - 1))
    return ordered[index] - elapsed_s


def _epoch(stamp: str | None) -> float | None:
    if stamp is None:
        return None
    return datetime.fromisoformat(stamp).timestamp()


def eta_at(event: Event, now: float) -> float | None:
    """``event``'s ``eta_s`` counted down to ``now`` (at least 0), or ``None``."""
    observed = _epoch(event.observed_at)
    if event.eta_s is None or observed is None:
        return None
    return max(0.0, event.eta_s - max(0.0, now - observed))


def estimate(
    previous: Event, obs: Observation, *, now: float, expected_s: float | None
) -> float | None:
    """The ``eta_s`` of the event ``obs`` causes after ``previous``.

    Args:
        previous: the stored snapshot (the initial snapshot for a new task).
        obs: the new observation (not a fault).
        now: when ``obs`` was made (wall clock, seconds).
        expected_s: the duration model's expected time left for this task
            (its conditional median), ``None`` if it has none.
    """
    state = obs.state
    if state.terminal or state is State.UNKNOWN:
        return None
    if state is not previous.state:
        return _rounded(expected_s)  # a new state: a fresh estimate
    t0 = _epoch(previous.observed_at)
    if t0 is None or now <= t0:
        return _rounded(expected_s)
    p0, p1 = previous.progress, obs.progress
    q0, q1 = previous.position, obs.position
    went_back = (p0 is not None and p1 is not None and p1 < p0) or (
        q0 is not None and q1 is not None and q1 > q0
    )
    if went_back:
        return _rounded(expected_s)  # a new phase or a requeue: the old rate says nothing
    prior_end = t0 + previous.eta_s if previous.eta_s is not None else None
    candidate: float | None
    if p0 is not None and p1 is not None and p1 > p0 and p1 < 100:
        left = (100 - p1) * (now - t0) / (p1 - p0)
        end = now + left
        if prior_end is not None:
            end = prior_end + SMOOTHING * (end - prior_end)
        candidate = end - now
    elif q0 is not None and q1 is not None and q1 < q0:
        # The wait until the front is only a lower bound of the time left.
        wait = q1 * (now - t0) / (q0 - q1)
        candidate = None if expected_s is None else max(wait, expected_s)
    elif prior_end is not None and prior_end >= now:
        candidate = prior_end - now  # nothing new about the pace: keep counting down
    else:
        candidate = expected_s
    if candidate is None:
        return None
    if prior_end is not None and previous.eta_s is not None:
        slip = max(ETA_SLIP_MIN_S, ETA_SLIP_FRACTION * previous.eta_s)
        bound = prior_end + slip - now
        if bound <= 0 < candidate:
            return None  # overdue beyond the tolerance: the old estimate was wrong
        rounded = _rounded(candidate)
        if rounded is not None and rounded > bound:
            # Rounding must not carry it past the tolerance: down to the 0.1 s below.
            return max(0.0, math.floor(bound * 10) / 10)
        return rounded
    return _rounded(candidate)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 1)
