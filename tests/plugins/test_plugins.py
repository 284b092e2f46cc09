"""Provider plugins, installed as a user would install them, against live servers.

``tests/plugins/example_provider`` is a separate distribution that adds the
provider kind ``clipstatus`` through the ``pollcast.providers`` entry-point
group. It is installed with pip (``--no-deps --no-build-isolation``) into a
fresh virtual environment layered on the project's: ``venv`` bases a new
environment on the base interpreter, so a ``.pth`` file adds the project
environment's site directory (pollcast and its dependencies) to it. The
project environment itself is never changed.

Then, from that environment: ``pollcast check-config`` names where each kind
comes from, a live gateway polls the simulator through the plugin's adapter
and a subscriber gets the terminal event, and a broken or shadowing plugin
is a config error naming it — never a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import create_sim_task, events_url
from tests.integration.gateway_server import FAST, free_port, to_toml
from tests.integration.readers import read_sse

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parent / "example_provider"
STARTUP_TIMEOUT_S = 20.0
SECRET = "plugin-secret-9Qx7"

BROKEN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "pollcast-broken-plugin"
version = "0.2.0"

[project.entry-points."pollcast.providers"]
brokenkind = "broken_plugin.no_such_module:Adapter"
notanadapter = "broken_plugin:NotAnAdapter"
ailab = "broken_plugin:NotAnAdapter"
explodes = "broken_plugin:Explodes"
badcheck = "broken_plugin:BadCheck"

[tool.setuptools]
packages = ["broken_plugin"]
"""


BROKEN_MODULE = """\
import msgspec

from gateway.providers.videoproc import VideoprocAdapter

NotAnAdapter = object()


class Settings(msgspec.Struct):
    base_url: str
    api_key: str


class Explodes(VideoprocAdapter):
    kind = "explodes"
    Settings = Settings

    def __init__(self, settings, **options):
        raise RuntimeError(f"key {settings.api_key} refused")


class BadCheck(VideoprocAdapter):
    kind = "badcheck"
    Settings = Settings

    @classmethod
    def check_settings(cls, settings):
        raise KeyError(settings.api_key)
"""


def _pip_install(python: Path, source: Path) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--no-deps", "--no-build-isolation", "--no-index", str(source)),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of a fresh venv with both plugins installed (and pollcast visible)."""
    root = tmp_path_factory.mktemp("plugins")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    project_site = sysconfig.get_paths()["purelib"]
    # An "import" line of a .pth runs at start-up: addsitedir also reads the
    # project's own .pth files (the editable pollcast install).
    (Path(site) / "pollcast-project.pth").write_text(
        f"import site; site.addsitedir({project_site!r})\n"
    )
    # Built from copies: setuptools writes build/ and *.egg-info next to the sources.
    example = shutil.copytree(EXAMPLE, root / "example_provider")
    broken = root / "broken_plugin"
    (broken / "broken_plugin").mkdir(parents=True)
    (broken / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken / "broken_plugin" / "__init__.py").write_text(BROKEN_MODULE)
    _pip_install(python, example)
    _pip_install(python, broken)
    yield python


def check_config(python: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "gateway.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_config(path: Path, providers: dict[str, dict[str, object]], port: int = 0) -> Path:
    doc = {
        "server": {"host": "127.0.0.1", "port": port},
        "backend": {"kind": "local", "path": ":memory:"},
        "providers": providers,
    }
    path.write_text(to_toml(doc))
    return path


def test_check_config_names_where_each_kind_comes_from(plugin_python: Path, tmp_path: Path) -> None:
    providers: dict[str, dict[str, object]] = {
        "clips": {"kind": "clipstatus", "base_url": "http://127.0.0.1:9/videoproc"},
        "videoproc": {"kind": "videoproc", "base_url": "http://127.0.0.1:9/videoproc"},
    }
    run = check_config(plugin_python, write_config(tmp_path / "p.toml", providers))
    assert run.returncode == 0, run.stderr
    assert "provider clips (clipstatus): every 2 s" in run.stdout
    assert "    clipstatus: plugin pollcast-example-provider 0.1.0\n" in run.stdout
    assert "    videoproc: built-in\n" in run.stdout


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "brokenkind",
            "providers.x.kind: provider plugin pollcast-broken-plugin 0.2.0 (entry point "
            "brokenkind = broken_plugin.no_such_module:Adapter) failed to load: "
            "ModuleNotFoundError: No module named 'broken_plugin.no_such_module'",
        ),
        (
            "notanadapter",
            "providers.x.kind: provider plugin pollcast-broken-plugin 0.2.0 (entry point "
            "notanadapter = broken_plugin:NotAnAdapter) is object <object object at",
        ),
        (
            "ailab",
            "providers.x.kind: provider plugin pollcast-broken-plugin 0.2.0 (entry point "
            "ailab = broken_plugin:NotAnAdapter) claims the built-in provider kind 'ailab': "
            "plugins may only add new kinds, never replace a built-in one",
        ),
        (
            "nosuchkind",
            "providers.x.kind: unknown provider kind 'nosuchkind'; known kinds: aholo, ailab, "
            "badcheck, brokenkind, clipstatus, explodes, genpic, http, notanadapter, tryon, "
            "videoproc",
        ),
        (
            "explodes",
            "providers.x: provider plugin pollcast-broken-plugin 0.2.0 (entry point "
            "explodes = broken_plugin:Explodes) failed on this provider's settings: "
            "RuntimeError: key [redacted] refused",
        ),
        (
            "badcheck",
            "providers.x: provider plugin pollcast-broken-plugin 0.2.0 (entry point "
            "badcheck = broken_plugin:BadCheck) failed on this provider's settings: "
            "KeyError: '[redacted]'",
        ),
    ],
)
def test_a_broken_plugin_is_a_config_error_naming_it(
    plugin_python: Path, tmp_path: Path, kind: str, expected: str
) -> None:
    providers: dict[str, dict[str, object]] = {
        "x": {"kind": kind, "base_url": "http://127.0.0.1:9", "api_key": SECRET}
    }
    run = check_config(plugin_python, write_config(tmp_path / "p.toml", providers))
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.startswith(f"pollcast: config error: {expected}"), run.stderr
    assert "Traceback" not in run.stderr
    assert SECRET not in run.stdout + run.stderr


@contextmanager
def serving(python: Path, config: Path, port: int, log: Path) -> Iterator[str]:
    """``pollcast serve`` run by ``python`` until ready; yields its base URL."""
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(python), "-m", "gateway.cli", "serve", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


async def test_live_gateway_polls_through_the_plugin_kind(
    plugin_python: Path, tmp_path: Path, sim: str, client: httpx.AsyncClient
) -> None:
    port = free_port()
    providers: dict[str, dict[str, object]] = {
        "clips": {"kind": "clipstatus", "base_url": f"{sim}/videoproc", **FAST}
    }
    config = write_config(tmp_path / "serve.toml", providers, port=port)
    with serving(plugin_python, config, port, tmp_path / "gateway.log") as base:
        timeline = [
            {"at": 0, "state": "running", "progress": 20, "message": "cutting"},
            {"at": 0.6, "state": "running", "progress": 70},
            {"at": 1.2, "state": "succeeded"},
        ]
        task = await create_sim_task(client, sim, "videoproc", timeline)
        task_id = task.partition(":")[2]
        providers_reply = (await client.get(f"{base}/v1/providers")).json()
        events = await read_sse(client, events_url(base, f"clips:{task_id}"))
    assert [p["kind"] for p in providers_reply["providers"]] == ["clipstatus"]
    final = events[-1]
    assert final["task"] == f"clips:{task_id}"
    assert final["state"] == "succeeded" and final["terminal"] is True
    assert final["result"]["urls"] and all(
        u.startswith(f"{sim}/videoproc/") for u in final["result"]["urls"]
    )
    assert [e["state"] for e in events if e["event"] in ("snapshot", "state")][-1] == "succeeded"
    assert any(e["progress"] == 70 for e in events)
