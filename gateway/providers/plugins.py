"""Provider kinds from other packages: the ``pollcast.providers`` entry-point group.

A distribution adds a provider ``kind`` without touching pollcast by naming
an :class:`~gateway.providers.base.Adapter` subclass under that group; the
entry point's name is the kind::

    # the plugin's pyproject.toml
    [project.entry-points."pollcast.providers"]
    clipstatus = "pollcast_example_provider:ClipStatusAdapter"

Only the entry point of a kind a configuration uses is imported. Whatever
goes wrong — the import fails, the object is not an adapter class, its
``kind`` differs from the entry point's name, two distributions claim the
same kind, a plugin claims a built-in kind — is a :class:`ConfigError`
naming the distribution and the entry point, never a traceback. Built-in
kinds cannot be shadowed: a plugin may only add kinds.

Entry points: https://packaging.python.org/en/latest/specifications/entry-points/
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from gateway.exceptions import ConfigError
from gateway.providers.base import Adapter, ProviderDefaults

__all__ = ["BUILT_IN", "GROUP", "EntryPointLike", "KindRegistry", "Plugin"]

GROUP = "pollcast.providers"


class EntryPointLike(Protocol):
    """What is read of an :class:`importlib.metadata.EntryPoint`."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def dist(self) -> importlib.metadata.Distribution | None: ...

    def load(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Plugin:
    """A kind some installed distribution provides."""

    kind: str
    dist: str
    version: str
    entry_point: str  # "name = module:attr", as declared

    @property
    def origin(self) -> str:
        """How ``pollcast check-config`` names it: ``plugin <dist> <version>``."""
        return f"plugin {self.dist} {self.version}"

    @property
    def label(self) -> str:
        return f"provider plugin {self.dist} {self.version} (entry point {self.entry_point})"


def _plugin_of(entry_point: EntryPointLike) -> Plugin:
    dist = entry_point.dist
    name = dist.metadata["Name"] if dist is not None else None
    return Plugin(
        kind=entry_point.name,
        dist=name or "<unknown distribution>",
        version=(dist.version if dist is not None else None) or "<unknown version>",
        entry_point=f"{entry_point.name} = {entry_point.value}",
    )


def _installed() -> Iterable[EntryPointLike]:
    return importlib.metadata.entry_points(group=GROUP)


def _check_adapter(found: object, plugin: Plugin) -> type[Adapter]:
    """The loaded object, if it is a usable adapter class for ``plugin.kind``."""
    if not (isinstance(found, type) and issubclass(found, Adapter)):
        raise ConfigError(
            f"{plugin.label} is {type(found).__name__} {found!r:.60}, "
            "not a subclass of gateway.providers.base.Adapter"
        )
    missing = [name for name in ("kind", "Settings", "defaults") if not hasattr(found, name)]
    if missing:
        raise ConfigError(f"{plugin.label}: the adapter class lacks {', '.join(missing)}")
    if getattr(found, "__abstractmethods__", None):
        names = ", ".join(sorted(found.__abstractmethods__))
        raise ConfigError(f"{plugin.label}: the adapter class does not implement {names}")
    if found.kind != plugin.kind:
        raise ConfigError(
            f"{plugin.label}: the adapter's kind is {found.kind!r}, "
            f"but the entry point names the kind {plugin.kind!r}; they must match"
        )
    settings = found.Settings
    if not (isinstance(settings, type) and issubclass(settings, msgspec.Struct)):
        raise ConfigError(f"{plugin.label}: the adapter's Settings is not a msgspec.Struct")
    if not isinstance(found.defaults, ProviderDefaults):
        raise ConfigError(f"{plugin.label}: the adapter's defaults is not a ProviderDefaults")
    return found


BUILT_IN = "built-in"


class KindRegistry:
    """Provider kinds: the built-in ones, then those installed plugins add.

    The group's entry points are listed once (the first time a kind is
    asked for); a plugin's module is imported only when its kind is.

    Args:
        builtin: the built-in adapter classes by kind; no plugin may shadow one.
        entry_points: lists the group's entry points (injectable for tests).
    """

    def __init__(
        self,
        builtin: Mapping[str, type[Adapter]],
        entry_points: Callable[[], Iterable[EntryPointLike]] = _installed,
    ) -> None:
        self._builtin = dict(builtin)
        self._entry_points = entry_points
        self._claims: dict[str, list[EntryPointLike]] | None = None
        self._loaded: dict[str, tuple[type[Adapter], Plugin]] = {}

    def _claimed(self) -> dict[str, list[EntryPointLike]]:
        if self._claims is None:
            claims: dict[str, list[EntryPointLike]] = {}
            for entry_point in self._entry_points():
                claims.setdefault(entry_point.name, []).append(entry_point)
            self._claims = claims
        return self._claims

    def known(self) -> list[str]:
        """Every kind that can be configured (plugins' are listed, not imported)."""
        return sorted({*self._builtin, *self._claimed()})

    def plugin(self, kind: str) -> Plugin | None:
        """The plugin an already resolved kind came from; ``None`` for a built-in one."""
        loaded = self._loaded.get(kind)
        return None if loaded is None else loaded[1]

    def resolve(self, kind: str) -> tuple[type[Adapter], str]:
        """The adapter class of ``kind`` and where it comes from.

        Returns:
            The class and its origin: ``"built-in"`` or ``"plugin <dist> <version>"``.

        Raises:
            ConfigError: an unknown kind (the message lists the known ones), or
                a plugin that cannot be used, naming its distribution and entry point.
        """
        claims = self._claimed().get(kind, [])
        builtin = self._builtin.get(kind)
        if builtin is not None:
            if claims:
                who = "; ".join(_plugin_of(ep).label for ep in claims)
                raise ConfigError(
                    f"{who} claims the built-in provider kind {kind!r}: plugins may only "
                    "add new kinds, never replace a built-in one; rename its entry point"
                )
            return builtin, BUILT_IN
        if kind in self._loaded:
            adapter, plugin = self._loaded[kind]
            return adapter, plugin.origin
        if not claims:
            known = ", ".join(self.known())
            raise ConfigError(f"unknown provider kind {kind!r}; known kinds: {known}")
        plugins = {_plugin_of(ep): ep for ep in claims}
        if len(plugins) > 1:
            who = "; ".join(p.label for p in plugins)
            raise ConfigError(f"provider kind {kind!r} is claimed by more than one plugin: {who}")
        [(plugin, entry_point)] = plugins.items()
        try:
            found = entry_point.load()
        except Exception as exc:  # whatever third-party code raises while importing
            raise ConfigError(
                f"{plugin.label} failed to load: {type(exc).__name__}: {exc}"
            ) from None
        adapter = _check_adapter(found, plugin)
        self._loaded[kind] = (adapter, plugin)
        return adapter, plugin.origin
