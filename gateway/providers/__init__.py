"""Upstream provider adapters and the registry of built-in kinds.

A provider's ``kind`` in the configuration picks its adapter class here;
``kind = "http"`` is the declarative one (:mod:`gateway.providers.http`).
"""

from __future__ import annotations

from gateway.exceptions import ConfigError
from gateway.providers.aholo import AholoAdapter
from gateway.providers.ailab import AilabAdapter
from gateway.providers.base import Adapter
from gateway.providers.genpic import GenpicAdapter
from gateway.providers.http import HttpAdapter
from gateway.providers.tryon import TryonAdapter
from gateway.providers.videoproc import VideoprocAdapter

__all__ = ["ADAPTERS", "adapter_class"]

ADAPTERS: dict[str, type[Adapter]] = {
    adapter.kind: adapter
    for adapter in (
        AilabAdapter,
        AholoAdapter,
        TryonAdapter,
        GenpicAdapter,
        VideoprocAdapter,
        HttpAdapter,
    )
}


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class of a provider kind.

    Raises:
        ConfigError: no built-in adapter has that kind (the message lists those that do).
    """
    try:
        return ADAPTERS[kind]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ConfigError(f"unknown provider kind {kind!r}; known kinds: {known}") from None
