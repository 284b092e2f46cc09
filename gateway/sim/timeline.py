"""The pure model of a simulated task: a timeline of steps, read at an elapsed time.

A task is created with a timeline such as::

    [{"at": 0, "state": "queued", "position": 3},
     {"at": 2, "state": "running", "progress": 10},
     {"at": 6, "state": "succeeded"}]

``at`` is seconds since creation; at elapsed time ``t`` the task is in the
last step whose ``at <= t``. Nothing here reads a clock: callers pass the
elapsed time (and the wall-clock creation time, for rendered timestamps), so
every rendering is a pure function tested without sleeping.
"""

from __future__ import annotations

import bisect
import math
import random
import string
import uuid
from collections.abc import Container, Sequence
from typing import Final

import msgspec

from gateway.core.model import TERMINAL_STATES, State, validate_task_id
from gateway.exceptions import InputError, InvalidTaskKey

__all__ = [
    "DEFAULT_TIMELINE",
    "INT_NATIVE_PROVIDERS",
    "PROVIDERS",
    "SimTask",
    "Step",
    "TaskExists",
    "TaskMoment",
    "TaskSpec",
    "Timeline",
    "UnknownTask",
    "new_task_id",
]

PROVIDERS: Final = ("ailab", "aholo", "tryon", "genpic", "videoproc")
"""The simulated upstreams, each served under ``/{provider}``."""

INT_NATIVE_PROVIDERS: Final = frozenset({"ailab", "aholo", "tryon"})
"""Providers whose native status is an integer; the others use strings."""

MAX_STEPS: Final = 1000


class TaskExists(InputError):
    """A task with that provider and id already exists."""

    status = 409
    code = "task_exists"


class UnknownTask(InputError):
    """No task with that provider and id."""

    status = 404
    code = "unknown_task"


class Step(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of a timeline, in normalized vocabulary.

    ``native`` overrides the provider's native status value for this step
    (e.g. aholo's 1 "waiting" or 8 "preprocessing", which have no normalized
    name of their own). ``result`` replaces the simulator's generated result
    URLs on a ``succeeded`` step.
    """

    at: float
    state: State
    progress: int | None = None
    position: int | None = None
    message: str | None = None
    native: int | str | None = None
    result: tuple[str, ...] | None = None


class TaskSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /_sim/tasks``; ``held`` creates it held (see :meth:`SimTask.held`)."""

    provider: str
    task_id: str | None = None
    timeline: tuple[Step, ...] | None = None
    visible_after_s: float | None = None
    held: bool = False


DEFAULT_TIMELINE: Final = (
    Step(at=0.0, state=State.QUEUED, position=1),
    Step(at=1.0, state=State.RUNNING, progress=50),
    Step(at=2.0, state=State.SUCCEEDED),
)
"""Used when ``POST /_sim/tasks`` names no timeline."""


class Timeline(msgspec.Struct, frozen=True):
    """Validated steps in time order; see :meth:`of`."""

    steps: tuple[Step, ...]
    starts: tuple[float, ...]

    @classmethod
    def of(cls, steps: Sequence[Step], provider: str) -> Timeline:
        """Validate ``steps`` for ``provider``.

        A timeline whose first step starts after 0 s gets an implicit plain
        ``queued`` step at 0 s, so a task always has a state.

        Raises:
            InputError: naming the step (``timeline[i]``) and the rule it breaks.
        """
        if not steps:
            raise InputError("timeline must have at least one step", field="timeline")
        if len(steps) > MAX_STEPS:
            raise InputError(f"timeline has more than {MAX_STEPS} steps", field="timeline")
        previous_at = 0.0
        for index, step in enumerate(steps):
            _check_step(step, index, provider, previous_at)
            if index > 0 and steps[index - 1].state in TERMINAL_STATES:
                raise InputError(
                    f"timeline[{index}] follows the terminal step timeline[{index - 1}] "
                    f"({steps[index - 1].state}); a terminal state is final",
                    field="timeline",
                )
            previous_at = step.at
        full = tuple(steps)
        if full[0].at > 0:
            full = (Step(at=0.0, state=State.QUEUED), *full)
        return cls(steps=full, starts=tuple(step.at for step in full))

    def step_at(self, elapsed_s: float) -> Step:
        """The step in force ``elapsed_s`` seconds after creation."""
        index = bisect.bisect_right(self.starts, elapsed_s) - 1
        return self.steps[max(index, 0)]


def _check_step(step: Step, index: int, provider: str, previous_at: float) -> None:
    where = f"timeline[{index}]"
    if not math.isfinite(step.at) or step.at < 0:
        raise InputError(f"{where}.at must be a finite number >= 0", field=f"{where}.at")
    if step.at < previous_at:
        raise InputError(
            f"{where}.at ({step.at:g}) is earlier than the step before it ({previous_at:g}); "
            "steps must be in time order",
            field=f"{where}.at",
        )
    if step.state is State.UNKNOWN:
        raise InputError(
            f"{where}.state 'unknown' cannot be simulated; use visible_after_s to hide a task",
            field=f"{where}.state",
        )
    if step.progress is not None and not 0 <= step.progress <= 100:
        raise InputError(f"{where}.progress must be 0..100", field=f"{where}.progress")
    if step.position is not None and step.position < 0:
        raise InputError(f"{where}.position must be >= 0", field=f"{where}.position")
    if step.native is not None:
        wants_int = provider in INT_NATIVE_PROVIDERS
        if isinstance(step.native, int) is not wants_int:
            kind = "an integer" if wants_int else "a string"
            raise InputError(
                f"{where}.native must be {kind} for {provider}", field=f"{where}.native"
            )


class SimTask(msgspec.Struct, frozen=True):
    """A task the simulated upstream knows.

    ``created_mono`` is on the simulator's monotonic clock (for elapsed time);
    ``created_wall`` is Unix time (for rendered timestamps). A held task's
    timeline stands still: ``held_since`` is when the current hold began and
    ``held_s`` the time spent in earlier holds, so elapsed time counts only
    the time the task was not held.
    """

    provider: str
    task_id: str
    timeline: Timeline
    created_mono: float
    created_wall: float
    visible_after_s: float = 0.0
    held_s: float = 0.0
    held_since: float | None = None

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.task_id}"

    def elapsed(self, now_mono: float) -> float:
        """Seconds of the timeline gone by at ``now_mono``."""
        until = now_mono if self.held_since is None else self.held_since
        return until - self.created_mono - self.held_s

    def held(self, now_mono: float) -> SimTask:
        """This task with its timeline stopped at ``now_mono`` (already held: unchanged)."""
        if self.held_since is not None:
            return self
        return msgspec.structs.replace(self, held_since=now_mono)

    def released(self, now_mono: float) -> SimTask:
        """This task with its timeline going on from where it was held (not held: unchanged)."""
        if self.held_since is None:
            return self
        held_s = self.held_s + now_mono - self.held_since
        return msgspec.structs.replace(self, held_s=held_s, held_since=None)

    def view(self, now_mono: float) -> TaskMoment | None:
        """What the upstream shows at ``now_mono``; ``None`` while not yet visible."""
        elapsed = self.elapsed(now_mono)
        if elapsed < self.visible_after_s:
            return None
        step = self.timeline.step_at(elapsed)
        return TaskMoment(
            task_id=self.task_id,
            step=step,
            created_wall=self.created_wall,
            step_wall=self.created_wall + self.held_s + step.at,
        )


class TaskMoment(msgspec.Struct, frozen=True):
    """The input of every protocol renderer: one task at one moment.

    ``step_wall`` is the Unix time the current step began (a terminal step's
    ``completed_at``).
    """

    task_id: str
    step: Step
    created_wall: float
    step_wall: float

    @property
    def state(self) -> State:
        return self.step.state


_ALNUM = string.ascii_uppercase + string.digits


def new_task_id(provider: str, rng: random.Random, taken: Container[str]) -> str:
    """A fresh id in the style of ``provider``'s real ids.

    tryon: an integer (``infId`` is a long); aholo and genpic: 12 upper-case
    alphanumerics like ``3FO4K4WBNNYV``; ailab and videoproc: a UUID.
    """
    while True:
        if provider == "tryon":
            candidate = str(rng.randint(1000, 99_999_999))
        elif provider in ("aholo", "genpic"):
            candidate = "".join(rng.choices(_ALNUM, k=12))
        else:
            candidate = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if candidate not in taken:
            return candidate


def check_task_id(provider: str, task_id: str) -> None:
    """Reject ids the upstream could never have issued.

    Raises:
        InvalidTaskKey: e.g. a non-integer tryon id.
    """
    validate_task_id(task_id)
    if provider == "tryon" and not (task_id.isascii() and task_id.isdigit()):
        raise InvalidTaskKey("tryon task ids (infId) are integers", field="task_id")
