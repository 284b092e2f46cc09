"""The order the suite is collected in on xdist workers, so that the parallel pass
ends with every worker busy.

``--dist worksteal`` hands each worker one contiguous share of the collection,
then moves tests from the end of the longest queue to whoever runs dry. In
plain collection order one share holds the cluster tests and another the unit
tests, and the pass ends waiting on one worker's 20-second timelines. Here the
collection is dealt out instead: the tests against live servers (seconds each)
round-robin over the shares first, then the unit and contract tests
(milliseconds each), so every share starts with its part of the slow tests and
ends with quick ones, which are the ones stolen.

A module whose tests share a module-scoped fixture (a built image, a venv, a
server) is dealt as one unit and keeps its order, so the fixture is built once.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

import pytest

__all__ = ["deal"]

QUICK_TIERS = ("tests/unit/", "tests/contract/")
# Module-scoped, but made for every module anyway and free to make.
_CHEAP_MODULE_FIXTURES = {"anyio_backend"}


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        defs and defs[-1].scope in ("module", "package") and name not in _CHEAP_MODULE_FIXTURES
        for name, defs in info.name2fixturedefs.items()
    )


def _units(items: Sequence[pytest.Item]) -> list[list[pytest.Item]]:
    """One unit per test, or per module for a module that shares a fixture."""
    units: list[list[pytest.Item]] = []
    for _, tests in groupby(items, key=_module):
        module = list(tests)
        if any(_shares_a_module_fixture(item) for item in module):
            units.append(module)
        else:
            units.extend([item] for item in module)
    return units


def deal(items: Sequence[pytest.Item], shares: int) -> list[pytest.Item]:
    """``items`` as ``shares`` equal runs, each its slow tests first, then its quick ones."""
    if shares < 2:
        return list(items)
    units = _units(items)
    slow = [unit for unit in units if not _module(unit[0]).startswith(QUICK_TIERS)]
    quick = [unit for unit in units if _module(unit[0]).startswith(QUICK_TIERS)]
    bins: list[list[pytest.Item]] = [[] for _ in range(shares)]
    for tier in (slow, quick):
        for unit in tier:
            # The emptiest share next, so that the shares stay equal in length.
            min(bins, key=len).extend(unit)
    return [item for share in bins for item in share]
