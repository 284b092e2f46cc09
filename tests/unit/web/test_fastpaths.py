"""check(): one warning naming every difference, and the plain path when there is one."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import parse_config
from gateway.exceptions import ConfigError
from gateway.server import http_protocol
from gateway.web.connection import GuardedHttpProtocol
from gateway.web.fastpaths import FLOW_CONTROL, check
from gateway.web.guard import PlainHeadGuard


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_every_internal_as_expected_runs_fast_and_warns_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fast = check({})
    assert fast.active and fast.path == "fast" and fast.missing == ()
    assert warnings_of(caplog) == []
    assert fast.describe() == f"HTTP fast paths on (uvicorn {uvicorn.__version__})"


def test_another_uvicorn_minor_runs_plain_with_one_warning_saying_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.55.0")
    fast = check({})
    assert not fast.active and fast.path == "plain"
    assert fast.missing == ("uvicorn 0.55.0 is not 0.54.x",)
    (warning,) = warnings_of(caplog)
    assert warning.startswith("HTTP fast paths off: uvicorn 0.55.0 differs from ")
    assert "uvicorn 0.55.0 is not 0.54.x" in warning
    assert "running on uvicorn's standard protocol" in warning


def mutated_httptools_impl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edits: dict[str, str]
) -> ModuleType:
    """A copy of uvicorn's httptools_impl with ``edits`` made to its source, as a
    newer uvicorn might have it."""
    source = inspect.getsource(httptools_impl)
    for old, new in edits.items():
        assert old in source, old
        source = source.replace(old, new)
    path = tmp_path / "httptools_impl_next.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("httptools_impl_next", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # where inspect finds its source
    spec.loader.exec_module(module)
    return module


def test_each_missing_or_reshaped_internal_is_named_in_the_one_warning(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = mutated_httptools_impl(
        tmp_path,
        monkeypatch,
        {
            "def on_response_complete(self)": "def on_response_done(self)",
            "def data_received(self, data: bytes)": "def data_received(self, chunk: bytes)",
            "self.parser.feed_data(data)": "self.parser.feed_data(chunk)",
            "self.chunked_encoding": "self.chunking",
            "self.pipeline.pop()": "self.pipeline.popleft()",
        },
    )

    def modules(name: str) -> ModuleType:
        return newer if name == httptools_impl.__name__ else importlib.import_module(name)

    fast = check({}, modules=modules)
    assert not fast.active and fast.reason == "uvicorn internals differ"
    assert set(fast.missing) == {
        "HttpToolsProtocol.on_response_complete is missing",
        "HttpToolsProtocol.data_received(chunk) is not HttpToolsProtocol.data_received(data)",
        "RequestResponseCycle no longer sets self.chunked_encoding",
        "uvicorn.protocols.http.httptools_impl uses pipeline.popleft "
        "(the stand-in has only appendleft, pop)",
    }
    (warning,) = warnings_of(caplog)
    for problem in fast.missing:
        assert problem in warning


def test_a_module_that_is_gone_is_a_difference_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def modules(name: str) -> ModuleType:
        if name == FLOW_CONTROL:
            raise ModuleNotFoundError(f"No module named {name!r}")
        if name == httptools_impl.__name__:
            # A module object without the cycle class.
            return SimpleNamespace(HttpToolsProtocol=HttpToolsProtocol)  # type: ignore[return-value]
        return importlib.import_module(name)

    fast = check({}, modules=modules)
    assert not fast.active
    assert any("uvicorn.protocols.http.flow_control" in m for m in fast.missing)
    assert any("RequestResponseCycle is missing" in m for m in fast.missing)
    assert len(warnings_of(caplog)) == 1


def test_the_switch_forces_plain_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    by_env = check({"POLLCAST_FAST_PATHS": "off"})
    by_config = check({}, "off")
    assert not by_env.active and by_env.reason == "POLLCAST_FAST_PATHS=off"
    assert not by_config.active and by_config.reason == 'server.fast_paths = "off"'
    assert check({"POLLCAST_FAST_PATHS": "on"}).active
    assert warnings_of(caplog) == []
    assert "HTTP fast paths off (POLLCAST_FAST_PATHS=off)" in by_env.describe()
    with pytest.raises(ConfigError) as bad:
        check({"POLLCAST_FAST_PATHS": "fast please"})
    assert bad.value.path == "POLLCAST_FAST_PATHS"


def test_the_fallback_serves_uvicorns_own_protocol_behind_the_plain_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = parse_config({}, env={})
    fast, http = http_protocol(config, {})
    assert fast.active and isinstance(http, type) and issubclass(http, GuardedHttpProtocol)

    monkeypatch.setattr(uvicorn, "__version__", "0.60.1")
    fast, http = http_protocol(config, {})
    assert not fast.active and isinstance(http, type) and issubclass(http, PlainHeadGuard)
    assert not issubclass(http, HttpToolsProtocol)
    assert http.inner_class is HttpToolsProtocol  # uvicorn's "auto" with httptools installed
    assert http.limits.max_head == config.server.max_header_bytes

    fast, http = http_protocol(parse_config({"server": {"fast_paths": "off"}}, env={}), {})
    assert not fast.active and isinstance(http, type) and issubclass(http, PlainHeadGuard)


@pytest.mark.parametrize(("env", "path"), [({}, "fast"), ({"POLLCAST_FAST_PATHS": "off"}, "plain")])
def test_the_path_is_in_the_start_up_log_line_and_in_metrics(
    env: dict[str, str], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.server import uvicorn_config
    from gateway.web.app import create_app

    config = parse_config({"backend": {"kind": "local", "path": ":memory:"}}, env={})
    app = create_app(config)
    with caplog.at_level(logging.INFO, logger="pollcast"):
        uv = uvicorn_config(app, config, env)
    lines = [r.getMessage() for r in caplog.records if r.name == "pollcast"]
    expected = "HTTP fast paths on" if path == "fast" else "HTTP fast paths off"
    assert any(line.startswith(expected) for line in lines), lines
    metrics = app.state.gateway.metrics.render().decode()
    other = "plain" if path == "fast" else "fast"
    assert f'pollcast_http_path{{path="{path}"}} 1.0' in metrics
    assert f'pollcast_http_path{{path="{other}"}} 0.0' in metrics
    assert isinstance(uv.http, type) and issubclass(uv.http, PlainHeadGuard) == (path == "plain")


def test_a_connection_lost_that_no_longer_tells_the_cycle_turns_the_fast_path_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fast-path stream has no task awaiting receive(): uvicorn's connection_lost
    # marking the cycle and setting its message event is how it hears the client go.
    newer = mutated_httptools_impl(
        tmp_path,
        monkeypatch,
        {"            self.cycle.message_event.set()\n": "            pass\n"},
    )

    def modules(name: str) -> ModuleType:
        return newer if name == httptools_impl.__name__ else importlib.import_module(name)

    fast = check({}, modules=modules)
    assert not fast.active
    assert fast.missing == (
        "HttpToolsProtocol.connection_lost no longer runs self.cycle.message_event.set()",
    )
