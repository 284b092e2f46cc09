"""``auth.mode = "open"`` is for a loopback: elsewhere it must be forced, and it says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.config import parse_config
from gateway.exceptions import ConfigError
from gateway.server import serve
from tests.integration.gateway_server import free_port, sim_config, to_toml

SIM_URL = "http://127.0.0.1:9"  # never called: no task is created


def write_config(tmp_path: Path, host: str, port: int) -> Path:
    doc = sim_config(SIM_URL, server={"host": host, "port": port}, auth={"mode": "open"})
    path = tmp_path / "open.toml"
    path.write_text(to_toml(doc))
    return path


def pollcast(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def test_open_mode_on_a_public_address_is_refused_before_binding() -> None:
    config = parse_config(
        sim_config(SIM_URL, server={"host": "0.0.0.0"}, auth={"mode": "open"}), env={}
    )
    with pytest.raises(ConfigError) as refused:
        serve(config)
    assert refused.value.path == "auth.mode"
    assert "--allow-open-public" in str(refused.value)


def start_forced(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``serve --host 0.0.0.0 --allow-open-public`` until ready; (process, port).

    A port free on 127.0.0.1 a moment ago may be taken on 0.0.0.0 by then
    (other tests' connections): then it is tried again on another one.
    """
    for _ in range(5):
        port = free_port()
        forced = pollcast(
            "--config",
            str(config),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--allow-open-public",
            log=log,
        )
        deadline = time.monotonic() + 20
        while forced.poll() is None and time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/readyz"
                if httpx.get(url, timeout=0.5, trust_env=False).status_code == 200:
                    return forced, port
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        forced.kill()
        forced.wait(10)
        if "address already in use" not in log.read_text():
            break
    raise AssertionError(log.read_text())


def test_the_cli_refuses_open_public_unless_forced_and_then_warns(tmp_path: Path) -> None:
    config = write_config(tmp_path, "127.0.0.1", free_port())

    log = tmp_path / "refused.log"
    refused = pollcast("--config", str(config), "--host", "0.0.0.0", log=log)
    assert refused.wait(30) == 2
    assert "auth.mode" in log.read_text() and "--allow-open-public" in log.read_text()

    log = tmp_path / "forced.log"
    forced, port = start_forced(config, log)
    try:
        # Open: no credentials needed.
        url = f"http://127.0.0.1:{port}/v1/providers"
        assert httpx.get(url, timeout=5, trust_env=False).status_code == 200
    finally:
        forced.send_signal(signal.SIGTERM)
        forced.wait(15)
    assert "auth mode 'open' on a public address" in log.read_text()
