"""Which HTTP path the gateway runs on, decided once at start-up.

The fast paths — :class:`~gateway.web.connection.GuardedHttpProtocol` (a
subclass of uvicorn's httptools protocol), the smaller per-connection
objects of gateway/web/lean.py and the direct writer of live stream events —
use uvicorn internals that no release promises to keep. :func:`check` looks
at every one of them in the uvicorn that is installed; when one is missing or
different, or uvicorn is not the minor version they are tested with, it logs
one warning naming each difference and the gateway runs on the plain path:
uvicorn's stock HTTP protocol behind :class:`~gateway.web.guard.PlainHeadGuard`,
streams written through ASGI ``send`` only. Slower, never broken.

``POLLCAST_FAST_PATHS=off`` (or ``server.fast_paths = "off"``) forces the
plain path. Nothing in this module imports a uvicorn internal at import time.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from gateway.exceptions import ConfigError

if TYPE_CHECKING:
    from gateway.web.lean import Inbox

__all__ = [
    "DIRECT_WRITE",
    "ENV",
    "TESTED_UVICORN",
    "DirectWrite",
    "FastPaths",
    "SocketWrite",
    "StreamWrite",
    "check",
    "expectations",
    "socket_writer",
    "stream_writer",
    "wanted",
]

log = logging.getLogger("pollcast.fastpaths")

ENV = "POLLCAST_FAST_PATHS"
TESTED_UVICORN = "0.54"  # major.minor the fast paths are tested with (pyproject pins it)
# The scope key under which the fast path leaves a request's uvicorn cycle (ours, not ASGI's).
DIRECT_WRITE = "pollcast.cycle"

HTTPTOOLS_IMPL = "uvicorn.protocols.http.httptools_impl"
FLOW_CONTROL = "uvicorn.protocols.http.flow_control"
WS_SANSIO_IMPL = "uvicorn.protocols.websockets.websockets_sansio_impl"


class DirectWrite(Protocol):
    """What a stream needs of the direct writer (gateway/web/connection.py)."""

    @property
    def ready(self) -> bool: ...

    def write(self, body: bytes) -> None: ...

    def abort(self) -> None: ...


class SocketWrite(DirectWrite, Protocol):
    """A WebSocket's direct writer, with the inbox its protocol receives frames into."""

    @property
    def inbox(self) -> Inbox: ...


class StreamWrite(DirectWrite, Protocol):
    """An HTTP stream's direct writer, which also tells when the client has left."""

    @property
    def gone(self) -> bool: ...

    def watch(self, wake: Callable[[], None] | None) -> None:
        """Call ``wake`` whenever the client sends something or leaves (``None``: stop)."""


def stream_writer(scope: Mapping[str, Any]) -> StreamWrite | None:
    """The direct writer of an HTTP stream the fast path serves, else ``None``.

    ``None``: write through ASGI ``send``. ``write`` takes a chunk's body.
    """
    ours = scope.get(DIRECT_WRITE)
    if ours is None or scope.get("type") != "http":
        return None
    # Only the fast path's protocols set the key, so their module is loaded already.
    from gateway.web.connection import DirectWriter

    return DirectWriter(ours)


def socket_writer(scope: Mapping[str, Any]) -> SocketWrite | None:
    """The direct writer of a WebSocket the fast path serves, else ``None``.

    ``None``: write through ASGI ``send``. ``write`` takes a whole frame
    (``Encoded.ws_frame``).
    """
    ours = scope.get(DIRECT_WRITE)
    if ours is None or scope.get("type") != "websocket":
        return None
    from gateway.web.connection import WebSocketDirectWriter

    return WebSocketDirectWriter(ours)


@dataclass(frozen=True, slots=True)
class FastPaths:
    active: bool
    reason: str  # why not active ("" when active)
    missing: tuple[str, ...] = ()  # each internal found missing or different

    @property
    def path(self) -> str:
        return "fast" if self.active else "plain"

    def describe(self) -> str:
        """For the start-up log line."""
        if self.active:
            return f"HTTP fast paths on (uvicorn {_uvicorn_version()})"
        return f"HTTP fast paths off ({self.reason}): uvicorn's standard protocol, streams via send"


def wanted(setting: str, env: Mapping[str, str]) -> str | None:
    """Why the fast paths are switched off by configuration, else ``None``.

    Raises:
        ConfigError: ``POLLCAST_FAST_PATHS`` is neither ``auto``, ``on`` nor ``off``.
    """
    value = env.get(ENV, "").strip().lower()
    if value not in ("", "auto", "on", "off"):
        raise ConfigError("must be 'auto' or 'off'", path=ENV)
    if value == "off":
        return f"{ENV}=off"
    if setting == "off":
        return 'server.fast_paths = "off"'
    return None


def check(
    env: Mapping[str, str] | None = None,
    setting: str = "auto",
    *,
    modules: Callable[[str], ModuleType] = importlib.import_module,
) -> FastPaths:
    """Decide the HTTP path: fast if wanted and every internal it uses is as expected.

    Logs one warning naming every internal found missing or different.

    Args:
        env: the environment (``POLLCAST_FAST_PATHS``); the process's by default.
        setting: ``server.fast_paths``.
        modules: imports a module by name (a test passes a fake).

    Raises:
        ConfigError: a bad ``POLLCAST_FAST_PATHS`` value.
    """
    off = wanted(setting, os.environ if env is None else env)
    if off is not None:
        return FastPaths(active=False, reason=off)
    missing = tuple(problem for _name, problem in _problems(modules))
    if not missing:
        return FastPaths(active=True, reason="")
    log.warning(
        "HTTP fast paths off: uvicorn %s differs from what they are built on (%s.x): %s; "
        "running on uvicorn's standard protocol and writing streams through ASGI send "
        "(slower)",
        _uvicorn_version(modules),
        TESTED_UVICORN,
        "; ".join(missing),
    )
    return FastPaths(active=False, reason="uvicorn internals differ", missing=missing)


# -- the expectations ---------------------------------------------------------


Probe = Callable[[Callable[[str], ModuleType]], str | None]


def expectations() -> list[tuple[str, Probe]]:
    """Every internal the fast paths use: (name, probe → what is wrong or ``None``)."""
    found: list[tuple[str, Probe]] = [("uvicorn version", _version)]
    protocol = (HTTPTOOLS_IMPL, "HttpToolsProtocol")
    cycle = (HTTPTOOLS_IMPL, "RequestResponseCycle")
    flow = (FLOW_CONTROL, "FlowControl")
    server = ("uvicorn", "Server")
    # Methods GuardedHttpProtocol overrides or calls, with the parameters it passes.
    for method, params in (
        ("__init__", ("config", "server_state", "app_state", "_loop")),
        ("connection_made", ("transport",)),
        ("connection_lost", ("exc",)),
        ("data_received", ("data",)),
        ("on_headers_complete", ()),
        ("on_message_complete", ()),
        ("on_response_complete", ()),
        ("handle_websocket_upgrade", ()),
    ):
        found.append((f"HttpToolsProtocol.{method}", _method(protocol, method, params)))
    # Attributes the subclass reads or replaces (set by uvicorn in these methods).
    for attr in ("loop", "transport", "flow", "pipeline", "client", "scope", "cycle", "parser"):
        found.append((f"HttpToolsProtocol.{attr}", _assigns(protocol, attr)))
    # Replaced by lean stand-ins that have only these methods.
    found.append(
        ("HttpToolsProtocol.pipeline use", _uses(protocol, "pipeline", {"appendleft", "pop"}))
    )
    events = {"set", "clear", "wait", "is_set"}
    found.append(("RequestResponseCycle.message_event use", _uses(cycle, "message_event", events)))
    # What DirectWriter.ready reads, DirectWriter.write writes to and
    # DirectWriter.watch listens on (and drops an unread body from).
    for attr in (
        "response_started",
        "response_complete",
        "chunked_encoding",
        "disconnected",
        "flow",
        "transport",
        "message_event",
        "body",
    ):
        found.append((f"RequestResponseCycle.{attr}", _assigns(cycle, attr)))
    found.append(("RequestResponseCycle chunked framing", _chunk_framing))
    found.append(("HttpToolsProtocol.connection_lost tells the cycle", _lost_is_told))
    found.append(("FlowControl.__init__", _method(flow, "__init__", ("transport",))))
    for attr in ("_is_writable_event", "write_paused", "read_paused"):
        found.append((f"FlowControl.{attr}", _assigns(flow, attr)))
    found.append(("FlowControl._is_writable_event use", _uses(flow, "_is_writable_event", events)))
    found.append(("asyncio.Event methods", _event_methods))
    found.extend(_websocket_expectations())
    # DrainingServer: a completed drain exits 0 instead of re-raising the signal.
    found.append(("Server.handle_exit", _method(server, "handle_exit", ("sig", "frame"))))
    found.append(("Server._captured_signals", _assigns(server, "_captured_signals")))
    return found


def _websocket_expectations() -> list[tuple[str, Probe]]:
    """GuardedWebSocketProtocol and WebSocketDirectWriter (gateway/web/connection.py)."""
    ws = (WS_SANSIO_IMPL, "WebSocketsSansIOProtocol")
    found: list[tuple[str, Probe]] = [
        (
            "WebSocketsSansIOProtocol.__init__",
            _method(ws, "__init__", ("config", "server_state", "app_state", "_loop")),
        ),
        ("WebSocketsSansIOProtocol.handle_connect", _method(ws, "handle_connect", ("event",))),
        ("WebSocketsSansIOProtocol.send", _method(ws, "send", ("message",))),
    ]
    # Replaced by lean stand-ins (queue, writable); read by the direct writer (the rest).
    for attr in (
        "queue",
        "writable",
        "scope",
        "response",
        "request",
        "transport",
        "conn",
        "handshake_complete",
        "close_sent",
        "disconnected",
    ):
        found.append((f"WebSocketsSansIOProtocol.{attr}", _assigns(ws, attr)))
    found.append(
        (
            "WebSocketsSansIOProtocol.queue use",
            _uses(ws, "queue", {"put_nowait", "get", "empty"}),
        )
    )
    found.append(
        (
            "WebSocketsSansIOProtocol.writable use",
            _uses(ws, "writable", {"set", "clear", "wait", "is_set"}),
        )
    )
    # Its own frames go out whole and synchronously, so a direct frame never splits one.
    found.append(("WebSocketsSansIOProtocol writes", _whole_writes))
    return found


def _whole_writes(modules: Callable[[str], ModuleType]) -> str | None:
    # Each of its writes is all of the sans-I/O connection's pending output at once.
    source = _source(modules(WS_SANSIO_IMPL))
    writes = re.findall(r"transport\.write\(([^\n]*)\)\n", source)
    whole = {'b"".join(output)', 'b"".join(self.conn.data_to_send())'}
    odd = sorted({w for w in writes if w not in whole})
    if not writes or odd or len(writes) != source.count("transport.write("):
        return f"{WS_SANSIO_IMPL} writes something else than whole frames to its transport"
    return None


def _problems(modules: Callable[[str], ModuleType]) -> Iterator[tuple[str, str]]:
    for name, probe in expectations():
        try:
            problem = probe(modules)
        except Exception as exc:  # an import or inspection that fails is a difference too
            problem = f"{name}: {type(exc).__name__}: {exc}"
        if problem is not None:
            yield name, problem


def _uvicorn_version(modules: Callable[[str], ModuleType] = importlib.import_module) -> str:
    try:
        return str(modules("uvicorn").__version__)
    except Exception:
        return "(unknown version)"


def _version(modules: Callable[[str], ModuleType]) -> str | None:
    version = _uvicorn_version(modules)
    if ".".join(version.split(".")[:2]) != TESTED_UVICORN:
        return f"uvicorn {version} is not {TESTED_UVICORN}.x"
    return None


def _class(modules: Callable[[str], ModuleType], where: tuple[str, str]) -> type:
    module, name = where
    found = getattr(modules(module), name, None)
    if not isinstance(found, type):
        raise LookupError(f"{module}.{name} is missing")
    return found


def _method(where: tuple[str, str], method: str, params: tuple[str, ...]) -> Probe:
    def probe(modules: Callable[[str], ModuleType]) -> str | None:
        cls = _class(modules, where)
        func = cls.__dict__.get(method) if method == "__init__" else getattr(cls, method, None)
        if not callable(func):
            return f"{where[1]}.{method} is missing"
        names = tuple(inspect.signature(func).parameters)[1:]  # without self
        if names != params:
            return (
                f"{where[1]}.{method}{_params(names)} is not {where[1]}.{method}{_params(params)}"
            )
        return None

    return probe


def _params(names: tuple[str, ...]) -> str:
    return "(" + ", ".join(names) + ")"


@functools.lru_cache(maxsize=16)
def _source(obj: type | ModuleType) -> str:
    # Once per class or module: finding a class's source parses its whole module.
    return inspect.getsource(obj)


def _assigns(where: tuple[str, str], attr: str) -> Probe:
    pattern = re.compile(rf"\bself\.{re.escape(attr)}\s*(?::[^=\n]*)?=(?!=)")

    def probe(modules: Callable[[str], ModuleType]) -> str | None:
        cls = _class(modules, where)
        if not pattern.search(_source(cls)):
            return f"{where[1]} no longer sets self.{attr}"
        return None

    return probe


def _uses(where: tuple[str, str], attr: str, allowed: set[str]) -> Probe:
    pattern = re.compile(rf"\.{re.escape(attr)}\.(\w+)")

    def probe(modules: Callable[[str], ModuleType]) -> str | None:
        # Anywhere in the module (the protocol reaches into its cycle's event too).
        used = set(pattern.findall(_source(modules(where[0]))))
        extra = sorted(used - allowed)
        if extra:
            calls = ", ".join(f"{attr}.{name}" for name in extra)
            return f"{where[0]} uses {calls} (the stand-in has only {', '.join(sorted(allowed))})"
        return None

    return probe


def _chunk_framing(modules: Callable[[str], ModuleType]) -> str | None:
    # DirectWriter writes a chunk as uvicorn's send() does; both must agree.
    source = _source(_class(modules, (HTTPTOOLS_IMPL, "RequestResponseCycle")))
    if 'b"%x\\r\\n" % len(body)' not in source:
        return "RequestResponseCycle.send no longer frames chunks as b'%x\\r\\n' % len(body)"
    return None


def _lost_is_told(modules: Callable[[str], ModuleType]) -> str | None:
    # A fast-path stream learns that its client left only from these two lines
    # (DirectWriter.watch): no task awaits receive() for it.
    protocol = _class(modules, (HTTPTOOLS_IMPL, "HttpToolsProtocol"))
    source = inspect.getsource(getattr(protocol, "connection_lost"))  # noqa: B009 (a type)
    for line in ("self.cycle.disconnected = True", "self.cycle.message_event.set()"):
        if line not in source:
            return f"HttpToolsProtocol.connection_lost no longer runs {line}"
    return None


def _event_methods(modules: Callable[[str], ModuleType]) -> str | None:
    # lean.Signal skips asyncio.Event.__init__ and overrides exactly these.
    event = modules("asyncio").Event
    public = {name for name in vars(event) if not name.startswith("_")}
    extra = sorted(public - {"set", "clear", "wait", "is_set"})
    return f"asyncio.Event has new methods {', '.join(extra)}" if extra else None
