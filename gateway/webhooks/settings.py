"""The ``[webhooks]`` configuration section."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["WebhooksConfig"]

_Seconds = Annotated[float, msgspec.Meta(gt=0, le=1e9)]
_Host = Annotated[str, msgspec.Meta(pattern=r"^(\*\.)?[A-Za-z0-9_.:-]+$")]


class WebhooksConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Signed deliveries of task events (``POST /v1/tasks`` with ``"webhook"``).

    Without a ``secret`` webhooks are off and registrations asking for one are refused.
    """

    secret: str | None = None  # "whsec_" + base64 of 16+ key bytes (Standard Webhooks)
    # Host names or IP literals, "*.example.com" for subdomains; empty: any public host.
    allowed_hosts: list[_Host] = msgspec.field(default_factory=list)
    allow_private: bool = False  # permit loopback / private / link-local addresses
    max_age_s: _Seconds = 86400.0  # retry a delivery for at most this long
    timeout_s: _Seconds = 10.0  # one attempt (connect + answer)
    retry_base_s: _Seconds = 5.0  # the first retry comes after 2.5–5 s; doubling after that
    retry_max_s: _Seconds = 3600.0  # the longest wait between two attempts
    poll_s: _Seconds = 1.0  # how often the outbox is checked for due retries
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16  # attempts in flight per node
