"""Nchan and Pushpin, installed from Debian when missing and configured as PEERS.md shows."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.bench.procs import PY, Pinning, Proc, spawn, wait_http
from tests.integration.gateway_server import free_port

__all__ = [
    "PUSHPIN_HANDLER",
    "ensure_installed",
    "start_feeder",
    "start_nchan",
    "start_pushpin",
]

ROOT = Path(__file__).resolve().parents[2]
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
PUSHPIN_PUBLISH_PORT = 5561  # [handler] push_in_http_port in the packaged config
# Pushpin's [handler] defaults (message_rate=2500, message_hwm=25000) throttle
# and then drop deliveries; raised for the throughput test (PEERS.md).
PUSHPIN_HANDLER = {"message_rate": 1_000_000, "message_hwm": 10_000_000}


def ensure_installed() -> str | None:
    """Install nginx + libnginx-mod-nchan and pushpin if missing; ``None`` or why not."""
    script = ROOT / "scripts" / "ensure-system-deps.sh"
    try:
        subprocess.run(
            [str(script), "nginx", NCHAN_MODULE, "pushpin"],
            check=True,
            timeout=600,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not install the peers: {exc}"
    missing = [
        what
        for what, ok in (
            ("nginx", shutil.which("nginx")),
            ("nchan", Path(NCHAN_MODULE).exists()),
            ("pushpin", shutil.which("pushpin")),
        )
        if not ok
    ]
    return f"missing after install: {', '.join(missing)}" if missing else None


def start_nchan(workdir: Path, pin: Pinning) -> Proc:
    """nginx with one worker (PEERS.md's config), in the foreground, on the server core."""
    d = workdir / "nchan"
    (d / "body").mkdir(parents=True, exist_ok=True)
    port = free_port()
    (d / "nginx.conf").write_text(
        f"""load_module {NCHAN_MODULE};
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  server {{
    listen 127.0.0.1:{port};
    location ~ /sub/(\\w+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}
    location ~ /pub/(\\w+)$ {{
      nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 10;
    }}
  }}
}}
"""
    )
    proc = spawn(
        "nchan",
        ["nginx", "-c", f"{d}/nginx.conf", "-p", f"{d}/", "-g", "daemon off;"],
        workdir,
        pin.preexec("server"),
    )
    proc.extra.update(port=port, publish_port=port, sub_prefix="/sub/")
    wait_http(f"http://127.0.0.1:{port}/pub/warmup", proc, ok=(200, 201, 202, 404))
    return proc


def _pushpin_conf(template: str, d: Path, http_port: int) -> str:
    sections: dict[str, dict[str, str]] = {
        "global": {"rundir": str(d / "run")},
        "runner": {
            "services": "condure,zurl,pushpin-proxy,pushpin-handler",
            "http_port": str(http_port),
            "logdir": str(d / "log"),
        },
        "proxy": {
            "routesfile": str(d / "routes"),
            "zurl_out_specs": f"ipc://{d}/run/pushpin-zurl-in",
            "zurl_out_stream_specs": f"ipc://{d}/run/pushpin-zurl-in-stream",
            "zurl_in_specs": f"ipc://{d}/run/pushpin-zurl-out",
        },
        "handler": {k: str(v) for k, v in PUSHPIN_HANDLER.items()},
    }
    out: list[str] = []
    section = ""
    pending: dict[str, str] = {}

    def flush() -> None:
        out.extend(f"{k}={v}" for k, v in pending.items())
        pending.clear()

    for line in template.splitlines():
        header = re.match(r"^\[(\w+)\]", line)
        if header:
            flush()
            section = header.group(1)
            pending.update(sections.get(section, {}))
            out.append(line)
            continue
        key = re.match(r"^(\w+)=", line)
        if key and key.group(1) in pending:
            out.append(f"{key.group(1)}={pending.pop(key.group(1))}")
            continue
        out.append(line)
    flush()
    return "\n".join(out) + "\n"


def start_pushpin(workdir: Path, pin: Pinning, backend_port: int) -> Proc:
    """pushpin (runner + condure, zurl, proxy, handler), all on the server core."""
    d = workdir / "pushpin"
    for sub in ("run", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    (d / "routes").write_text(f"* 127.0.0.1:{backend_port}\n")
    template = Path("/etc/pushpin/pushpin.conf").read_text()
    (d / "pushpin.conf").write_text(_pushpin_conf(template, d, http_port))
    proc = spawn(
        "pushpin",
        ["pushpin", "--config", str(d / "pushpin.conf")],
        workdir,
        pin.preexec("server"),
        cwd=d,
    )
    proc.extra.update(port=http_port, publish_port=PUSHPIN_PUBLISH_PORT, sub_prefix="/sub/")
    wait_http(f"http://127.0.0.1:{PUSHPIN_PUBLISH_PORT}/publish/", proc, ok=(200, 400, 405))
    return proc


def start_grip_backend(workdir: Path, pin: Pinning) -> Proc:
    port = free_port()
    proc = spawn(
        "grip-backend",
        [PY, "-m", "tests.bench.feeder", "grip-backend", "--port", str(port)],
        workdir,
        pin.preexec("client"),
        cwd=ROOT,
    )
    proc.extra["port"] = port
    wait_http(f"http://127.0.0.1:{port}/sub/probe", proc)
    return proc


def start_feeder(
    workdir: Path,
    pin: Pinning,
    peer: str,
    *,
    sim_port: int,
    task_id: str,
    publish_port: int,
    channel: str,
    interval_s: float,
    duration_s: float,
) -> Proc:
    return spawn(
        f"feeder-{peer}",
        [
            PY,
            "-m",
            "tests.bench.feeder",
            "feed",
            "--peer",
            peer,
            "--sim-port",
            str(sim_port),
            "--task-id",
            task_id,
            "--publish-port",
            str(publish_port),
            "--channel",
            channel,
            "--interval",
            str(interval_s),
            "--duration",
            str(duration_s),
        ],
        workdir,
        pin.preexec("client"),
        cwd=ROOT,
    )
