"""Interval policy, rate limit and cost budget: pure, with injected time and randomness."""

from __future__ import annotations

import random

import pytest

from gateway.core.model import Fault, FaultKind
from gateway.core.policy import CostBudget, IntervalPolicy, PollState, RetryDelay, TokenBucket

SERVER_FAULT = Fault(FaultKind.SERVER, "ailab answered HTTP 503")
AUTH_FAULT = Fault(FaultKind.AUTH, "ailab answered HTTP 401", retryable=False)


class TopOfRange(random.Random):
    """``uniform(a, b)`` returns ``b``: the jitter's upper bound, deterministically."""

    def random(self) -> float:
        return 1.0


class BottomOfRange(random.Random):
    def random(self) -> float:
        return 0.0


# --- IntervalPolicy: quiet intervals ---------------------------------------


def test_start_is_the_base_interval_with_no_failures() -> None:
    assert IntervalPolicy(base_s=5.0, max_s=30.0).start() == PollState(5.0, 0)


def test_after_change_resets_to_base_and_clears_failures() -> None:
    policy = IntervalPolicy(base_s=5.0, max_s=30.0)
    decision = policy.after_change(PollState(interval_s=20.0, failures=4))
    assert decision.delay_s == 5.0
    assert decision.state == PollState(5.0, 0)
    assert decision.give_up is False


def test_after_no_change_grows_by_growth_up_to_max() -> None:
    policy = IntervalPolicy(base_s=4.0, max_s=10.0, growth=1.5)
    state = policy.start()
    delays = []
    for _ in range(5):
        decision = policy.after_no_change(state)
        delays.append(decision.delay_s)
        assert decision.state.interval_s == decision.delay_s
        state = decision.state
    assert delays == [6.0, 9.0, 10.0, 10.0, 10.0]


def test_after_no_change_never_goes_below_base() -> None:
    policy = IntervalPolicy(base_s=4.0, max_s=10.0, growth=1.25)
    assert policy.after_no_change(PollState(0.5)).delay_s == 4.0
    # A growth factor below 1 must not shrink the interval under the base either.
    shrinking = IntervalPolicy(base_s=4.0, max_s=10.0, growth=0.5)
    assert shrinking.after_no_change(PollState(4.0)).delay_s == 4.0


def test_after_no_change_clears_failures() -> None:
    policy = IntervalPolicy(base_s=2.0, max_s=10.0)
    assert policy.after_no_change(PollState(2.0, failures=3)).state.failures == 0


# --- IntervalPolicy: faults ------------------------------------------------


def test_fault_delay_is_within_full_jitter_range() -> None:
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, backoff_cap_s=20.0, min_delay_s=0.05)
    for seed in range(300):
        rng = random.Random(seed)
        state = PollState(interval_s=7.0)
        for failures in range(1, 8):
            decision = policy.after_fault(state, SERVER_FAULT, rng)
            ceiling = min(20.0, 1.0 * 2.0**failures)
            assert 0.05 <= decision.delay_s <= ceiling, (seed, failures)
            assert decision.state == PollState(7.0, failures)  # the quiet interval is kept
            assert decision.give_up is False
            state = decision.state


def test_fault_delays_use_the_whole_jitter_range() -> None:
    # Full jitter, not "ceiling ± a little": across seeds the first delay spreads over [0, 2].
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, min_delay_s=0.0)
    delays = [
        policy.after_fault(policy.start(), SERVER_FAULT, random.Random(s)).delay_s
        for s in range(300)
    ]
    assert min(delays) < 0.2
    assert max(delays) > 1.8


def test_fault_ceiling_doubles_up_to_the_cap() -> None:
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, backoff_cap_s=10.0)
    rng = TopOfRange()
    state = policy.start()
    ceilings = []
    for _ in range(6):
        decision = policy.after_fault(state, SERVER_FAULT, rng)
        ceilings.append(decision.delay_s)
        state = decision.state
    assert ceilings == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert state.failures == 6


def test_fault_delay_is_never_below_min_delay() -> None:
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, min_delay_s=0.25)
    decision = policy.after_fault(policy.start(), SERVER_FAULT, BottomOfRange())
    assert decision.delay_s == 0.25


def test_retry_after_raises_the_delay_to_at_least_retry_after() -> None:
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, backoff_cap_s=10.0)
    limited = Fault(FaultKind.RATE_LIMITED, "429", retry_after_s=30.0)
    assert policy.after_fault(policy.start(), limited, TopOfRange()).delay_s == 30.0
    # A Retry-After shorter than the jittered delay does not shorten it.
    short = Fault(FaultKind.RATE_LIMITED, "429", retry_after_s=0.5)
    assert policy.after_fault(policy.start(), short, TopOfRange()).delay_s == 2.0
    assert policy.after_fault(policy.start(), short, BottomOfRange()).delay_s == 0.5


def test_non_retryable_fault_gives_up_exactly_at_max_auth_failures() -> None:
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, max_auth_failures=3)
    rng = random.Random(7)
    state = policy.start()
    verdicts = []
    for _ in range(3):
        decision = policy.after_fault(state, AUTH_FAULT, rng)
        verdicts.append(decision.give_up)
        state = decision.state
    assert verdicts == [False, False, True]


def test_retryable_faults_never_give_up() -> None:
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, max_auth_failures=3)
    rng = random.Random(7)
    state = policy.start()
    for _ in range(20):
        decision = policy.after_fault(state, SERVER_FAULT, rng)
        assert decision.give_up is False
        state = decision.state


def test_a_change_after_faults_restarts_the_backoff() -> None:
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, backoff_cap_s=100.0)
    state = policy.start()
    for _ in range(4):
        state = policy.after_fault(state, SERVER_FAULT, TopOfRange()).state
    state = policy.after_change(state).state
    assert policy.after_fault(state, SERVER_FAULT, TopOfRange()).delay_s == 2.0


def test_backoff_delay_is_the_delay_after_fault_draws() -> None:
    # One jittered draw for a whole batch lane: the same number after_fault would give.
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, backoff_cap_s=100.0)
    for failures in range(1, 6):
        by_state = policy.after_fault(PollState(1.0, failures - 1), SERVER_FAULT, random.Random(9))
        assert policy.backoff_delay(failures, SERVER_FAULT, random.Random(9)) == by_state.delay_s
    assert policy.backoff_delay(3, SERVER_FAULT, TopOfRange()) == 8.0


def test_gives_up_only_on_non_retryable_faults_from_max_auth_failures() -> None:
    policy = IntervalPolicy(base_s=1.0, max_s=10.0, max_auth_failures=3)
    assert [policy.gives_up(AUTH_FAULT, n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert not policy.gives_up(SERVER_FAULT, 100)


# --- RetryDelay (a failing loop's wait) ----------------------------------------


def test_retry_delay_doubles_up_to_its_cap() -> None:
    delays = RetryDelay(first_s=0.2, cap_s=5.0)
    assert [delays.next_delay() for _ in range(7)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    )


def test_retry_delay_starts_again_after_a_success() -> None:
    delays = RetryDelay(first_s=0.2, cap_s=5.0)
    for _ in range(6):
        delays.next_delay()
    delays.reset()
    assert [delays.next_delay() for _ in range(3)] == pytest.approx([0.2, 0.4, 0.8])


def test_retry_delay_rejects_nonsense() -> None:
    for first, cap, factor in ((0.0, 1.0, 2.0), (2.0, 1.0, 2.0), (0.1, 1.0, 0.5)):
        with pytest.raises(ValueError, match="first_s"):
            RetryDelay(first_s=first, cap_s=cap, factor=factor)


# --- TokenBucket -----------------------------------------------------------


def test_token_bucket_rejects_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(-1.0)


def test_token_bucket_burst_then_exact_waits() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=2.0)
    assert [bucket.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.5]


def test_token_bucket_refills_with_time() -> None:
    bucket = TokenBucket(rate_per_s=4.0, burst=2.0)
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == 0.25  # in debt by one token
    # At t=1 four tokens have come back: the debt is repaid and the bucket is full again.
    assert bucket.reserve(1.0) == 0.0
    assert bucket.reserve(1.0) == 0.0
    assert bucket.reserve(1.0) == 0.25


def test_token_bucket_does_not_refill_beyond_burst() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2.0)
    bucket.reserve(0.0)
    # A long idle period refills to capacity only: two free slots, then a wait.
    assert [bucket.reserve(1000.0) for _ in range(3)] == [0.0, 0.0, 1.0]


def test_token_bucket_default_burst_is_rate_but_at_least_one() -> None:
    assert TokenBucket(rate_per_s=4.0).capacity == 4.0
    slow = TokenBucket(rate_per_s=0.5)
    assert slow.capacity == 1.0
    assert [slow.reserve(0.0), slow.reserve(0.0)] == [0.0, 2.0]


def test_token_bucket_debt_is_paid_back_by_waiting() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=1.0)
    assert bucket.reserve(0.0) == 0.0
    wait = bucket.reserve(0.0)
    assert wait == 0.5
    # That slot is t=0.5; the next call made at t=0.5 is booked one interval later.
    assert bucket.reserve(wait) == 0.5


# --- CostBudget ------------------------------------------------------------


def test_cost_budget_rejects_non_positive_cost() -> None:
    with pytest.raises(ValueError, match="positive"):
        CostBudget(limit=1.0, cost_per_call=0.0)


@pytest.mark.parametrize(
    ("limit", "cost", "calls"),
    [(0.3, 0.1, 3), (0.7, 0.1, 7), (1.0, 0.1, 10), (0.6, 0.2, 3), (0.25, 0.1, 2), (0.09, 0.1, 0)],
)
def test_cost_budget_allows_exactly_limit_over_cost_calls(
    limit: float, cost: float, calls: int
) -> None:
    budget = CostBudget(limit=limit, cost_per_call=cost, window_s=3600.0)
    allowed = 0
    while budget.wait_time(10.0) == 0.0 and allowed < 100:
        budget.spend(10.0)
        allowed += 1
    assert allowed == calls


def test_cost_budget_strict_window_wait_time() -> None:
    budget = CostBudget(limit=0.3, cost_per_call=0.1, window_s=100.0)
    for t in (0.0, 10.0, 20.0):
        assert budget.wait_time(t) == 0.0
        budget.spend(t)
    # Full: the next call fits when the oldest (t=0) leaves the window at t=100.
    assert budget.wait_time(30.0) == 70.0
    assert budget.wait_time(99.0) == 1.0
    assert budget.wait_time(100.0) == 0.0
    budget.spend(100.0)
    # Now the oldest is t=10.
    assert budget.wait_time(100.0) == 10.0


def test_cost_budget_spent_counts_calls_inside_the_window() -> None:
    budget = CostBudget(limit=1.0, cost_per_call=0.1, window_s=100.0)
    assert budget.spent(0.0) == 0.0
    budget.spend(0.0)
    budget.spend(50.0)
    assert budget.spent(50.0) == pytest.approx(0.2)
    assert budget.spent(100.0) == pytest.approx(0.1)  # t=0 has left the window
    assert budget.spent(150.0) == 0.0


def test_cost_budget_of_zero_never_allows_a_call() -> None:
    budget = CostBudget(limit=0.0, cost_per_call=0.1, window_s=3600.0)
    assert budget.wait_time(0.0) == 3600.0
    assert budget.wait_time(1e6) == 3600.0
