"""Running the gateway under uvicorn, with a graceful drain on SIGTERM/SIGINT.

uvicorn waits for open connections before shutting down, and an SSE stream
never ends on its own; so on the first signal the gateway is drained first:
``/readyz`` turns false and every open stream gets a last ``server_draining``
notice and ends, and clients reconnect (elsewhere) with ``Last-Event-ID``.
``timeout_graceful_shutdown`` is the backstop.

The HTTP protocol is chosen at start-up (gateway/web/fastpaths.py): the fast
path's subclass of uvicorn's httptools protocol when every internal it uses
is as expected, else uvicorn's standard protocol behind the plain head guard.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import math
import os
import socket
from collections.abc import Mapping
from types import FrameType

import uvicorn
from litestar import Litestar

from gateway.config import Config
from gateway.exceptions import ConfigError
from gateway.service import Gateway
from gateway.web.app import create_app
from gateway.web.auth import REDACT_TOKENS
from gateway.web.fastpaths import FastPaths, check
from gateway.web.guard import HeadLimits, fit_websockets_limits, plain_head_guard

__all__ = [
    "DrainingServer",
    "http_protocol",
    "is_loopback",
    "serve",
    "uvicorn_config",
    "ws_protocol",
]

log = logging.getLogger("pollcast")

# After SIGTERM, how long uvicorn's shutdown waits for the open streams to
# write their last notice and end (looked at every DRAIN_POLL_S).
DRAIN_WAIT_S = 1.0
DRAIN_POLL_S = 0.01


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first signal drains; uvicorn shuts down once every stream has had its
        ``server_draining`` notice (or after ``DRAIN_WAIT_S``). A second one goes
        straight to uvicorn.

        uvicorn's shutdown closes every WebSocket with 1012 at once: started
        together, it could beat a stream's notice to the socket.
        """
        loop = self._loop
        if loop is None or self.gateway.draining:
            self._exit(sig, frame)
            return
        loop.call_soon_threadsafe(self._drain_then_exit, sig, frame)

    def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gateway.drain()
        asyncio.get_running_loop().create_task(
            self._exit_when_drained(sig, frame), name="pollcast-drain"
        )

    async def _exit_when_drained(self, sig: int, frame: FrameType | None) -> None:
        steps = max(1, math.ceil(DRAIN_WAIT_S / DRAIN_POLL_S))
        for _ in range(steps):
            if not self.gateway.feeds:
                break
            await asyncio.sleep(DRAIN_POLL_S)
        self._exit(sig, frame)

    def _exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once shut down, so the process dies
        # "by SIGTERM". A completed drain is a clean exit: status 0. (An
        # internal list, checked at start-up; without it the exit is by signal.)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def ws_protocol(fast: FastPaths) -> type | str:
    """uvicorn's ``ws=``: the fast path's lean sans-I/O protocol, else uvicorn's default."""
    if fast.active:
        from gateway.web.connection import GuardedWebSocketProtocol

        return GuardedWebSocketProtocol
    return "auto"


def http_protocol(config: Config, env: Mapping[str, str]) -> tuple[FastPaths, type | str]:
    """The path to run on and uvicorn's ``http=`` for it.

    Raises:
        ConfigError: a bad ``POLLCAST_FAST_PATHS`` value.
    """
    server = config.server
    fast = check(env, server.fast_paths)
    if fast.active:
        from gateway.web.connection import guarded_http_protocol

        return fast, guarded_http_protocol(server)
    try:
        from uvicorn.config import HTTP_PROTOCOLS
        from uvicorn.importer import import_from_string

        stock: type = import_from_string(HTTP_PROTOCOLS["auto"])
    except Exception as exc:  # a uvicorn without its protocol table: no guard at all
        log.warning("no head guard: uvicorn's protocol table is gone (%s)", exc)
        return fast, "auto"
    return fast, plain_head_guard(server, stock)


def uvicorn_config(
    app: Litestar, config: Config, env: Mapping[str, str] | None = None
) -> uvicorn.Config:
    """uvicorn's configuration for ``app``; also picks the HTTP path (logged, in /metrics).

    Raises:
        ConfigError: a bad ``POLLCAST_FAST_PATHS`` value.
    """
    server = config.server
    # uvicorn logs WebSocket handshakes with their query string: no tokens in logs.
    logging.getLogger("uvicorn.error").addFilter(REDACT_TOKENS)
    fast, http = http_protocol(config, os.environ if env is None else env)
    missing = fit_websockets_limits(HeadLimits.of(server))
    if missing:
        log.warning(
            "WebSocket heads over 8 KB cannot be let through: %s is gone", ", ".join(missing)
        )
    gateway: Gateway = app.state.gateway
    gateway.metrics.serving_on(fast.path)
    log.info("%s", fast.describe())
    return uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        loop="auto",
        # A guard on every path: head deadline (slowloris), head size, per-address cap.
        http=http,
        ws=ws_protocol(fast),
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(server.shutdown_timeout_s)),
        ws_ping_interval=server.ws_ping_s,
        ws_ping_timeout=server.ws_ping_s,
        # Frames above our own limit still reach the handler (and get a precise
        # error frame) up to this size; beyond it uvicorn closes with 1009.
        ws_max_size=max(2 * 1024 * 1024, server.max_frame_bytes * 2),
        # The fast path's guard closes an idle kept-alive connection at the head
        # deadline itself; the plain one leaves that to uvicorn.
        timeout_keep_alive=15 if fast.active else max(1, math.ceil(server.handshake_timeout_s)),
        h11_max_incomplete_event_size=server.max_header_bytes,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: Config, *, allow_open_public: bool = False) -> None:
    """Serve until SIGTERM/SIGINT (blocking).

    Raises:
        ConfigError: open mode on a non-loopback address without the override.
    """
    if config.auth.mode == "open" and not is_loopback(config.server.host):
        if not allow_open_public:
            raise ConfigError(
                f"auth mode 'open' serves anyone who can reach {config.server.host}; "
                'use mode = "token" or pass --allow-open-public',
                path="auth.mode",
            )
        logging.getLogger("pollcast").warning(
            "auth mode 'open' on a public address: anyone can read tasks and spend upstream calls"
        )
    app = create_app(config)
    tune_gc()
    server = DrainingServer(uvicorn_config(app, config), app.state.gateway)
    server.run()


def tune_gc() -> None:
    """Fan-out makes short-lived garbage per delivery while thousands of
    connections stay alive: with CPython's default gen-0 threshold (700) the
    collector ran every few hundred deliveries and re-walked every live
    connection (45 % of CPU at 10,000 subscribers, measured with py-spy).
    Freeze what startup built and collect gen 0 far less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 1000)
