"""``npm ci`` of a folder's test-only Node dependencies, once across parallel test processes."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

__all__ = ["ensure_node_modules"]


def ensure_node_modules(directory: Path) -> None:
    """``npm ci`` in ``directory`` when ``node_modules`` is missing or older than the lock.

    Under pytest-xdist several workers may get here at once, and ``npm ci``
    first deletes ``node_modules``: an exclusive lock on a file beside it makes
    the others wait for the first install and then find it fresh.
    """
    installed = directory / "node_modules" / ".package-lock.json"
    lock = directory / "package-lock.json"
    with (directory / ".npm-ci.lock").open("a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime:
            return
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed (nodejs: scripts/ensure-system-deps.sh installs it)"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=directory,
            check=True,
            timeout=300,
        )
