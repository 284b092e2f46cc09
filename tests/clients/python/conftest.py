"""Helpers for the Python client's tests (fixtures `sim`, `client`: tests/conftest.py)."""

from __future__ import annotations

import uuid
from typing import Any

from tests.integration.conftest import (  # http_path, pytest_generate_tests: both HTTP paths
    create_sim_task,
    http_path,
    pytest_generate_tests,
    release_sim_tasks,
    until_watched,
)

__all__ = [
    "create_sim_task",
    "http_path",
    "pytest_generate_tests",
    "release_sim_tasks",
    "short_id",
    "stepped",
    "until_watched",
]


def stepped(n: int = 6, gap: float = 0.4, start: float = 0.0) -> list[dict[str, Any]]:
    """queued, then running 10 %, 20 %, … every ``gap`` seconds, then succeeded."""
    steps: list[dict[str, Any]] = [{"at": 0, "state": "queued", "position": 2}]
    steps += [
        {"at": start + (i + 1) * gap, "state": "running", "progress": 10 * (i + 1)}
        for i in range(n)
    ]
    steps.append({"at": start + (n + 1) * gap, "state": "succeeded"})
    return steps


def short_id(prefix: str) -> str:
    """A task id short enough to show whole in a terminal line."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
