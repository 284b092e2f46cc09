"""Live gateways for integration tests.

* :func:`running_gateway` — uvicorn in a background thread on a free port,
  for tests that need the in-process :class:`Gateway` too.
* :class:`GatewayProcess` — ``pollcast serve`` as a real child process, for
  tests that restart, drain or kill it.

Both are wired to a live simulator by :func:`sim_config`. While either starts,
the timelines of this process's simulators stand still (:func:`timelines_held`).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from gateway.config import Config, parse_config
from gateway.server import DrainingServer, uvicorn_config
from gateway.service import Gateway
from gateway.sim.credentials import SIM_CREDENTIALS
from gateway.web.app import create_app
from gateway.web.fastpaths import ENV
from gateway.web.guard import PlainHeadGuard
from tests.integration.sim_server import timelines_held

__all__ = [
    "GatewayProcess",
    "free_port",
    "logs_on_failure",
    "running_gateway",
    "sim_config",
    "stop_leftover_gateways",
    "to_toml",
]

# Seconds; start-up takes well under one on an idle machine, much more on a loaded
# one (a cluster's topology, the listener's subscriptions, the poller's first reads).
# A slow 2-core machine once left two of them without their first log line for
# most of 30 s while the parallel pass was at its busiest.
STARTUP_TIMEOUT_S = 60.0
FAST = {"interval_s": 0.2, "max_interval_s": 0.4, "timeout_s": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sim_config(
    sim_url: str,
    *,
    providers: Mapping[str, Mapping[str, Any]] | None = None,
    **sections: Mapping[str, Any],
) -> dict[str, Any]:
    """A config document for all five providers on the simulator, polling fast.

    ``providers`` adds or overrides keys per provider; ``sections`` overrides
    whole top-level tables (``server={...}``).
    """
    creds = SIM_CREDENTIALS.provider_credentials(sim_url)
    doc: dict[str, Any] = {
        "backend": {"kind": "local", "path": ":memory:"},
        "polling": {"grace_s": 5.0},
        "providers": {
            kind: {"kind": kind, **table, **FAST, **(providers or {}).get(kind, {})}
            for kind, table in creds.items()
        },
    }
    for name, table in sections.items():
        doc[name] = {**doc.get(name, {}), **table}
    return doc


@contextmanager
def running_gateway(doc: Mapping[str, Any]) -> Iterator[tuple[str, Gateway]]:
    """Serve ``doc`` on a free port in a thread; yield (base URL, gateway)."""
    config: Config = parse_config(doc, env={})
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with timelines_held():
        app = create_app(config)
        uv = uvicorn_config(app, config)
        uv.port = port
        # The path asked for (tests/integration/conftest.py: http_path) is the one served.
        plain = isinstance(uv.http, type) and issubclass(uv.http, PlainHeadGuard)
        asked = os.environ.get(ENV) == "off" or config.server.fast_paths == "off"
        assert plain == asked, f"{ENV}={os.environ.get(ENV)}, {uv.http}"
        server = DrainingServer(uv, app.state.gateway)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name=f"gateway:{port}", daemon=True
        )
        thread.start()
    try:
        with timelines_held():
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not start on port {port}")
                time.sleep(0.01)
        yield f"http://127.0.0.1:{port}", app.state.gateway
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        listener.close()


def to_toml(doc: Mapping[str, Any]) -> str:
    """Just enough TOML for test configs (tables of scalars and lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    lines: list[str] = []

    def table(prefix: str, body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)

    for name, body in doc.items():
        table(name, body)
    return "\n".join(lines) + "\n"


class GatewayProcess:
    """``pollcast serve`` in a child process with its own config file."""

    def __init__(
        self,
        doc: Mapping[str, Any],
        workdir: Path,
        port: int | None = None,
        *,
        expect_path: str | None = None,
    ) -> None:
        self.port = port or free_port()
        # The HTTP path it must serve on; by default the one the environment asks for.
        self.expect_path = expect_path
        full = dict(doc)
        full["server"] = {**doc.get("server", {}), "host": "127.0.0.1", "port": self.port}
        self.config_path = workdir / f"pollcast-{self.port}.toml"
        self.config_path.write_text(to_toml(full))
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        with timelines_held():
            return self._start()

    def _start(self) -> GatewayProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        _STARTED.add(self)
        try:
            return self._wait_ready()
        except BaseException:
            # Not handed to the test, which could not stop it: a gateway left
            # running would poll (and load the machine) until the session ends.
            self.stop()
            raise

    def _wait_ready(self) -> GatewayProcess:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=0.5).status_code == 200:
                    self._check_path()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"gateway not ready in {STARTUP_TIMEOUT_S:g} s: {self.log_path.read_text()[-2000:]}"
        )

    def _check_path(self) -> None:
        """The child serves the path this process's environment asks for."""
        path = self.expect_path or ("plain" if os.environ.get(ENV) == "off" else "fast")
        metrics = httpx.get(f"{self.url}/metrics", timeout=5).text
        assert f'pollcast_http_path{{path="{path}"}} 1.0' in metrics, metrics

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        _STARTED.discard(self)

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def logs_on_failure(nodes: list[GatewayProcess], tail_chars: int = 20_000) -> Iterator[None]:
    """Print each node's log (its end) if the block fails: pytest shows it with the failure."""
    try:
        yield
    except BaseException:
        for node in nodes:
            if node.log_path.exists():
                print(f"----- {node.log_path} (last {tail_chars} characters)")
                print(node.log()[-tail_chars:])
        raise


# Every child started and not yet stopped; killed when this process exits, so a
# test that failed before its ``finally`` leaves no gateway behind the session.
_STARTED: set[GatewayProcess] = set()


@atexit.register
def stop_leftover_gateways() -> None:
    """Kill every :class:`GatewayProcess` of this process still running."""
    for gateway in list(_STARTED):
        gateway.stop()
