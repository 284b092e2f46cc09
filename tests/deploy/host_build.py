"""deploy/Dockerfile's steps, run on this machine under a scratch root.

No container engine runs here, so :class:`HostBuild` plays the Dockerfile
itself: each stage's ``WORKDIR``, ``COPY`` (from the build context as
.dockerignore trims it), ``ENV`` and ``RUN`` instructions execute for real,
with the image's absolute paths (``/src``, ``/wheels``, ``/opt/pollcast``,
``/etc/pollcast``, ...) moved under ``root``. What needs root on a real system
— creating the service user — is left to the static checks. The result is the
image's filesystem layout and the environment its ``ENTRYPOINT`` runs with.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.dockerfile import Instruction, Stage, copy_sources, exec_form, split_flags

__all__ = ["HostBuild"]

# RUN steps that change the host's users and groups: checked statically instead.
SYSTEM_STEP = re.compile(r"\b(useradd|groupadd|adduser|addgroup)\b")
_ABSOLUTE = re.compile(r"(?<![\w./-])(/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.*-]+)*)")
# Paths that belong to the base image (the interpreter, the shell), not to our layers.
_SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib", "/dev/", "/proc/", "/root/.cache")


class HostBuild:
    """One Dockerfile played into ``root``: stages share that root, as ``--from`` would."""

    def __init__(self, context_root: Path, context: set[str], root: Path) -> None:
        self.context_root = context_root
        self.context = context
        self.root = root
        self.shim = root.parent / "shim"
        self.skipped: list[str] = []
        self.ran: list[str] = []
        # The base image's interpreter is "python" on PATH: the one running these tests.
        self.shim.mkdir(parents=True, exist_ok=True)
        python = self.shim / "python"
        python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        python.chmod(0o755)
        self.env: dict[str, str] = {"PATH": f"{self.shim}{os.pathsep}{os.environ['PATH']}"}
        self.workdir = root

    # -- paths ---------------------------------------------------------------

    def path(self, image_path: str) -> Path:
        """Where an absolute image path lives here."""
        return self.root / image_path.lstrip("/")

    def rewrite(self, text: str) -> str:
        """``text`` with the image's own absolute paths moved under ``root``."""

        def move(match: re.Match[str]) -> str:
            found = match.group(1)
            if found.startswith(_SYSTEM_PREFIXES) or found in ("/bin", "/usr"):
                return found
            return str(self.path(found))

        return _ABSOLUTE.sub(move, text)

    # -- instructions ----------------------------------------------------------

    def run_stage(self, stage: Stage, *, build_env: dict[str, str]) -> None:
        """Play every instruction of ``stage``.

        Args:
            build_env: extra environment for RUN steps only (the builder's pip
                configuration and cache, like a BuildKit cache mount).
        """
        self.workdir = self.root
        for instruction in stage.instructions:
            match instruction.keyword:
                case "WORKDIR":
                    self.workdir = self._resolve(instruction.args)
                    self.workdir.mkdir(parents=True, exist_ok=True)
                case "ENV":
                    self._env(instruction.args)
                case "COPY":
                    self._copy(instruction.args)
                case "RUN":
                    self._run(instruction.args, build_env)
                case _:
                    pass  # metadata: USER, EXPOSE, HEALTHCHECK, ... (checked statically)

    def _resolve(self, image_path: str) -> Path:
        return self.path(image_path) if image_path.startswith("/") else self.workdir / image_path

    def _env(self, args: str) -> None:
        for word in shlex.split(args):
            name, _, value = word.partition("=")
            # Paths first: what $PATH expands to is this machine's, not the image's.
            value = self.rewrite(value)
            self.env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: self.env.get(m.group(1), ""), value)

    def _copy(self, args: str) -> None:
        flags, sources, dest = copy_sources(Instruction("COPY", args))
        if "from" in flags:
            raise NotImplementedError("COPY --from: the stages share one root here")
        target = self._resolve(dest)
        for source in sources:
            files = sorted(
                f for f in self.context if f == source or f.startswith(source.rstrip("/") + "/")
            )
            if not files:
                raise FileNotFoundError(f"COPY {source}: not in the build context")
            for rel in files:
                if rel == source and not (dest.endswith("/") or len(sources) > 1):
                    out = target  # a single file copied to a file name
                elif rel == source:
                    out = target / Path(rel).name
                else:
                    out = target / rel[len(source.rstrip("/")) + 1 :]
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.context_root / rel, out)

    def _run(self, args: str, build_env: dict[str, str]) -> None:
        flags, command = split_flags(args)
        if command.startswith("["):
            argv = exec_form(command)
            command = shlex.join(argv)
        if SYSTEM_STEP.search(command):
            self.skipped.append(command)
            return
        for mount in flags.get("mount", []):
            options = dict(part.partition("=")[::2] for part in mount.split(","))
            # A bind mount from another stage: that stage wrote into this same
            # root, so the files are already where the command looks.
            bind = options.get("type") == "bind" and options.get("from")
            if bind and options["source"] != options["target"]:
                raise NotImplementedError(f"bind mount to another path: {mount}")
        self.ran.append(command)
        result = subprocess.run(
            ["/bin/sh", "-c", self.rewrite(command)],
            cwd=self.workdir,
            env={**build_env, **self.env},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"RUN {command} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )

    def command(self, stage: Stage) -> list[str]:
        """The image's ENTRYPOINT + CMD, with image paths moved under ``root``."""
        entrypoint = stage.last("ENTRYPOINT")
        cmd = stage.last("CMD")
        argv = (exec_form(entrypoint.args) if entrypoint else []) + (
            exec_form(cmd.args) if cmd else []
        )
        return [self.rewrite(a) for a in argv]
