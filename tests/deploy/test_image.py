"""deploy/Dockerfile and .dockerignore: checked, then their steps run for real.

No container engine runs here. The static checks read the Dockerfile; the
packaging tests play its build steps on this machine (tests/deploy/host_build.py):
build the wheel from the trimmed context, install it into a fresh virtualenv,
then run the image's command against a live simulator, probe it the way the
HEALTHCHECK and the orchestrators do, and stop it the way they do (SIGTERM).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from httpx_sse import connect_sse

from gateway.config import load_config
from gateway.sim.credentials import SIM_CREDENTIALS
from tests.deploy.dockerfile import (
    DockerIgnore,
    Stage,
    copy_sources,
    exec_form,
    healthcheck_command,
    parse_dockerfile,
)
from tests.deploy.host_build import HostBuild
from tests.deploy.production import DEPLOY, REPO, production_env
from tests.integration.gateway_server import free_port
from tests.integration.sim_server import running_sim
from tests.redis_server import RedisServer

DOCKERFILE = DEPLOY / "Dockerfile"
IMAGE_CONFIG = "/etc/pollcast/pollcast.toml"
SERVE = ["pollcast", "serve", "--config", IMAGE_CONFIG]
READY_TIMEOUT_S = 30.0


def _stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _context() -> set[str]:
    return DockerIgnore((REPO / ".dockerignore").read_text()).context(REPO)


# -- static ------------------------------------------------------------------


def test_dockerfile_builds_a_wheel_and_runs_it_slim_and_unprivileged() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage: the runtime image carries no build tooling"
    assert all(s.base == "python:3.11-slim" for s in stages)
    build, runtime = stages[0], stages[-1]
    assert any("pip wheel" in r.args for r in build.all("RUN"))
    # The runtime stage gets the wheel from the build stage, never the source tree.
    runtime_copies = [copy_sources(c) for c in runtime.all("COPY")]
    assert not [srcs for flags, srcs, _ in runtime_copies if "gateway" in srcs and not flags]
    assert any(
        f"from={build.name}" in r.args and "pip install" in r.args for r in runtime.all("RUN")
    )

    user = runtime.last("USER")
    assert user is not None
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can verify it
    assert runtime.instructions.index(user) > max(
        runtime.instructions.index(r) for r in runtime.all("RUN")
    )
    assert any(f"--uid {uid}" in r.args for r in runtime.all("RUN"))

    entrypoint, cmd = runtime.last("ENTRYPOINT"), runtime.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert exec_form(entrypoint.args) + exec_form(cmd.args) == SERVE
    stopsignal, expose = runtime.last("STOPSIGNAL"), runtime.last("EXPOSE")
    assert stopsignal is not None and stopsignal.args == "SIGTERM"
    assert expose is not None and expose.args == "8000"

    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck is not None
    options, command = healthcheck_command(healthcheck)
    assert command[:2] == ["python", "-c"]  # the slim image has no curl or wget
    assert "urllib" in command[2] and "http://127.0.0.1:8000/healthz" in command[2]
    assert {"interval", "timeout", "retries"} <= options.keys()


def test_dockerignore_passes_what_the_image_needs_and_nothing_else() -> None:
    context = _context()
    for stage in _stages():
        for copy in stage.all("COPY"):
            flags, sources, _dest = copy_sources(copy)
            if "from" in flags:
                continue
            for source in sources:
                assert source in context or any(f.startswith(source + "/") for f in context), (
                    f"COPY {source}: excluded by .dockerignore"
                )
    static = {p.relative_to(REPO).as_posix() for p in (REPO / "gateway/web/static").iterdir()}
    assert {"pyproject.toml", "README.md", "gateway/py.typed", *static} <= context
    leaked = [
        f
        for f in context
        if f.startswith((".git/", ".venv/", "tests/", "clients/"))
        or "__pycache__" in f
        or f.endswith((".db", ".env", ".pyc"))
        or (f.startswith("deploy/") and f != "deploy/pollcast.toml")
    ]
    assert not leaked


# -- the build steps, for real -------------------------------------------------


@dataclass
class BuiltImage:
    build: HostBuild
    runtime: Stage
    wheel: Path
    context: set[str]  # the build context the wheel was built from


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The Dockerfile's stages played into a scratch root (wheel built, venv installed)."""
    stages = _stages()
    # The steps run with this interpreter: it must be the one the image is built on.
    assert stages[0].base.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}-")
    context = _context()
    build = HostBuild(REPO, context, tmp_path_factory.mktemp("image") / "root")
    # The builder's own pip configuration and cache, as BuildKit's cache mount would.
    builder_env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k == "HOME"}
    for stage in stages:
        build.run_stage(stage, build_env=builder_env)
    assert len(build.skipped) == 1 and "useradd" in build.skipped[0]
    wheels = sorted(build.path("/wheels").glob("pollcast-*.whl"))
    assert len(wheels) == 1, wheels
    return BuiltImage(build, stages[-1], wheels[0], context)


@pytest.mark.packaging
@pytest.mark.timeout(300)
def test_wheel_carries_the_package_data(image: BuiltImage) -> None:
    with zipfile.ZipFile(image.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    assert "gateway/py.typed" in names
    static = {f for f in image.context if f.startswith("gateway/web/static/")}
    assert static and static <= names
    sources = {f for f in image.context if f.startswith("gateway/") and f.endswith(".py")}
    assert sources <= names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    assert "pollcast = gateway.cli:main" in scripts


def _image_env(image: BuiltImage) -> dict[str, str]:
    """What the container process sees: the image's ENV, nothing of this checkout."""
    return {
        **image.build.env,
        "HOME": str(image.build.path("/var/lib/pollcast")),
        "LANG": "C.UTF-8",
    }


def _probe(command: list[str], port: int, env: dict[str, str]) -> int:
    """Run a health check command against ``port`` instead of the image's 8000."""
    argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in command]
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


@pytest.fixture
def sim() -> Iterator[str]:
    with running_sim() as url:
        yield url


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", persist=False) as server:
        yield server


def _on_loopback(toml_text: str, port: int) -> str:
    """The production file served on ``127.0.0.1:port`` (nothing else changed)."""
    host = re.subn(r'^host = "0\.0\.0\.0"$', 'host = "127.0.0.1"', toml_text, flags=re.M)
    both = re.subn(r"^port = 8000$", f"port = {port}", host[0], flags=re.M)
    assert host[1] == both[1] == 1, "deploy/pollcast.toml: [server] host/port changed shape"
    return both[0]


def _provider_env(sim: str) -> dict[str, str]:
    """The production file's provider variables (``KIND_FIELD``), pointed at the simulator."""
    return {
        f"{kind}_{field}".upper(): value
        for kind, table in SIM_CREDENTIALS.provider_credentials(sim).items()
        for field, value in table.items()
    }


@pytest.mark.packaging
@pytest.mark.timeout(300)
def test_installed_image_serves_the_production_config_and_drains_on_sigterm(
    image: BuiltImage, sim: str, redis: RedisServer, tmp_path: Path
) -> None:
    env = _image_env(image)
    build = image.build
    command = build.command(image.runtime)
    config_path = build.path(IMAGE_CONFIG)
    assert command[1:] == ["serve", "--config", str(config_path)]
    pollcast = Path(build.path("/opt/pollcast/bin/pollcast"))
    assert pollcast.is_file()

    # The baked-in production config validates with the installed package.
    checked = subprocess.run(
        [str(pollcast), "check-config", "--config", str(config_path)],
        env={**env, **production_env()},
        cwd=build.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    located = subprocess.run(
        ["python", "-c", "import gateway; print(gateway.__file__)"],
        env=env,
        cwd=build.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(located.stdout.strip()).is_relative_to(build.path("/opt/pollcast"))

    # The baked-in production file itself, on a free loopback port instead of
    # 0.0.0.0:8000: token auth, JSON logs, a real Redis, every provider's
    # address and credentials from the environment (here: the simulator's).
    port = free_port()
    api_key, token_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(48)
    config_path.write_text(_on_loopback(config_path.read_text(), port))
    env = {
        **env,
        **_provider_env(sim),
        "POLLCAST_REDIS_URL": redis.url,
        "POLLCAST_API_KEY": api_key,
        "POLLCAST_TOKEN_SECRET": token_secret,
    }
    reply = httpx.post(
        f"{sim}/_sim/tasks",
        json={"provider": "videoproc", "timeline": [{"at": 0, "state": "running", "progress": 5}]},
        trust_env=False,
    )
    task_id = reply.json()["task_id"]
    shutdown_s = load_config(config_path, env=env).server.shutdown_timeout_s

    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, env=env, cwd=build.workdir, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10, trust_env=False) as client:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    ready = client.get(f"{base}/readyz")
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            assert ready.json()["status"] == "ready"
            health = client.get(f"{base}/healthz")
            assert health.status_code == 200 and health.json()["status"] == "ok"

            healthcheck = image.runtime.last("HEALTHCHECK")
            assert healthcheck is not None
            image_probe = healthcheck_command(healthcheck)[1]
            compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
            compose_probe = compose["services"]["gateway-1"]["healthcheck"]["test"][1:]
            assert _probe(image_probe, port, env) == 0
            assert _probe(compose_probe, port, env) == 0

            # An open stream, then SIGTERM: it gets the drain notice, the process exits 0.
            events: list[dict[str, object]] = []
            url = f"{base}/v1/tasks/videoproc/{task_id}/events"
            auth = {"Authorization": f"Bearer {api_key}"}
            signalled = 0.0
            with connect_sse(client, "GET", url, headers=auth) as source:
                source.response.raise_for_status()
                for sse in source.iter_sse():
                    if sse.data:
                        events.append(json.loads(sse.data))
                    if len(events) == 1 and not signalled:
                        proc.send_signal(signal.SIGTERM)
                        signalled = time.monotonic()
            code = proc.wait(shutdown_s)
            stopped_after = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert events[0]["event"] == "snapshot"
    assert events[-1]["event"] == "notice" and events[-1]["code"] == "server_draining"
    assert code == 0, log_path.read_text()
    assert stopped_after < shutdown_s
    # Gone: the image's health check now fails.
    assert _probe(image_probe, port, env) != 0
    # log_format = "json": every line the process wrote is one JSON object.
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines), lines
    assert any("draining" in json.loads(line)["msg"] for line in lines)
    assert api_key not in log_path.read_text() and token_secret not in log_path.read_text()
