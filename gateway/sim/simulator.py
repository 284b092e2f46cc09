"""The simulated upstreams' shared state: tasks, request statistics, tryon coins, faults.

One :class:`Simulator` backs all five protocols. It is plain in-memory state
driven by an injected monotonic clock, wall clock and random source; the
protocol renderers read tasks through :meth:`Simulator.view`.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from gateway.exceptions import InputError
from gateway.sim.credentials import SimConfig
from gateway.sim.faults import FaultBoard, FaultSpec
from gateway.sim.timeline import (
    DEFAULT_TIMELINE,
    PROVIDERS,
    SimTask,
    TaskExists,
    TaskMoment,
    TaskSpec,
    Timeline,
    UnknownTask,
    check_task_id,
    new_task_id,
)

__all__ = ["TRYON_CALL_COST_DIMES", "Simulator"]

TRYON_CALL_COST_DIMES = 1
"""tryon charges 0.1 coins per ``get_result`` call (its doc: "each call will
consume 0.1 coins"); balances are kept in tenths so they never drift."""
REQUEST_TIMES_KEPT = 10_000  # request times kept per provider (stats)


def _check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        raise InputError(
            f"unknown provider {provider[:40]!r}; expected one of {', '.join(PROVIDERS)}",
            field="provider",
        )


class Simulator:
    """All state of the simulated upstreams.

    Args:
        config: credentials and knobs.
        clock: monotonic seconds (timelines, fault durations).
        wall_clock: Unix seconds (rendered timestamps, aholo's ``timestamp`` check).
        rng: random source for generated ids and fault dice.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random(self.config.seed)
        self.faults = FaultBoard()
        self._tasks: dict[tuple[str, str], SimTask] = {}
        self._requests: Counter[str] = Counter()
        self._task_queries: Counter[str] = Counter()
        self._faults_hit: Counter[str] = Counter()
        # When the latest status requests arrived (the simulator's clock), per provider.
        self._times: dict[str, deque[float]] = {}
        self._tryon_balance_dimes = round(self.config.tryon_balance * 10)
        self._tryon_spent_dimes = 0

    # -- tasks -------------------------------------------------------------

    def create_task(self, spec: TaskSpec) -> SimTask:
        """Register a task; its timeline starts now (or, held, at its release).

        Raises:
            InputError: unknown provider, bad id, bad timeline (400/422).
            TaskExists: the id is taken (409).
        """
        _check_provider(spec.provider)
        timeline = Timeline.of(spec.timeline or DEFAULT_TIMELINE, spec.provider)
        visible_after_s = spec.visible_after_s
        if visible_after_s is None:
            visible_after_s = self.config.aholo_visible_after_s if spec.provider == "aholo" else 0.0
        if not visible_after_s >= 0:
            raise InputError("visible_after_s must be >= 0", field="visible_after_s")
        if spec.task_id is None:
            taken = {task_id for provider, task_id in self._tasks if provider == spec.provider}
            task_id = new_task_id(spec.provider, self.rng, taken)
        else:
            task_id = spec.task_id
            check_task_id(spec.provider, task_id)
            if (spec.provider, task_id) in self._tasks:
                raise TaskExists(f"task {spec.provider}:{task_id} already exists", field="task_id")
        now = self.clock()
        task = SimTask(
            provider=spec.provider,
            task_id=task_id,
            timeline=timeline,
            created_mono=now,
            created_wall=self.wall_clock(),
            visible_after_s=visible_after_s,
            held_since=now if spec.held else None,
        )
        self._tasks[(spec.provider, task_id)] = task
        return task

    def hold(self, provider: str, task_id: str) -> SimTask:
        """Stop a task's timeline where it is, until :meth:`release`.

        Raises:
            UnknownTask: no such task (404).
        """
        return self._update(provider, task_id, lambda task: task.held(self.clock()))

    def release(self, provider: str, task_id: str) -> SimTask:
        """Let a held task's timeline go on from where it stopped.

        Raises:
            UnknownTask: no such task (404).
        """
        return self._update(provider, task_id, lambda task: task.released(self.clock()))

    def _update(self, provider: str, task_id: str, change: Callable[[SimTask], SimTask]) -> SimTask:
        task = self._tasks.get((provider, task_id))
        if task is None:
            raise UnknownTask(f"no task {provider}:{task_id}", field="task_id")
        self._tasks[(provider, task_id)] = task = change(task)
        return task

    def view(self, provider: str, task_id: str) -> TaskMoment | None:
        """The task as the upstream shows it now; ``None`` if unknown or not yet visible."""
        task = self._tasks.get((provider, task_id))
        return None if task is None else task.view(self.clock())

    # -- accounting --------------------------------------------------------

    def record_request(self, provider: str) -> None:
        self._requests[provider] += 1
        self._times.setdefault(provider, deque(maxlen=REQUEST_TIMES_KEPT)).append(self.clock())

    def record_task_queries(self, provider: str, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._task_queries[f"{provider}:{task_id}"] += 1

    def record_fault(self, provider: str) -> None:
        self._faults_hit[provider] += 1

    def charge_tryon(self) -> bool:
        """Take one call's cost from the tryon balance; ``False`` (and no charge) if short."""
        if self._tryon_balance_dimes < TRYON_CALL_COST_DIMES:
            return False
        self._tryon_balance_dimes -= TRYON_CALL_COST_DIMES
        self._tryon_spent_dimes += TRYON_CALL_COST_DIMES
        return True

    def set_tryon_balance(self, coins: float) -> None:
        if not coins >= 0:
            raise InputError("balance must be >= 0", field="tryon")
        self._tryon_balance_dimes = round(coins * 10)

    # -- faults ------------------------------------------------------------

    def arm_fault(self, spec: FaultSpec) -> None:
        """Raises: InputError for an unknown provider or out-of-range numbers."""
        _check_provider(spec.provider)
        spec.check()
        self.faults.arm(spec, self.clock())

    def pick_fault(self, provider: str) -> FaultSpec | None:
        return self.faults.pick(provider, self.clock(), self.rng)

    # -- admin -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats``.

        ``requests`` counts status requests per provider: one per HTTP
        request that reached a protocol endpoint, including requests refused
        (bad credentials, unknown ids) and requests answered by an injected
        fault. ``tasks`` counts, per ``provider:task_id``, the status requests
        naming that id (a batch request counts once for each id in it),
        whatever the outcome. ``faults`` counts requests answered by a fault.
        ``times`` lists when the latest requests per provider arrived (seconds
        on the simulator's monotonic clock, at most the last 10,000).
        """
        return {
            "requests": dict(self._requests),
            "tasks": dict(self._task_queries),
            "faults": dict(self._faults_hit),
            "times": {provider: list(times) for provider, times in self._times.items()},
            "coins_spent": {"tryon": self._tryon_spent_dimes / 10},
            "balance": {"tryon": self._tryon_balance_dimes / 10},
        }

    def reset(self) -> None:
        """Forget tasks, faults and statistics; refill the tryon balance."""
        self._tasks.clear()
        self.faults.clear()
        self._requests.clear()
        self._task_queries.clear()
        self._faults_hit.clear()
        self._times.clear()
        self._tryon_balance_dimes = round(self.config.tryon_balance * 10)
        self._tryon_spent_dimes = 0
