"""The terminal watcher as a person sees it: a real pseudo-terminal (tmux) and a pipe.

``pollcast watch`` runs in a tmux pane of a private tmux server; the test reads
the rendered screen with ``capture-pane``, the way it would look to a person,
and the pane's exit status.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pollcast_client as pc
import pytest
from pollcast_client.events import decode_event

from tests.clients.python.conftest import short_id
from tests.integration.conftest import release_once_watched
from tests.integration.gateway_server import running_gateway, sim_config

BIN = Path(sys.executable).parent
SCREEN_TIMEOUT_S = 30.0


class Tmux:
    """A private tmux server (its own socket) whose sessions each run one command."""

    def __init__(self, workdir: Path, width: int = 120, height: int = 30) -> None:
        self.socket = f"pollcast-test-{uuid.uuid4().hex[:10]}"
        self.conf = workdir / "tmux.conf"
        # remain-on-exit keeps the last screen and the exit status readable.
        self.conf.write_text("set-option -g remain-on-exit on\nset-option -g status off\n")
        self.size = (str(width), str(height))

    def _tmux(self, *args: str) -> str:
        cmd = ["tmux", "-L", self.socket, "-f", str(self.conf), *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10).stdout

    def start(self, name: str, argv: list[str]) -> None:
        width, height = self.size
        # The shell records the exit status itself: tmux's #{pane_dead_status}
        # is now and then never filled in.
        status = shlex.quote(str(self._status_path(name)))
        command = f"{shlex.join(argv)}; echo $? > {status}.part && mv {status}.part {status}"
        self._tmux("new-session", "-d", "-s", name, "-x", width, "-y", height, command)
        self._tmux("pipe-pane", "-t", name, f"cat > {shlex.quote(str(self.raw(name)))}")

    def raw(self, name: str) -> Path:
        """Everything the program wrote to the terminal (for failure messages)."""
        return self.conf.parent / f"{name}.tty"

    def _status_path(self, name: str) -> Path:
        return self.conf.parent / f"{name}.status"

    def screen(self, name: str) -> str:
        # With the scrollback ("-S -"): when the pane dies, tmux scrolls the
        # screen by a line to print "Pane is dead" at the bottom.
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", name)

    def exit_status(self, name: str) -> int | None:
        path = self._status_path(name)
        return int(path.read_text()) if path.exists() else None

    def wait_until(self, name: str, ready: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while True:
            screen = self.screen(name)
            if ready(screen):
                return screen
            if time.monotonic() > deadline:
                written = self.raw(name).read_bytes() if self.raw(name).exists() else b""
                raise AssertionError(f"screen never matched:\n{screen}\nwritten: {written!r}")
            time.sleep(0.05)

    def wait_exit(self, name: str) -> tuple[int, str]:
        screen = self.wait_until(name, lambda _screen: self.exit_status(name) is not None)
        status = self.exit_status(name)
        assert status is not None
        return status, self.screen(name) or screen

    def close(self) -> None:
        found = subprocess.run(
            ["tmux", "-L", self.socket, "display", "-p", "#{socket_path}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)
        if found.returncode == 0 and found.stdout.strip():
            Path(found.stdout.strip()).unlink(missing_ok=True)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    terminal = Tmux(tmp_path)
    try:
        yield terminal
    finally:
        terminal.close()


def create_task(sim: str, provider: str, task_id: str, timeline: list[dict[str, Any]]) -> str:
    """A simulator task held until its watchers are there (:func:`release_once_watched`)."""
    reply = httpx.post(
        f"{sim}/_sim/tasks",
        json={"provider": provider, "task_id": task_id, "timeline": timeline, "held": True},
        timeout=10,
    )
    reply.raise_for_status()
    return f"{provider}:{task_id}"


def status_lines(screen: str, task: str) -> list[str]:
    """The live status lines of ``task`` (``task  state  [bar] pct …``)."""
    return [
        line for line in screen.splitlines() if re.match(rf"{re.escape(task)}\s+\w+\s+\[", line)
    ]


def test_watch_on_a_terminal_redraws_live_lines_and_exits_with_the_outcome(
    sim: str, tmux: Tmux
) -> None:
    """Two watchers side by side: one whose tasks succeed (exit 0), one whose task fails (1)."""
    video_id = short_id("vp")
    video = create_task(
        sim,
        "videoproc",
        video_id,
        [{"at": 0.6 * i, "state": "running", "progress": 10 + 15 * i} for i in range(6)]
        + [{"at": 4.0, "state": "succeeded"}],
    )
    model = create_task(
        sim,
        "aholo",
        short_id("ah"),
        [
            {"at": 0, "state": "queued"},
            {"at": 1.0, "state": "running"},
            {"at": 3, "state": "succeeded"},
        ],
    )
    tryon = create_task(
        sim,
        "tryon",
        str(uuid.uuid4().int % 10**8),
        [
            {"at": 0, "state": "queued", "position": 3},
            {"at": 2.0, "state": "queued", "position": 1},
            {"at": 4.0, "state": "failed", "message": "garment not detected"},
        ],
    )
    with running_gateway(sim_config(sim)) as (base, _gw):
        tmux.start("ok", [str(BIN / "pollcast"), "watch", video, model, "--url", base])
        tmux.start("bad", [str(BIN / "pollcast-watch"), tryon, "--url", base])
        release_once_watched(sim, base, {video: 1, model: 1, tryon: 1})
        running = tmux.wait_until(
            "ok",
            lambda s: any(
                re.search(r"running\s+\[.*\]\s+\d+%", line) for line in status_lines(s, video)
            ),
        )
        queued = tmux.wait_until(
            "bad",
            lambda s: any(
                re.search(r"queued .*#\d in queue", line) for line in status_lines(s, tryon)
            ),
        )
        status, final = tmux.wait_exit("ok")
        failed_status, failed = tmux.wait_exit("bad")

    assert status == 0, final
    # One line per task, redrawn in place: never a line per event.
    assert len(status_lines(running, video)) == 1 and len(status_lines(running, model)) == 1
    assert len(status_lines(final, video)) == 1 and len(status_lines(final, model)) == 1
    assert re.search(r"succeeded\s+\[.*\]\s+100%", status_lines(final, video)[0])
    assert re.search(r"succeeded\s+\[.*\]\s+100%", status_lines(final, model)[0])
    assert f"{sim}/videoproc/api/download/video_{video_id}.mp4" in final
    assert re.search(r"ply: http://\S+\.ply", final)

    assert failed_status == 1, failed
    assert len(status_lines(queued, tryon)) == 1
    assert re.search(r"failed\s+\[", status_lines(failed, tryon)[0])
    assert "garment not detected" in failed


def test_json_and_plain_output_when_stdout_is_not_a_terminal(sim: str) -> None:
    with running_gateway(sim_config(sim)) as (base, _gw):
        task = create_task(
            sim,
            "videoproc",
            short_id("vp"),
            [{"at": 0.5 * i, "state": "running", "progress": 10 * (i + 1)} for i in range(6)]
            + [{"at": 3.0, "state": "succeeded"}],
        )
        runs = {
            "json": [str(BIN / "pollcast"), "watch", task, "--url", base, "--json"],
            "plain": [str(BIN / "pollcast-watch"), task, "--url", base],
            "bad": [str(BIN / "pollcast"), "watch", "nosuchprovider:1", "--url", base, "--json"],
        }
        procs = {
            name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, argv in runs.items()
        }
        release_once_watched(sim, base, {task: 2})
        out = {name: proc.communicate(timeout=SCREEN_TIMEOUT_S) for name, proc in procs.items()}

    assert procs["json"].returncode == 0, out["json"]
    events = [decode_event(line) for line in out["json"][0].splitlines()]
    raw = [msgspec.json.decode(line) for line in out["json"][0].splitlines()]
    assert isinstance(events[0], pc.Snapshot) and events[-1].terminal, out["json"]
    assert events[-1].state is pc.State.SUCCEEDED
    numbered = [e.seq for e in events if e.counts_for_resume]
    assert numbered == list(range(numbered[0], numbered[-1] + 1))
    assert all(set(r) >= {"event", "task", "seq", "state", "terminal", "result"} for r in raw)

    assert procs["plain"].returncode == 0, out["plain"]
    plain = out["plain"][0]
    assert "\x1b" not in plain
    assert re.search(rf"{re.escape(task)} running \d+%", plain), out["plain"]
    assert re.search(rf"{re.escape(task)} succeeded", plain), out["plain"]
    assert "/videoproc/api/download/" in plain, out["plain"]

    assert procs["bad"].returncode == 2
    assert procs["bad"].stdout is not None and out["bad"][0] == ""
    assert "nosuchprovider:1" in out["bad"][1] and "404" in out["bad"][1]
