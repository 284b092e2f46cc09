"""Run the simulator with uvicorn (``pollcast sim``)."""

from __future__ import annotations

from typing import Any

import uvicorn

from gateway.sim.app import create_sim_app
from gateway.sim.credentials import SimConfig
from gateway.sim.simulator import Simulator

__all__ = ["serve_sim", "uvicorn_config"]


def uvicorn_config(
    host: str = "127.0.0.1",
    port: int = 8001,
    config: SimConfig | None = None,
    *,
    simulator: Simulator | None = None,
    configure_logging: bool = True,
) -> uvicorn.Config:
    """The uvicorn settings the simulator runs with.

    The fast event loop and HTTP parser when installed (uvloop, httptools), no
    access log (it would cost more than answering), no WebSockets, warnings
    and errors only. ``configure_logging=False`` leaves the process's logging
    setup alone (for a simulator embedded in tests or another server).
    """
    extra: dict[str, Any] = {} if configure_logging else {"log_config": None}
    return uvicorn.Config(
        create_sim_app(config, simulator=simulator),
        host=host,
        port=port,
        loop="auto",
        http="auto",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
        **extra,
    )


def serve_sim(host: str = "127.0.0.1", port: int = 8001, config: SimConfig | None = None) -> None:
    """Serve the simulated upstreams on ``host:port`` until interrupted (blocking)."""
    uvicorn.Server(uvicorn_config(host, port, config)).run()
