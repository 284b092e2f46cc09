"""A real ``redis-server`` of a test's own: free port, own directory, killable and restartable.

Usage::

    with RedisServer(tmp_path) as redis:      # redis.url == "redis://127.0.0.1:<port>/0"
        ...
        redis.kill()                          # SIGKILL (persisted with appendfsync always)
        redis.start()                         # same port, same data

    RedisServer(tmp_path, fsync="everysec")   # AOF fsynced once a second (Redis' default)
    RedisServer(tmp_path, persist=False)      # no AOF, no snapshots: a restart loses everything
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest
import redis

__all__ = ["RedisServer", "process_redis_server", "redis_server", "wait_until_answering"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_answering(
    client: redis.Redis, proc: subprocess.Popen[bytes], timeout_s: float = 10.0
) -> None:
    """Until ``client`` gets a PONG from the server ``proc`` started (then close it).

    Raises:
        RedisError: the server exited, or did not answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        client.close()


class RedisServer:
    def __init__(
        self,
        directory: Path,
        *,
        persist: bool = True,
        fsync: Literal["always", "everysec"] = "always",
        port: int | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-system-deps.sh)")
        self.binary = binary
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.persist = persist
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", self.fsync]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until_answering(redis.Redis(port=self.port, socket_connect_timeout=0.2), self.proc)
        return self

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway ``redis-server`` (no persistence) for the session.

    Tests share it: give each its own key prefix. To use it, re-export it from
    a ``conftest.py``: ``from tests.redis_server import redis_server  # noqa: F401``.
    """
    with RedisServer(tmp_path_factory.mktemp("redis"), persist=False) as server:
        yield server


def process_redis_server(*, persist: bool = True) -> RedisServer:
    """A started server that lasts as long as this test process: killed, and its
    directory removed, when the process exits (for a module's shared server)."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="pollcast-redis-")), persist=persist)

    def stop_and_remove() -> None:
        server.kill()
        shutil.rmtree(server.dir, ignore_errors=True)

    atexit.register(stop_and_remove)
    return server.start()
