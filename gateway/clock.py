"""The one clock of a gateway node: wall time and monotonic time, both injected.

:class:`~gateway.service.Gateway` takes a :class:`Clock` and hands the same
one to its poller, its webhooks and its feeds; a test passes a fake one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SYSTEM_CLOCK", "Clock"]


@dataclass(frozen=True, slots=True)
class Clock:
    """``wall()``: epoch seconds (timestamps, deadlines); ``monotonic()``: for intervals."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


SYSTEM_CLOCK = Clock()
