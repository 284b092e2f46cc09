"""``make demo`` runs ``pollcast demo``: events from all five providers at once, to curl too."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.gateway_server import free_port

PROVIDERS = {"ailab", "aholo", "tryon", "genpic", "videoproc"}
# Every provider has a task from the start: its first events come within a second
# or two of the banner, so this leaves room for a slow machine only.
ALL_FIVE_WITHIN_S = 10.0
LINE = re.compile(r"^\d\d:\d\d:\d\d\s+(\w+):(\S+)\s+(snapshot|state|progress|notice)\s+(\w+)")


@pytest.mark.timeout(90)
@pytest.mark.solo
def test_demo_shows_live_events_from_all_five_providers(tmp_path: Path) -> None:
    port, sim_port = free_port(), free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--port",
            str(port),
            "--sim-port",
            str(sim_port),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert demo.stdout is not None
    seen: dict[str, set[str]] = {}
    output: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(demo.stdout, selectors.EVENT_READ)
    started = time.monotonic()
    try:
        while time.monotonic() - started < ALL_FIVE_WITHIN_S and not _all_moved(seen):
            if not sel.select(timeout=1):
                continue
            line = demo.stdout.readline().decode()
            if not line:
                break
            output.append(line)
            if match := LINE.match(line):
                seen.setdefault(match[1], set()).add(match[4])
        elapsed = time.monotonic() - started
        assert _all_moved(seen), "".join(output[-40:])
        assert "curl -N" in "".join(output)

        # A task the demo created, streamed with curl -N as the banner suggests.
        key = next(m for line in output if (m := LINE.match(line)) and m[1] == "videoproc")
        curl = shutil.which("curl")
        assert curl is not None
        streamed = subprocess.run(
            [
                curl,
                "-sN",
                "--max-time",
                "3",
                f"http://127.0.0.1:{port}/v1/tasks/{key[1]}/{key[2]}/events",
            ],
            capture_output=True,
            check=False,
        ).stdout.decode()
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(10)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        sel.close()
        demo.stdout.close()  # else the pipe is left to the GC: a ResourceWarning in a later test
    assert elapsed < ALL_FIVE_WITHIN_S
    assert "retry: " in streamed
    assert "event: snapshot" in streamed and '"task":"videoproc:' in streamed
    assert demo.returncode == 0


def _all_moved(seen: dict[str, set[str]]) -> bool:
    """Every provider reported a state beyond the initial unknown snapshot."""
    return all(seen.get(p, set()) - {"unknown"} for p in PROVIDERS)
