"""A configured provider: its adapter plus the effective polling policy."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.policy import IntervalPolicy, PredictivePolicy
from gateway.poller.upstream import HttpSettings
from gateway.providers.base import Adapter, PolicySettings

__all__ = ["ProviderRuntime"]


@dataclass(frozen=True, slots=True)
class ProviderRuntime:
    name: str  # the name used in task keys ("ailab"), not necessarily the kind
    adapter: Adapter
    policy: IntervalPolicy
    batch_size: int
    concurrency: int
    rate_per_s: float
    timeout_s: float
    result_ttl_s: float
    deadline_s: float
    cost_per_call: float
    budget_per_hour: float | None
    http: HttpSettings = field(default_factory=HttpSettings)  # proxy, CA bundle, response limits
    # (low, high) seconds: the duration model's prior (gateway/core/eta.py).
    typical_duration_s: tuple[float, float] | None = None
    predictive: PredictivePolicy | None = None  # polling = "predictive"

    @property
    def kind(self) -> str:
        return self.adapter.kind

    @classmethod
    def build(
        cls,
        name: str,
        adapter_cls: type[Adapter],
        settings: object,
        overrides: PolicySettings,
        *,
        default_deadline_s: float,
        http: HttpSettings | None = None,
    ) -> ProviderRuntime:
        """Merge the adapter's documented defaults with the config's overrides."""
        d = adapter_cls.defaults_for(settings)
        base = overrides.interval_s or d.interval_s
        batch_size = overrides.batch_size or d.batch_size
        max_s = max(base, overrides.max_interval_s or d.max_interval_s)
        typical = overrides.typical_duration_s
        if isinstance(typical, int | float):
            # One figure is a median: read it with a ×2 spread either way.
            typical = (typical / 2, typical * 2)
        return cls(
            name=name,
            adapter=adapter_cls(settings, batch_size=batch_size, name=name),
            policy=IntervalPolicy(
                base_s=base,
                max_s=max_s,
                backoff_cap_s=overrides.backoff_max_s or max(60.0, base * 8),
            ),
            batch_size=batch_size,
            concurrency=overrides.concurrency or d.concurrency,
            rate_per_s=overrides.rate_per_s or d.rate_per_s,
            timeout_s=overrides.timeout_s or d.timeout_s,
            result_ttl_s=overrides.result_ttl_s or d.result_ttl_s,
            deadline_s=overrides.deadline_s or default_deadline_s,
            cost_per_call=d.cost_per_call,
            budget_per_hour=overrides.budget_per_hour,
            http=http or HttpSettings(),
            typical_duration_s=typical or d.typical_duration_s,
            predictive=PredictivePolicy(base_s=base, ceiling_s=max_s)
            if overrides.polling == "predictive"
            else None,
        )

    def describe(self) -> dict[str, object]:
        """The public policy (``GET /v1/providers``): no URL, no credential."""
        return {
            "name": self.name,
            "kind": self.kind,
            "batch": self.batch_size > 1,
            "batch_size": self.batch_size,
            "interval_s": self.policy.base_s,
            "max_interval_s": self.policy.max_s,
            "backoff_max_s": self.policy.backoff_cap_s,
            "concurrency": self.concurrency,
            "rate_per_s": self.rate_per_s,
            "timeout_s": self.timeout_s,
            "result_ttl_s": self.result_ttl_s,
            "deadline_s": self.deadline_s,
            "cost_per_call": self.cost_per_call,
            "budget_per_hour": self.budget_per_hour,
            "typical_duration_s": list(self.typical_duration_s)
            if self.typical_duration_s
            else None,
            "polling": "fixed" if self.predictive is None else "predictive",
        }
