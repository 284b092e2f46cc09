"""deploy/nginx.conf run for real on this machine.

The production file names compose services (``gateway-1:8000``), listens on
port 80 and writes to system paths. :func:`render_nginx_conf` replaces exactly
those parts — everything that shapes the traffic stays as written — and
:func:`running_nginx` serves the result in the foreground on a free port in
front of any number of upstream addresses.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.gateway_server import free_port

__all__ = [
    "NGINX_CONF",
    "Directive",
    "RunningNginx",
    "nginx_binary",
    "nginx_seconds",
    "nginx_test",
    "parse_nginx_conf",
    "render_nginx_conf",
    "running_nginx",
]

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
UPSTREAM = "pollcast"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
STARTUP_TIMEOUT_S = 10.0


def nginx_binary() -> str:
    found = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        raise RuntimeError("nginx is not installed: run scripts/ensure-system-deps.sh nginx")
    return found


def _replace(pattern: str, repl: str, text: str, *, expect: int | None = 1) -> str:
    new, count = re.subn(pattern, repl, text, flags=re.MULTILINE)
    if count == 0 or (expect is not None and count != expect):
        raise ValueError(f"deploy/nginx.conf changed shape: {pattern!r} matched {count} times")
    return new


def render_nginx_conf(
    text: str, *, workdir: Path, listen_port: int, upstreams: Sequence[str]
) -> str:
    """The production config with local addresses and paths.

    Args:
        text: deploy/nginx.conf.
        workdir: where pid, logs and temp files go.
        listen_port: served on ``127.0.0.1:listen_port`` (the IPv6 listen is dropped).
        upstreams: ``host:port`` of each gateway; each gets the parameters
            (``max_fails`` ...) of the production file's first server line.

    Raises:
        ValueError: a directive this replaces is missing or duplicated.
    """
    if not upstreams:
        raise ValueError("at least one upstream")
    block = re.search(rf"(upstream\s+{UPSTREAM}\s*\{{)(.*?)(\}})", text, flags=re.DOTALL)
    if block is None:
        raise ValueError(f"deploy/nginx.conf changed shape: no upstream {UPSTREAM}")
    servers = list(
        re.finditer(r"^([ \t]*)server[ \t]+[^\s;]+([^;]*);[ \t]*\n", block.group(2), re.M)
    )
    if not servers:
        raise ValueError("deploy/nginx.conf changed shape: the upstream lists no server")
    indent, params = servers[0].group(1), servers[0].group(2)
    body = block.group(2)
    for match in reversed(servers[1:]):
        body = body[: match.start()] + body[match.end() :]
    first = servers[0]
    local = "".join(f"{indent}server {address}{params};\n" for address in upstreams)
    body = body[: first.start()] + local + body[first.end() :]
    text = text[: block.start(2)] + body + text[block.end(2) :]

    text = _replace(r"^([ \t]*)pid[ \t]+[^;]+;", rf"\1pid {workdir}/nginx.pid;", text)
    text = _replace(r"^([ \t]*)error_log[ \t]+\S+", rf"\1error_log {workdir}/error.log", text)
    text = _replace(
        r"^([ \t]*)access_log[ \t]+/[^\s;]+", rf"\1access_log {workdir}/access.log", text
    )
    text = _replace(r"^[ \t]*listen[ \t]+\[::\][^;]*;\n", "", text)
    text = _replace(r"^([ \t]*)listen[ \t]+[^;]+;", rf"\1listen 127.0.0.1:{listen_port};", text)
    text = re.sub(r"^[ \t]*\w+_temp_path[ \t]+[^;]+;\n", "", text, flags=re.MULTILINE)
    temp = "".join(f"    {kind}_temp_path {workdir}/{kind}_temp;\n" for kind in TEMP_PATHS)
    text = _replace(r"^http[ \t]*\{\n", "http {\n" + temp, text)
    if os.geteuid() == 0:
        # Workers would run as "nobody" and could not enter the private workdir.
        text = "user root;\n" + text
    return text


def nginx_test(config: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``config``: syntax, directives, and that its paths open."""
    return subprocess.run(
        [nginx_binary(), "-t", "-c", str(config), "-p", str(workdir), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@dataclass(frozen=True)
class RunningNginx:
    url: str
    workdir: Path

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text() if path.exists() else ""


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def running_nginx(workdir: Path, upstreams: Sequence[str]) -> Iterator[RunningNginx]:
    """deploy/nginx.conf in the foreground on a free port, proxying to ``upstreams``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "nginx.conf"
    config.write_text(
        render_nginx_conf(
            NGINX_CONF.read_text(), workdir=workdir, listen_port=port, upstreams=upstreams
        )
    )
    startup_log = workdir / "startup.log"
    with startup_log.open("wb") as log:
        proc = subprocess.Popen(
            [
                nginx_binary(),
                "-c",
                str(config),
                "-p",
                str(workdir),
                "-e",
                str(startup_log),
                "-g",
                "daemon off;",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _accepting(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {startup_log.read_text()[-2000:]}")
            time.sleep(0.02)
        yield RunningNginx(f"http://127.0.0.1:{port}", workdir)
    finally:
        proc.terminate()  # fast shutdown: open streams are cut, as on a real stop
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Directive:
    """One nginx directive: ``name args...;`` or ``name args... { block }``."""

    name: str
    args: list[str]
    block: list[Directive] | None = None

    def children(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def child(self, name: str) -> Directive:
        found = self.children(name)
        if len(found) != 1:
            raise KeyError(f"{self.name} {' '.join(self.args)}: {len(found)} × {name}")
        return found[0]

    def values(self, name: str) -> list[list[str]]:
        return [d.args for d in self.children(name)]


_TOKEN = re.compile(r"""#[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[{};]|[^\s{};"'#]+""")


def parse_nginx_conf(text: str) -> Directive:
    """The config as a tree under a synthetic ``main`` directive (comments dropped)."""
    root = Directive("main", [], [])
    stack = [root]
    words: list[str] = []
    for token in _TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token in (";", "{"):
            if not words:
                raise ValueError(f"empty directive before {token!r}")
            directive = Directive(words[0], words[1:], [] if token == "{" else None)
            assert stack[-1].block is not None
            stack[-1].block.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            if words or len(stack) == 1:
                raise ValueError("unbalanced '}'")
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    if words or len(stack) != 1:
        raise ValueError("unterminated directive or block")
    return root


def nginx_seconds(value: str) -> float:
    """An nginx time value (``30s``, ``1h``, ``500ms``, bare = seconds) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    if match is None:
        raise ValueError(f"not an nginx time: {value}")
    return int(match.group(1)) * units[match.group(2) or "s"]
