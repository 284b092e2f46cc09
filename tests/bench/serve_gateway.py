"""``pollcast serve`` for the benchmark, plus two memory probes on signals.

Exactly what ``pollcast serve --config FILE`` runs, except that SIGUSR1 runs
``gc.collect()`` and SIGUSR2 runs glibc's ``malloc_trim(0)``: the benchmark
uses them to tell memory still referenced from memory merely not yet handed
back to the OS after connection churn.

For profiling only (never in the reported runs): ``POLLCAST_BENCH_GC=off`` or
``threshold:A,B,C`` changes the cyclic collector, and
``POLLCAST_BENCH_TRACEMALLOC=PATH`` traces allocations and dumps a snapshot
to ``PATH.<n>`` on every SIGUSR1.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import tracemalloc
from types import FrameType

from gateway.cli import main

_SNAPSHOTS = os.environ.get("POLLCAST_BENCH_TRACEMALLOC", "")
_taken = 0


def _collect(_sig: int, _frame: FrameType | None) -> None:
    global _taken
    gc.collect()
    if _SNAPSHOTS:  # profiling only: where the memory of open connections goes
        _taken += 1
        tracemalloc.take_snapshot().dump(f"{_SNAPSHOTS}.{_taken}")


def _trim(_sig: int, _frame: FrameType | None) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _gc_experiment(spec: str) -> None:
    """``POLLCAST_BENCH_GC`` (profiling only; the reported figures run with the defaults):
    ``off`` disables the cyclic collector, ``threshold:A,B,C`` sets its thresholds."""
    if spec == "off":
        gc.disable()
    elif spec.startswith("threshold:"):
        a, b, c = (int(x) for x in spec.split(":", 1)[1].split(","))
        gc.set_threshold(a, b, c)


if __name__ == "__main__":
    _gc_experiment(os.environ.get("POLLCAST_BENCH_GC", ""))
    if _SNAPSHOTS:
        tracemalloc.start(12)
    signal.signal(signal.SIGUSR1, _collect)
    signal.signal(signal.SIGUSR2, _trim)
    sys.exit(main(["serve", "--config", sys.argv[1]]))
