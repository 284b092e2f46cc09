"""Simulated upstreams: the five status APIs of ``docs/providers/`` in one server.

``create_sim_app()`` builds the Litestar app, ``serve_sim()`` runs it, and
``SIM_CREDENTIALS`` holds the public demo credentials it accepts. See
docs/architecture.md, "Simulated upstreams".
"""

from __future__ import annotations

from gateway.sim.app import create_sim_app
from gateway.sim.credentials import SIM_CREDENTIALS, SimConfig
from gateway.sim.server import serve_sim
from gateway.sim.simulator import Simulator

__all__ = ["SIM_CREDENTIALS", "SimConfig", "Simulator", "create_sim_app", "serve_sim"]
