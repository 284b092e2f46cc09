"""Injected upstream faults: which one (if any) hits the next status request.

``POST /_sim/faults`` arms one rule per provider; for ``duration_s`` seconds
each status request to that provider rolls a die and, with ``probability``,
is answered by the fault instead of normally. The board is pure: the clock
reading and the random source are arguments.
"""

from __future__ import annotations

import math
import random
from enum import StrEnum

import msgspec

from gateway.exceptions import InputError

__all__ = ["FaultBoard", "FaultMode", "FaultRule", "FaultSpec"]


class FaultMode(StrEnum):
    """How a faulted request is answered."""

    HTTP500 = "http500"  # 500 with a small HTML error page
    TIMEOUT = "timeout"  # no answer: held open until the client gives up
    RATE_LIMIT = "rate_limit"  # 429 with Retry-After
    MALFORMED = "malformed"  # 200 with a truncated JSON body
    SLOW = "slow"  # the correct answer, after delay_s
    RESET = "reset"  # headers promise a body, then the connection drops
    NONE = "none"  # clears the provider's rule


class FaultSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /_sim/faults``.

    ``duration_s`` ``null`` keeps the rule until it is cleared.
    """

    provider: str
    mode: FaultMode
    probability: float = 1.0
    retry_after_s: float = 2.0
    duration_s: float | None = 10.0
    delay_s: float = 2.0

    def check(self) -> None:
        """Raises: InputError naming the out-of-range field."""
        if not (math.isfinite(self.probability) and 0.0 <= self.probability <= 1.0):
            raise InputError("probability must be between 0 and 1", field="probability")
        for field, value in (
            ("retry_after_s", self.retry_after_s),
            ("delay_s", self.delay_s),
            ("duration_s", self.duration_s),
        ):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{field} must be a finite number >= 0", field=field)

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` value: whole seconds as an integer (RFC 9110 delay-seconds);
        a sub-second value is written as a decimal so short tests stay short."""
        return f"{self.retry_after_s:g}"


class FaultRule(msgspec.Struct, frozen=True):
    spec: FaultSpec
    until_mono: float | None  # None: until cleared


class FaultBoard:
    """The armed rule of each provider."""

    def __init__(self) -> None:
        self._rules: dict[str, FaultRule] = {}

    def arm(self, spec: FaultSpec, now_mono: float) -> None:
        """Replace ``spec.provider``'s rule; mode ``none`` just clears it."""
        if spec.mode is FaultMode.NONE:
            self._rules.pop(spec.provider, None)
            return
        until = None if spec.duration_s is None else now_mono + spec.duration_s
        self._rules[spec.provider] = FaultRule(spec, until)

    def clear(self, provider: str | None = None) -> None:
        if provider is None:
            self._rules.clear()
        else:
            self._rules.pop(provider, None)

    def pick(self, provider: str, now_mono: float, rng: random.Random) -> FaultSpec | None:
        """The fault hitting this request, or ``None`` to answer normally."""
        rule = self._rules.get(provider)
        if rule is None:
            return None
        if rule.until_mono is not None and now_mono >= rule.until_mono:
            del self._rules[provider]
            return None
        probability = rule.spec.probability
        if probability >= 1.0 or (probability > 0.0 and rng.random() < probability):
            return rule.spec
        return None

    def active(self, now_mono: float) -> list[dict[str, object]]:
        """The rules still in force, with their remaining seconds."""
        listing: list[dict[str, object]] = []
        for _, rule in sorted(self._rules.items()):
            if rule.until_mono is not None and now_mono >= rule.until_mono:
                continue
            remaining = None if rule.until_mono is None else round(rule.until_mono - now_mono, 3)
            listing.append({**msgspec.to_builtins(rule.spec), "remaining_s": remaining})
        return listing
