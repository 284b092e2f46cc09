"""deploy/pollcast.service: systemd's own verifier and security analysis, and its shape."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.config import load_config
from tests.deploy.production import DEPLOY, PRODUCTION_TOML, production_env

UNIT = DEPLOY / "pollcast.service"
INSTALL_PREFIX = "/opt/pollcast"
# systemd-analyze security: 0 (locked down) … 10 (exposed); "OK" ends at 4.9.
MAX_EXPOSURE = 2.0


def _unit() -> dict[str, dict[str, list[str]]]:
    """section → key → values (a key may repeat: SystemCallFilter=...)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{line!r} before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: run scripts/ensure-system-deps.sh"
    return found


def _rendered(tmp_path: Path) -> Path:
    """The unit with its binary at this checkout's virtualenv (the verifier checks it exists)."""
    prefix = Path(sys.executable).parent.parent
    assert (prefix / "bin" / "pollcast").is_file()
    path = tmp_path / UNIT.name
    path.write_text(UNIT.read_text().replace(INSTALL_PREFIX, str(prefix)))
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(_rendered(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys and unparsable values are only warnings: none allowed.
    assert result.stderr == "", result.stderr


def test_unit_is_hardened(tmp_path: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", str(_rendered(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_runs_the_gateway_unprivileged_and_drains_it() -> None:
    service = _unit()["Service"]
    single = {key: values[-1] for key, values in service.items()}
    assert single["Type"] == "exec"
    assert single["User"] not in ("root", "0") and single["Group"] not in ("root", "0")
    config = f"--config /etc/pollcast/{PRODUCTION_TOML.name}"
    assert single["ExecStart"] == f"{INSTALL_PREFIX}/bin/pollcast serve {config}"
    assert single["ExecStartPre"] == f"{INSTALL_PREFIX}/bin/pollcast check-config {config}"
    assert single["EnvironmentFile"].startswith("/etc/pollcast/")

    shutdown_s = load_config(PRODUCTION_TOML, env=production_env()).server.shutdown_timeout_s
    assert single["KillSignal"] == "SIGTERM"
    assert _seconds(single["TimeoutStopSec"]) > shutdown_s
    assert single["Restart"] == "on-failure"

    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert single[key] == value, key
    assert "@system-service" in service["SystemCallFilter"]
