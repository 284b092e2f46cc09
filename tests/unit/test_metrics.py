"""The ``pollcast_tasks`` gauge: one count per task, under its last committed state."""

from __future__ import annotations

from gateway.metrics import Metrics


def _count(metrics: Metrics, provider: str, state: str) -> float | None:
    return metrics.registry.get_sample_value(
        "pollcast_tasks", {"provider": provider, "state": state}
    )


def test_tasks_gauge_follows_state_changes_and_ignores_progress() -> None:
    metrics = Metrics()
    metrics.task_state("aholo:a", "queued")
    metrics.task_state("aholo:b", "queued")
    metrics.task_state("aholo:a", "queued")  # a progress event: same state
    assert _count(metrics, "aholo", "queued") == 2
    metrics.task_state("aholo:a", "running")
    metrics.task_state("aholo:a", "running")
    assert (_count(metrics, "aholo", "queued"), _count(metrics, "aholo", "running")) == (1, 1)
    metrics.task_state("aholo:a", "queued")  # back again
    assert (_count(metrics, "aholo", "queued"), _count(metrics, "aholo", "running")) == (2, 0)
    metrics.task_state("aholo:a", None)  # terminal: forgotten
    metrics.task_state("aholo:a", None)
    assert _count(metrics, "aholo", "queued") == 1
