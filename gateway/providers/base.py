"""The shape every provider adapter shares.

An adapter is sans-I/O (like ``websockets.protocol``): it builds
:class:`UpstreamRequest` values for task ids and parses an
:class:`UpstreamResponse` into one :class:`Observation` per task id. It never
opens a socket and never reads a clock: the current time and request ids are
arguments, so signatures are testable with fixed values.

A concrete adapter declares:

* ``kind`` — the provider kind (``"ailab"``…), used in config ``kind = ...``;
* ``Settings`` — a ``msgspec.Struct`` of its credentials/options, converted
  from the provider's TOML table (unknown keys are the policy overrides in
  :class:`PolicySettings`);
* ``defaults`` — :class:`ProviderDefaults`, taken from the upstream's doc.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import msgspec

from gateway.core.model import Fault, FaultKind, Observation

__all__ = [
    "Adapter",
    "PolicySettings",
    "ProviderDefaults",
    "UpstreamRequest",
    "UpstreamResponse",
    "fault_for_status",
    "fault_observations",
    "parse_retry_after",
]


class UpstreamRequest(msgspec.Struct, frozen=True):
    """One HTTP request to an upstream, plus the task ids it asks about."""

    method: str
    url: str
    task_ids: tuple[str, ...]
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


class UpstreamResponse(msgspec.Struct, frozen=True):
    """What came back. ``headers`` keys are lower-case."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes


class ProviderDefaults(msgspec.Struct, frozen=True):
    """Polling policy defaults, taken from the upstream's own documentation."""

    interval_s: float  # the doc's recommended polling interval
    max_interval_s: float  # how slow polling may get while nothing changes
    batch_size: int = 1  # >1: many ids in one request
    concurrency: int = 16  # requests in flight at once (single-task providers)
    rate_per_s: float = 50.0  # requests per second to this upstream
    timeout_s: float = 10.0
    result_ttl_s: float = 24 * 3600.0  # how long results stay valid/kept
    cost_per_call: float = 0.0  # e.g. tryon: 0.1 coins per call
    typical_duration_s: tuple[float, float] | None = None  # (low, high), when the doc says


class PolicySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-provider overrides of :class:`ProviderDefaults` (all optional)."""

    interval_s: float | None = None
    max_interval_s: float | None = None
    batch_size: int | None = None
    concurrency: int | None = None
    rate_per_s: float | None = None
    timeout_s: float | None = None
    result_ttl_s: float | None = None
    backoff_max_s: float | None = None  # the longest wait after repeated failures
    budget_per_hour: float | None = None  # spend cap for paid providers
    deadline_s: float | None = None
    # How long tasks usually take: a median, or (low, high) read as the 10th
    # and 90th percentile; the duration model's prior (gateway/core/eta.py).
    typical_duration_s: float | tuple[float, float] | None = None
    polling: Literal["fixed", "predictive"] | None = None  # None: "fixed"


class Adapter(ABC):
    """Base class of the five built-in adapters (and the declarative one)."""

    kind: ClassVar[str]
    Settings: ClassVar[type[msgspec.Struct]]
    defaults: ClassVar[ProviderDefaults]

    def __init__(
        self, settings: Any, *, batch_size: int | None = None, name: str | None = None
    ) -> None:
        self.settings = settings
        self.batch_size = batch_size or self.defaults_for(settings).batch_size
        self.name = name or self.kind  # the configured provider name, for messages

    @classmethod
    def defaults_for(cls, settings: Any) -> ProviderDefaults:
        """The polling defaults of a provider with these settings.

        A built-in adapter's come from its upstream's doc (:attr:`defaults`); a
        declarative adapter derives some of them (batch size, cost) from its settings.
        """
        return cls.defaults

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        """Reject settings their ``Struct`` types alone cannot (e.g. a mapping's path syntax).

        Raises:
            ConfigError: whose ``path`` names the key relative to the provider's table.
        """
        return None

    @abstractmethod
    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        """Build the request for ``task_ids`` (at most ``batch_size`` of them).

        Args:
            task_ids: upstream task ids, already validated.
            now_ms: the current Unix time in milliseconds (for signatures).
            request_id: a fresh random id (e.g. genpic's ``request_uuid``).
        """

    @abstractmethod
    def parse(self, request: UpstreamRequest, response: UpstreamResponse) -> list[Observation]:
        """One observation per id in ``request.task_ids``, in that order.

        Never raises: a reply it cannot understand becomes observations with
        a :class:`Fault` of kind ``malformed`` saying precisely what was wrong.
        """

    def check_task_id(self, task_id: str) -> None:  # noqa: B027 (optional hook)
        """Reject ids this upstream can never accept (e.g. tryon ids are integers).

        Raises:
            InvalidTaskKey: saying what the upstream expects.
        """

    def secret_values(self) -> tuple[str, ...]:
        """Every credential value this adapter holds (for redaction checks)."""
        return ()


def fault_observations(task_ids: Sequence[str], fault: Fault) -> list[Observation]:
    return [Observation(task_id=t, fault=fault) for t in task_ids]


MAX_RETRY_AFTER_S = 3600.0


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` as seconds (RFC 9110 §10.2.3: delay-seconds form only)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    # "inf"/"nan" parse as floats; an upstream cannot ask us to wait forever.
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def fault_for_status(response: UpstreamResponse, what: str) -> Fault | None:
    """The fault an HTTP status alone implies, or ``None`` for 2xx.

    ``what`` names the upstream in the message ("ailab answered HTTP 503").
    """
    status = response.status_code
    if 200 <= status < 300:
        return None
    message = f"{what} answered HTTP {status}"
    if status in (401, 403):
        return Fault(FaultKind.AUTH, message, retryable=False)
    if status == 429:
        return Fault(
            FaultKind.RATE_LIMITED, message, retry_after_s=parse_retry_after(response.headers)
        )
    if status >= 500:
        return Fault(FaultKind.SERVER, message, retry_after_s=parse_retry_after(response.headers))
    return Fault(FaultKind.CLIENT, message)
