"""A real Redis Cluster of a test's own: N masters (and replicas), free ports, killable.

Usage::

    with RedisCluster(tmp_path, masters=3) as cluster:      # cluster.url == "redis+cluster://…"
        ...
    with RedisCluster(tmp_path, masters=3, replicas=1) as cluster:
        victim = cluster.master_of("some-key")              # the node serving that key's slot
        victim.kill()                                       # SIGKILL a master
        cluster.wait_for_failover(victim)                   # its replica is promoted

Each node is a ``redis-server --cluster-enabled yes`` with its own directory
(AOF ``appendfsync always`` unless ``persist=False``); the cluster is formed
with ``redis-cli --cluster create``. A node's cluster bus listens on its port
+ 10,000, so ports are taken from 20,000–45,000 with both ports free.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
import redis

from tests.redis_server import wait_until_answering

__all__ = ["ClusterNode", "RedisCluster", "redis_cluster"]

_BUS_OFFSET = 10_000


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """``n`` ports p with p and p + 10,000 both free (the node and its cluster bus)."""
    rng = random.Random()
    found: list[int] = []
    while len(found) < n:
        port = rng.randrange(20_000, 45_000)
        if port in found or port + _BUS_OFFSET in found:
            continue
        if _port_free(port) and _port_free(port + _BUS_OFFSET):
            found.append(port)
    return found


class ClusterNode:
    """One ``redis-server`` of the cluster."""

    def __init__(self, binary: str, directory: Path, port: int, *, persist: bool) -> None:
        self.binary = binary
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2)

    def start(self) -> ClusterNode:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--save",
            "",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until_answering(self.client(), self.proc)
        return self

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(10)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisCluster:
    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        persist: bool = True,
    ) -> None:
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-system-deps.sh)")
        self.cli = cli
        self.masters = masters
        self.replicas = replicas
        ports = _free_ports(masters * (1 + replicas))
        self.nodes = [
            ClusterNode(binary, directory / f"node-{port}", port, persist=persist) for port in ports
        ]

    @property
    def url(self) -> str:
        """A seed URL for ``backend.url``; the client discovers the other nodes."""
        return f"redis+cluster://{self.nodes[0].address}/0"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        create = [
            self.cli,
            "--cluster",
            "create",
            *(node.address for node in self.nodes),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and every replica is in sync."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for node in self.nodes:
                if not node.alive:
                    continue
                client = node.client()
                try:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    ok = "cluster_state:ok" in text
                    # A replica that never synced may not take over: wait for its link.
                    replication = client.info("replication")
                    if replication.get("role") == "slave":
                        ok = ok and replication.get("master_link_status") == "up"
                    states.append(ok)
                except redis.RedisError:
                    states.append(False)
                finally:
                    client.close()
            if states and all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def node_at(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def master_of(self, key: str) -> ClusterNode:
        """The live master serving ``key``'s slot."""
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.client()
            try:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return self.node_at(int(master[1]))
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise LookupError(f"no live node knows the master of {key!r}")

    def wait_for_failover(self, dead: ClusterNode, timeout_s: float = 30.0) -> None:
        """Until a replica of ``dead`` (killed) serves its slots and the cluster is whole."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node is dead or not node.alive:
                    continue
                client = node.client()
                try:
                    slots = client.execute_command("CLUSTER", "SLOTS")
                    masters = {int(entry[2][1]) for entry in slots}
                    if dead.port not in masters and self._covered(slots):
                        self.wait_ok(timeout_s=max(1.0, deadline - time.monotonic()))
                        return
                except redis.RedisError:
                    pass
                finally:
                    client.close()
            time.sleep(0.1)
        raise TimeoutError(f"no replica took over from {dead.address}")

    @staticmethod
    def _covered(slots: list[list[object]]) -> bool:
        ranges = sorted((int(str(s[0])), int(str(s[1]))) for s in slots)
        expected = 0
        for start, end in ranges:
            if start != expected:
                return False
            expected = end + 1
        return expected == 16384

    def flush(self) -> None:
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.client()
            try:
                if client.execute_command("ROLE")[0] in (b"master", "master"):
                    client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> RedisCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One throwaway 3-master Redis Cluster (no persistence) for the session.

    Tests share it: give each its own key prefix. Re-export it from a
    ``conftest.py``: ``from tests.redis_cluster import redis_cluster  # noqa: F401``.
    """
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster"), persist=False) as cluster:
        yield cluster
