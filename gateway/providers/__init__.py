"""Upstream provider adapters and the registry of built-in kinds.

A provider's ``kind`` in the configuration picks its adapter class here;
``kind = "http"`` is the declarative one (:mod:`gateway.providers.declarative`).
Installed distributions add kinds through the ``pollcast.providers``
entry-point group (:mod:`gateway.providers.plugins`).
"""

from __future__ import annotations

from gateway.providers.aholo import AholoAdapter
from gateway.providers.ailab import AilabAdapter
from gateway.providers.base import Adapter
from gateway.providers.declarative import DeclarativeAdapter
from gateway.providers.genpic import GenpicAdapter
from gateway.providers.plugins import KindRegistry, Plugin
from gateway.providers.tryon import TryonAdapter
from gateway.providers.videoproc import VideoprocAdapter

__all__ = ["ADAPTERS", "adapter_class", "kind_origin", "plugin_of"]

ADAPTERS: dict[str, type[Adapter]] = {
    adapter.kind: adapter
    for adapter in (
        AilabAdapter,
        AholoAdapter,
        TryonAdapter,
        GenpicAdapter,
        VideoprocAdapter,
        DeclarativeAdapter,
    )
}


_KINDS = KindRegistry(ADAPTERS)


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class of a provider kind, built in or from a plugin.

    Raises:
        ConfigError: no adapter has that kind (the message lists those that do),
            or the plugin that has it cannot be used (naming it and its entry point).
    """
    return _KINDS.resolve(kind)[0]


def kind_origin(kind: str) -> str:
    """Where a kind comes from: ``built-in`` or ``plugin <distribution> <version>``.

    Raises:
        ConfigError: as :func:`adapter_class`.
    """
    return _KINDS.resolve(kind)[1]


def plugin_of(kind: str) -> Plugin | None:
    """The plugin a kind comes from (once resolved); ``None`` for a built-in kind."""
    return _KINDS.plugin(kind)
