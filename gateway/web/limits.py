"""Abuse limits: what one principal or one address may hold or do.

* :class:`RateLimit` — registrations (``POST /v1/tasks``) per principal: a
  token bucket each, refused requests cost nothing, the refusal says when
  the next one fits (429 + ``Retry-After``).
* :class:`WatchQuota` — tasks a principal has registered and that are still
  being watched (each one costs upstream calls until it ends).
* :class:`AddressConnections` — open TCP connections per client address,
  counted by the HTTP protocol guard (gateway/web/transport.py).

All of it is in memory and per node: behind a load balancer with N nodes a
principal gets up to N times each limit. That bounds what one node spends
and holds, which is the point; a global quota would need the shared backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, cast

from litestar.datastructures import State

from gateway.config import Config
from gateway.core.policy import TokenBucket
from gateway.exceptions import LimitExceeded

__all__ = [
    "AddressConnections",
    "Closable",
    "Limits",
    "RateLimit",
    "RefundingBucket",
    "WatchQuota",
    "limits_of",
]

# A watched task frees its slot when it ends or is unwatched, which nobody can
# predict; a minute is a polite hint rather than a promise.
WATCH_QUOTA_RETRY_S = 60.0


class RefundingBucket(TokenBucket):
    """A :class:`TokenBucket` whose refused requests cost nothing.

    ``reserve`` books a slot even when it has to wait; a request that is
    refused instead must give it back, or a client hammering a limit would
    push its own next slot ever further away and ``Retry-After`` would lie.
    """

    def try_take(self, now: float) -> float:
        """Take a token if one is there (0.0); else take none and say how long until one is."""
        wait = self.reserve(now)
        if wait > 0:
            self._tokens += 1.0
        return wait

    def idle(self, now: float) -> bool:
        """Full again: forgetting this bucket changes nothing."""
        if self._stamp is None:
            return True
        return self._tokens + (now - self._stamp) * self.rate >= self.capacity


class RateLimit:
    """A :class:`RefundingBucket` per principal, created on first use."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        what: str,
        clock: Callable[[], float] = time.monotonic,
        max_principals: int = 10_000,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.what = what
        self.clock = clock
        self.max_principals = max_principals
        self._buckets: dict[str, RefundingBucket] = {}

    def check(self, who: str) -> None:
        """Count one request of ``who``.

        Raises:
            LimitExceeded: with the seconds until the next request fits.
        """
        now = self.clock()
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= self.max_principals:
                self._forget_idle(now)
            bucket = self._buckets[who] = RefundingBucket(self.rate, burst=self.burst)
        wait = bucket.try_take(now)
        if wait > 0:
            raise LimitExceeded(
                f"too many {self.what}: at most {self.rate:g}/s (bursts of {self.burst:g})",
                retry_after_s=wait,
            )

    def _forget_idle(self, now: float) -> None:
        for who in [w for w, b in self._buckets.items() if b.idle(now)]:
            del self._buckets[who]


class WatchQuota:
    """How many registered, still-watched tasks each principal holds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, set[str]] = {}

    def admit(self, who: str, task: str, still_watched: Callable[[str], bool]) -> None:
        """Count ``task`` against ``who`` (again registering one it holds is free).

        ``still_watched`` tells which held tasks still count: ended and
        unwatched ones are dropped here, lazily, rather than tracked as they end.

        Raises:
            LimitExceeded: ``who`` already holds ``limit`` watched tasks.
        """
        held = self._held.setdefault(who, set())
        if task in held:
            return
        if len(held) >= self.limit:
            held.intersection_update([t for t in held if still_watched(t)])
        if len(held) >= self.limit:
            raise LimitExceeded(
                f"this principal already watches {self.limit} tasks; "
                "unwatch some or wait for them to end",
                field="task",
                retry_after_s=WATCH_QUOTA_RETRY_S,
            )
        held.add(task)

    def release(self, task: str) -> None:
        for held in self._held.values():
            held.discard(task)

    def held(self, who: str) -> int:
        return len(self._held.get(who, ()))


class Closable(Protocol):
    def is_closing(self) -> bool: ...


class AddressConnections:
    """Open connections per client address; closed ones are pruned lazily.

    Connections are held by their transports: a connection upgraded to a
    WebSocket leaves the HTTP protocol that admitted it, so "open" means
    "its transport is not closing", checked when the address next connects.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, set[Closable]] = {}
        self._admitted = 0

    def admit(self, address: str, transport: Closable) -> bool:
        """Count a new connection from ``address``; ``False`` if it is over the limit."""
        self._admitted += 1
        if self._admitted % 1024 == 0:
            self._sweep()
        held = self._open.setdefault(address, set())
        if len(held) >= self.limit:
            held.difference_update([t for t in held if t.is_closing()])
        if len(held) >= self.limit:
            return False
        held.add(transport)
        return True

    def release(self, address: str, transport: Closable) -> None:
        held = self._open.get(address)
        if held is not None:
            held.discard(transport)
            if not held:
                del self._open[address]

    def count(self, address: str) -> int:
        return len(self._open.get(address, ()))

    def _sweep(self) -> None:
        for address, held in list(self._open.items()):
            held.difference_update([t for t in held if t.is_closing()])
            if not held:
                del self._open[address]


class Limits:
    """The per-principal limits of one app, built from the config."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        auth = config.auth
        self.registrations = RateLimit(
            auth.registrations_per_s,
            auth.registration_burst,
            what="task registrations",
            clock=clock,
        )
        self.watched = WatchQuota(auth.max_watched_tasks)


def limits_of(state: State) -> Limits:
    return cast(Limits, state.limits)
