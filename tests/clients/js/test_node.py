"""The JavaScript client's tests (``node --test clients/js/test/``) against live servers.

This test starts a simulator and a gateway, writes the config of a gateway
the Node tests start, kill and restart themselves (SQLite state, so resume
survives), and runs Node's test runner with their URLs in the environment.
``make test`` runs the Node tests only through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.integration.gateway_server import running_gateway, sim_config, to_toml
from tests.integration.sim_server import running_sim
from tests.npm_deps import ensure_node_modules

CLIENT_DIR = Path(__file__).resolve().parents[3] / "clients" / "js"
# A restart test starts a gateway three times, each allowed 60 s on a starved
# machine (live.mjs); a healthy run of the whole suite takes under a minute.
NODE_TIMEOUT_S = 300
TEST_TIMEOUT_MS = 200_000
FAST_RETRY = {"retry_ms": 300}
API_KEY = "js-client-test-api-key"
TOKEN_AUTH = {
    "mode": "token",
    "api_keys": [API_KEY],
    "token_secret": "js-client-test-token-secret-0123456789abcdef",
}


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def test_js_client_suite_passes_against_live_servers(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node (≥ 20) is needed: scripts/ensure-system-deps.sh installs it"
    ensure_node_modules(CLIENT_DIR)
    files = sorted(str(p) for p in (CLIENT_DIR / "test").glob("*.test.mjs"))
    assert files, "no Node test files found"
    with running_sim() as sim:
        restartable = sim_config(
            sim,
            backend={"kind": "local", "path": "${POLLCAST_STATE_DB}"},
            server={"host": "127.0.0.1", **FAST_RETRY, "shutdown_timeout_s": 2.0},
        )
        config = tmp_path / "restartable.toml"
        config.write_text(to_toml(restartable))
        serve = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
        with (
            running_gateway(sim_config(sim, server=FAST_RETRY)) as (base, _gw),
            running_gateway(sim_config(sim, server=FAST_RETRY, auth=TOKEN_AUTH)) as (guarded, _),
        ):
            env = {
                **os.environ,
                "POLLCAST_URL": base,
                "POLLCAST_SIM_URL": sim,
                "POLLCAST_SERVE": json.dumps(serve),
                "POLLCAST_TOKEN_URL": guarded,
                "POLLCAST_API_KEY": API_KEY,
                "NO_PROXY": "*",
            }
            env.pop("NODE_OPTIONS", None)
            # No --test-force-exit: a client that leaves a timer or socket behind
            # after close() keeps node alive, and that is a bug worth failing on.
            command = [node, "--test", "--test-concurrency=2", "--test-reporter=tap"]
            command += [f"--test-timeout={TEST_TIMEOUT_MS}", *files]
            # Its own process group: the gateways the Node tests start go with
            # node when it is done, even when a failing test left one running.
            proc = subprocess.Popen(
                command,
                cwd=CLIENT_DIR,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                stdout, stderr = proc.communicate(timeout=NODE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                raise AssertionError(
                    f"node did not exit within {NODE_TIMEOUT_S} s (a handle left open?)\n"
                    f"{_text(stdout)}\n{_text(stderr)}"
                ) from None
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            run = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    report = f"node exited {run.returncode}\n{run.stdout}\n{run.stderr}"
    counts = {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail) (\d+)$", run.stdout, re.M)}
    assert run.returncode == 0, report
    assert counts.get("tests", 0) >= 15 and counts.get("fail") == 0, report
    assert counts["pass"] == counts["tests"], report
    print(run.stdout)
