"""The kind registry: built-in kinds, then ``pollcast.providers`` entry points (faked here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.core.model import Observation
from gateway.exceptions import ConfigError
from gateway.providers import ADAPTERS
from gateway.providers.base import Adapter, UpstreamRequest, UpstreamResponse
from gateway.providers.plugins import KindRegistry
from gateway.providers.videoproc import VideoprocAdapter, VideoprocSettings


@dataclass
class FakeDist:
    name: str
    version: str

    @property
    def metadata(self) -> dict[str, str]:
        return {"Name": self.name}


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    dist: FakeDist | None
    target: Callable[[], Any]
    loads: list[str] = field(default_factory=list)

    def load(self) -> Any:
        self.loads.append(self.name)
        return self.target()


class ClipAdapter(VideoprocAdapter):
    kind = "clip"


class Abstract(Adapter):
    kind = "abstract"
    Settings = VideoprocSettings
    defaults = VideoprocAdapter.defaults

    def build_request(
        self, task_ids: Sequence[str], *, now_ms: int, request_id: str
    ) -> UpstreamRequest:
        raise NotImplementedError


def entry(name: str, target: Callable[[], Any], dist: str = "clip-plugin") -> FakeEntryPoint:
    return FakeEntryPoint(name, f"{dist.replace('-', '_')}:Thing", FakeDist(dist, "1.2.3"), target)


def registry(*entry_points: FakeEntryPoint) -> KindRegistry:
    return KindRegistry(ADAPTERS, lambda: list(entry_points))


def error_of(reg: KindRegistry, kind: str) -> str:
    with pytest.raises(ConfigError) as caught:
        reg.resolve(kind)
    return str(caught.value)


def test_a_plugin_kind_resolves_with_its_origin_and_loads_once() -> None:
    clip = entry("clip", lambda: ClipAdapter)
    other = entry("other", lambda: pytest.fail("only the kind asked for is imported"))
    reg = registry(clip, other)
    assert reg.resolve("clip") == (ClipAdapter, "plugin clip-plugin 1.2.3")
    assert reg.resolve("clip") == (ClipAdapter, "plugin clip-plugin 1.2.3")
    assert clip.loads == ["clip"]
    assert reg.resolve("videoproc") == (VideoprocAdapter, "built-in")
    assert reg.known() == sorted([*ADAPTERS, "clip", "other"])


def test_an_import_failure_names_the_distribution_and_the_entry_point() -> None:
    def boom() -> Any:
        raise ImportError("cannot import name 'Thing'")

    message = error_of(registry(entry("clip", boom)), "clip")
    assert message == (
        "provider plugin clip-plugin 1.2.3 (entry point clip = clip_plugin:Thing) "
        "failed to load: ImportError: cannot import name 'Thing'"
    )


def test_any_exception_while_loading_is_a_config_error() -> None:
    message = error_of(registry(entry("clip", lambda: 1 / 0)), "clip")
    assert "failed to load: ZeroDivisionError: division by zero" in message


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (lambda: object, "is type <class 'object'>, not a subclass of"),
        (lambda: len, "is builtin_function_or_method <built-in function len>, not a subclass"),
        (lambda: VideoprocAdapter, "the adapter's kind is 'videoproc', but the entry point"),
        (lambda: Abstract, "the adapter class does not implement parse"),
    ],
)
def test_what_is_not_a_usable_adapter_is_refused(target: Callable[[], Any], expected: str) -> None:
    kind = "abstract" if expected.endswith("parse") else "clip"
    message = error_of(registry(entry(kind, target)), kind)
    assert message.startswith(f"provider plugin clip-plugin 1.2.3 (entry point {kind} = ")
    assert expected in message


def test_a_plugin_may_not_shadow_a_built_in_kind() -> None:
    shadow = entry("ailab", lambda: pytest.fail("a shadowing plugin is never imported"))
    message = error_of(registry(shadow), "ailab")
    assert message == (
        "provider plugin clip-plugin 1.2.3 (entry point ailab = clip_plugin:Thing) claims the "
        "built-in provider kind 'ailab': plugins may only add new kinds, never replace a "
        "built-in one; rename its entry point"
    )
    # The other built-in kinds are unaffected.
    assert registry(shadow).resolve("videoproc") == (VideoprocAdapter, "built-in")


def test_two_distributions_claiming_one_kind_is_an_error() -> None:
    first = entry("clip", lambda: ClipAdapter, dist="clip-a")
    second = entry("clip", lambda: ClipAdapter, dist="clip-b")
    message = error_of(registry(first, second), "clip")
    assert "provider kind 'clip' is claimed by more than one plugin" in message
    assert "clip-a 1.2.3" in message and "clip-b 1.2.3" in message
    assert first.loads == second.loads == []


def test_an_unknown_kind_lists_plugin_kinds_too() -> None:
    message = error_of(registry(entry("clip", lambda: ClipAdapter)), "nope")
    assert message == (
        "unknown provider kind 'nope'; known kinds: aholo, ailab, clip, genpic, http, tryon, "
        "videoproc"
    )


def test_a_plugin_adapter_builds_and_parses_like_any_other() -> None:
    cls, _ = registry(entry("clip", lambda: ClipAdapter)).resolve("clip")
    adapter = cls(cls.Settings(base_url="https://clips.example"))
    request = adapter.build_request(["a/b"], now_ms=0, request_id="r")
    assert request.url == "https://clips.example/api/status/a%2Fb"
    [observation] = adapter.parse(request, UpstreamResponse(404, {}, b""))
    assert isinstance(observation, Observation) and observation.error is not None
