"""The uvicorn internals the fast paths stand on, pinned.

An upgrade that moves, renames or reshapes any of them fails here by name
(and the gateway then runs on the plain path: gateway/web/fastpaths.py).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import signal
import weakref
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from gateway.config import ServerConfig
from gateway.core.sse import ws_text_frame
from gateway.web.connection import (
    DirectWriter,
    GuardedWebSocketProtocol,
    WebSocketDirectWriter,
    guarded_http_protocol,
)
from gateway.web.fastpaths import (
    DIRECT_WRITE,
    TESTED_UVICORN,
    check,
    expectations,
    socket_writer,
    stream_writer,
)
from gateway.web.lean import Inbox, LeanFlowControl, Pipeline, Signal


@pytest.mark.parametrize("name", [name for name, _ in expectations()])
def test_each_internal_is_where_and_what_the_fast_paths_expect(name: str) -> None:
    import importlib

    probe = dict(expectations())[name]
    assert probe(importlib.import_module) is None


def test_the_installed_uvicorn_turns_the_fast_paths_on() -> None:
    assert uvicorn.__version__.startswith(TESTED_UVICORN + ".")
    assert check({}).active


def test_the_signatures_the_subclass_overrides() -> None:
    def params(func: Any) -> list[str]:
        return list(inspect.signature(func).parameters)

    assert params(HttpToolsProtocol.__init__) == [
        "self",
        "config",
        "server_state",
        "app_state",
        "_loop",
    ]
    assert params(HttpToolsProtocol.connection_made) == ["self", "transport"]
    assert params(HttpToolsProtocol.data_received) == ["self", "data"]
    assert params(HttpToolsProtocol.connection_lost) == ["self", "exc"]
    for name in ("on_headers_complete", "on_message_complete", "on_response_complete"):
        assert params(getattr(HttpToolsProtocol, name)) == ["self"]
    assert params(FlowControl.__init__) == ["self", "transport"]
    assert params(uvicorn.Server.handle_exit) == ["self", "sig", "frame"]


class Transport:
    """Just what uvicorn's protocol calls on a TCP transport."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.protocol: Any = None
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return False


async def app(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.Event().wait()  # never answers: the test drives the cycle itself


async def test_a_request_on_the_fast_protocol_carries_the_objects_it_relies_on() -> None:
    config = uvicorn.Config(app, log_config=None, lifespan="off", proxy_headers=False)
    config.load()
    state = ServerState()
    protocol_class = guarded_http_protocol(ServerConfig())
    protocol = protocol_class(config=config, server_state=state, app_state={})
    transport = Transport()
    transport.protocol = protocol
    protocol.connection_made(transport)  # type: ignore[arg-type]
    try:
        # The lean stand-ins took the places uvicorn made its objects in.
        assert type(protocol.flow) is LeanFlowControl
        assert isinstance(protocol.flow._is_writable_event, Signal)
        assert isinstance(protocol.pipeline, Pipeline)
        protocol.data_received(b"GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
        cycle = protocol.cycle
        assert isinstance(cycle, RequestResponseCycle)
        assert isinstance(cycle.message_event, Signal)
        assert protocol.scope[DIRECT_WRITE] is cycle  # type: ignore[literal-required]
        assert cycle.flow is protocol.flow and cycle.transport is transport

        writer = stream_writer(protocol.scope)
        assert isinstance(writer, DirectWriter)
        assert not writer.ready  # nothing started yet
        await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        assert cycle.response_started and cycle.chunked_encoding
        assert writer.ready
        start = len(transport.written)
        writer.write(b"data: 1\n\n")
        # The very bytes uvicorn's send() would frame the same body as.
        direct = bytes(transport.written[start:])
        await cycle.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        assert bytes(transport.written[start + len(direct) :]) == direct == b"9\r\ndata: 1\n\n\r\n"
        protocol.flow.pause_writing()
        assert cycle.flow.write_paused and not writer.ready
        protocol.flow.resume_writing()
        assert writer.ready
        protocol.connection_lost(None)
        assert cycle.disconnected and not writer.ready
    finally:
        for task in state.tasks:
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)


def test_the_server_keeps_the_signals_it_will_re_raise_in_a_list() -> None:
    config = uvicorn.Config(app, log_config=None)
    server = uvicorn.Server(config)
    assert server._captured_signals == []
    server.handle_exit(signal.SIGTERM, None)
    assert server._captured_signals == [signal.SIGTERM] and server.should_exit


UPGRADE_HEAD = (
    b"GET /v1/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def accepting_app(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await asyncio.Event().wait()  # the test drives the socket itself


def ws_config(application: Any) -> uvicorn.Config:
    config = uvicorn.Config(
        application,
        log_config=None,
        lifespan="off",
        proxy_headers=False,
        ws=GuardedWebSocketProtocol,
        ws_ping_interval=None,
    )
    config.load()
    return config


async def test_an_upgrade_hands_the_socket_to_the_lean_websocket_protocol_and_lets_go() -> None:
    config = ws_config(accepting_app)
    state = ServerState()
    http = guarded_http_protocol(ServerConfig())(config=config, server_state=state, app_state={})
    transport = Transport()
    transport.protocol = http
    http.connection_made(transport)  # type: ignore[arg-type]
    try:
        http.data_received(UPGRADE_HEAD)
        ws = transport.protocol
        assert isinstance(ws, GuardedWebSocketProtocol)
        # The HTTP protocol is garbage now, freed without the cyclic collector.
        gone = weakref.ref(http)
        del http
        gc.disable()
        try:
            assert gone() is None
        finally:
            gc.enable()
        await asyncio.sleep(0.01)  # the app accepts
        assert transport.written.startswith(b"HTTP/1.1 101 ")
        assert isinstance(ws.queue, Inbox) and isinstance(ws.writable, Signal)
        # The handshake's request and response are let go once it is done.
        assert ws.request is None and ws.response is None
        assert ws.scope[DIRECT_WRITE] is ws  # type: ignore[literal-required]
        # Few enough attributes left in its dict for CPython's compact shared-key
        # form (at most 30 keys); the rest of uvicorn's are in the subclass's slots.
        assert len(vars(ws)) <= 30, sorted(vars(ws))
        writer = socket_writer(ws.scope)
        assert isinstance(writer, WebSocketDirectWriter) and writer.ready
        assert writer.inbox is ws.queue
        start = len(transport.written)
        writer.write(ws_text_frame(b'{"a":1}'))
        assert bytes(transport.written[start:]) == b'\x81\x07{"a":1}'
        ws.pause_writing()
        assert not writer.ready
        ws.resume_writing()
        assert writer.ready
        ws.connection_lost(None)
        assert not writer.ready
    finally:
        for task in state.tasks:
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)


def test_the_websocket_signatures_the_subclass_overrides() -> None:
    def params(func: Any) -> list[str]:
        return list(inspect.signature(func).parameters)

    assert params(WebSocketsSansIOProtocol.__init__) == [
        "self",
        "config",
        "server_state",
        "app_state",
        "_loop",
    ]
    assert params(WebSocketsSansIOProtocol.handle_connect) == ["self", "event"]
    assert params(WebSocketsSansIOProtocol.send) == ["self", "message"]
    assert params(HttpToolsProtocol.handle_websocket_upgrade) == ["self"]
