"""The benchmark's processes: pinning, open-file limits, start/stop, RSS and CPU readings."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.gateway_server import free_port, to_toml

__all__ = [
    "LoadGen",
    "Pinning",
    "Proc",
    "core_busy_seconds",
    "cpu_seconds",
    "raise_nofile",
    "rss_kib",
    "start_gateway",
    "start_sim",
    "wait_http",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
CHILD_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def raise_nofile() -> int:
    """Raise this process's open-files limit as far as allowed; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (200_000, 100_000, 65_536):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


@dataclass(frozen=True)
class Pinning:
    """Which cores the server under test and everything else run on."""

    server: frozenset[int]
    client: frozenset[int]

    @classmethod
    def detect(cls) -> Pinning:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= 2:
            return cls(frozenset({cores[0]}), frozenset(cores[1:]))
        return cls(frozenset(cores), frozenset(cores))

    @property
    def separate(self) -> bool:
        return not (self.server & self.client)

    def describe(self) -> str:
        def fmt(cores: frozenset[int]) -> str:
            return ",".join(map(str, sorted(cores)))

        if not self.separate:
            return f"not pinned (only core {fmt(self.server)} available)"
        return (
            f"server under test (pollcast gateway / nginx+nchan / all pushpin processes) on "
            f"core {fmt(self.server)}; load generator, simulator, peer feeder and this "
            f"orchestrator on core {fmt(self.client)} (sched_setaffinity before exec)"
        )

    def preexec(self, which: str) -> Callable[[], None]:
        cores = self.server if which == "server" else self.client

        def setup() -> None:
            raise_nofile()
            os.sched_setaffinity(0, cores)
            os.setsid()  # its own process group: stopped as a whole, never by name

        return setup


@dataclass
class Proc:
    """A child process (and its process group), with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)
        # Children that outlived the leader (pushpin's services) share its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def spawn(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    preexec: Callable[[], None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
            env={**os.environ, **CHILD_ENV, **(env or {})},
            cwd=cwd or ROOT,
        )
    return Proc(name, popen, log_path)


def wait_http(url: str, proc: Proc, timeout: float = 20.0, ok: Sequence[int] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code in ok:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not answer {url}:\n{proc.log_tail()}")


def start_sim(workdir: Path, pin: Pinning) -> Proc:
    port = free_port()
    proc = spawn(
        "sim",
        [PY, "-m", "gateway.sim", "--port", str(port)],
        workdir,
        pin.preexec("client"),
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    wait_http(f"{proc.extra['url']}/_sim/stats", proc)
    return proc


def start_gateway(
    doc: Mapping[str, Any], workdir: Path, pin: Pinning, name: str, ready_timeout: float = 20.0
) -> Proc:
    """``pollcast serve`` (via :mod:`tests.bench.serve_gateway`) on the server core.

    Raises:
        RuntimeError: it exited or was not ready in time (it is stopped first).
    """
    port = free_port()
    full = dict(doc)
    full["server"] = {**doc.get("server", {}), "host": "127.0.0.1", "port": port}
    config_path = workdir / f"{name}.toml"
    config_path.write_text(to_toml(full))
    proc = spawn(
        name,
        [PY, "-m", "tests.bench.serve_gateway", str(config_path)],
        workdir,
        pin.preexec("server"),
    )
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    proc.extra["port"] = port
    try:
        wait_http(f"{proc.extra['url']}/readyz", proc, timeout=ready_timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def rss_kib(pid: int) -> int:
    """VmRSS of one process, KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in process_tree(pid))


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def core_busy_seconds(cores: frozenset[int]) -> float:
    """CPU seconds these cores spent busy (any process), from /proc/stat."""
    total = 0
    with open("/proc/stat") as stat:
        for line in stat:
            name, _, rest = line.partition(" ")
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                ticks = [int(x) for x in rest.split()]
                total += sum(ticks[:8]) - ticks[3] - ticks[4]  # minus idle and iowait
    return total / CLK_TCK


class LoadGen:
    """The load generator process (:mod:`tests.bench.loadgen`), driven over its stdin/stdout."""

    def __init__(self, workdir: Path, pin: Pinning) -> None:
        self.log_path = workdir / "loadgen.log"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [PY, "-m", "tests.bench.loadgen"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=pin.preexec("client"),
                env={**os.environ, **CHILD_ENV},
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def call(self, timeout: float = 300.0, **cmd: Any) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.popen.stdin.flush()
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"load generator did not answer {cmd['op']} within {timeout} s")
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited: {self.log_path.read_text()[-2000:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"load generator: {reply['error']}")
        return reply

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(Exception):
                self.call(timeout=10, op="quit")
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
