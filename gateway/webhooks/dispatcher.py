"""The delivery loop: claim due deliveries, POST them signed, finish or reschedule.

One attempt (Standard Webhooks, "Delivery"):

* the URL is checked again and its host resolved again; the request goes to
  the checked address (``Host`` and TLS SNI keep the name), so a DNS answer
  that changed since registration cannot point it elsewhere
  (:mod:`~gateway.webhooks.sender`);
* ``POST`` the payload with ``webhook-id`` / ``webhook-timestamp`` /
  ``webhook-signature``; redirects are not followed;
* a 2xx answer within ``timeout_s`` is success; anything else — 3xx, 4xx,
  5xx, a timeout, a refused connection — is retried with exponential
  backoff (:class:`~gateway.webhooks.retry.RetrySchedule`) until the delivery
  is ``max_age_s`` old, then abandoned with a log line. A URL that no longer
  passes the rules is abandoned at once.

Claims are fenced: every claim gets a token of its own, and the outbox lets
only the current token finish or reschedule a delivery. An attempt that
outlived its lease (the node was paused, say) and whose delivery another
attempt has since claimed is told so, counts a lost claim, and leaves the
delivery to that attempt.

The loop never dies: a failing store (or a bug) is logged once per streak,
counted, and asked again after a growing delay
(:class:`~gateway.webhooks.retry.Backoff`); a finish or reschedule that the
store refuses to write is retried while the claim's lease lasts, so a
delivered event is not sent a second time because the store hiccupped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.aio import cancel_and_wait, raise_if_cancelled
from gateway.exceptions import BackendError, InvalidWebhook
from gateway.webhooks.model import Delivery
from gateway.webhooks.outbox import Outbox
from gateway.webhooks.retry import Backoff, RetrySchedule
from gateway.webhooks.sender import AiohttpWebhookSender, Attempt, DeliveryFailed, WebhookSender
from gateway.webhooks.signing import signature_headers
from gateway.webhooks.targets import (
    HostUnresolved,
    Resolver,
    UrlPolicy,
    check_url,
    resolve_checked,
    system_resolver,
)

if TYPE_CHECKING:
    from gateway.metrics import Metrics

__all__ = ["Dispatcher", "Sleep"]

log = logging.getLogger("pollcast.webhooks")

USER_AGENT = "pollcast-webhooks/1"

Sleep = Callable[[float], Awaitable[None]]


class Dispatcher:
    """Sends this node's share of the outbox; many nodes may run one on the same outbox."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        key: bytes,
        policy: UrlPolicy,
        schedule: RetrySchedule,
        timeout_s: float,
        poll_s: float,
        concurrency: int,
        sender: WebhookSender | None = None,
        resolver: Resolver = system_resolver,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.outbox = outbox
        self.key = key
        self.policy = policy
        self.schedule = schedule
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.sender: WebhookSender = sender or AiohttpWebhookSender(timeout_s=timeout_s)
        self.resolver = resolver
        self.wall = wall
        self.rng = rng or random.Random()
        self.backoff = backoff or Backoff(base_s=poll_s, max_s=max(30.0, poll_s))
        self.sleep = sleep
        self.metrics = metrics
        # A claim outlives the longest attempt by a margin: only a dead (or
        # paused) node lets one lapse, and there is time left to record the outcome.
        self.lease_s = timeout_s * 2 + 5.0
        self.node = uuid.uuid4().hex[:12]
        self._claims = itertools.count(1)
        self.delivered = 0
        self.abandoned = 0
        self.lost_claims = 0  # finish/retry refused: another attempt holds the delivery now
        self.store_failures = 0  # outbox calls that failed
        self._free = concurrency  # attempts this node may still start
        self._wake = asyncio.Event()
        self._attempts: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Something was enqueued: look at once instead of at the next poll."""
        self._wake.set()

    def claim_token(self) -> str:
        """A token for one claim: never reused, so a stale attempt cannot pass for a new one."""
        return f"{self.node}.{next(self._claims)}"

    async def run(self) -> None:
        failures = 0  # the current streak of failed claims
        while True:
            raise_if_cancelled()  # the outbox may have swallowed a cancel (gateway/aio.py)
            self._wake.clear()
            claimed: list[Delivery] = []
            lease_until = 0.0
            if self._free > 0:
                now = self.wall()
                lease_until = now + self.lease_s
                try:
                    claimed = await self.outbox.claim(
                        now, lease_until, self._free, self.claim_token()
                    )
                except Exception as exc:  # the loop must outlive its store (and its bugs)
                    failures += 1
                    self._store_failed()
                    if failures == 1:
                        log.warning(
                            "cannot read the webhook outbox (%s); retrying with backoff",
                            _describe(exc),
                            exc_info=not isinstance(exc, BackendError),
                        )
                    await self.sleep(self.backoff.delay(failures, self.rng))
                    continue
                if failures:
                    log.info("webhook outbox readable again after %d failed attempt(s)", failures)
                    failures = 0
            for delivery in claimed:
                self._free -= 1
                task = asyncio.create_task(self._attempt(delivery, lease_until))
                self._attempts.add(task)
                task.add_done_callback(self._done)
            if claimed and self._free > 0:
                continue  # there may be more due right now
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
            # a cancel that races with the wake-up, and close() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._attempts.discard(task)
        self._free += 1
        self._wake.set()

    async def close(self) -> None:
        """Cancel attempts in flight; their claims lapse and another attempt follows."""
        await cancel_and_wait(*self._attempts)

    def _store_failed(self) -> None:
        self.store_failures += 1
        if self.metrics is not None:
            self.metrics.backend_errors.inc()

    async def _attempt(self, delivery: Delivery, lease_until: float) -> None:
        try:
            await self._deliver(delivery, lease_until)
        except Exception:
            # Its claim lapses and the delivery is tried again; the loop goes on.
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)

    async def _deliver(self, delivery: Delivery, lease_until: float) -> None:
        extra = {"task": delivery.task, "webhook_id": delivery.id}
        if self.wall() + self.timeout_s > lease_until:
            # Paused between claim and send: the lease no longer covers an
            # attempt, and another node may be sending it already.
            log.info("webhook delivery %s: claim too old to send; left to the next", delivery.id)
            return
        try:
            error = await self._send(delivery)
        except InvalidWebhook as exc:
            log.warning("webhook delivery %s abandoned: %s", delivery.id, exc.message, extra=extra)
            await self._finish(delivery, lease_until, abandoned=True)
            return
        if error is None:
            await self._finish(delivery, lease_until, abandoned=False)
            return
        attempts = delivery.attempts + 1
        now = self.wall()
        due = self.schedule.next_attempt(
            created_at=delivery.created_at, attempts=attempts, now=now, rng=self.rng
        )
        if due is None:
            log.warning(
                "webhook delivery %s to %s abandoned after %d attempts over %.0f s; last: %s",
                delivery.id,
                _origin(delivery.url),
                attempts,
                now - delivery.created_at,
                error,
                extra=extra,
            )
            await self._finish(delivery, lease_until, abandoned=True)
            return
        log.info(
            "webhook delivery %s failed (%s); attempt %d in %.1f s",
            delivery.id,
            error,
            attempts + 1,
            due - now,
            extra=extra,
        )
        await self._record(
            delivery, lease_until, "reschedule", lambda: self.outbox.retry(delivery, due, error)
        )

    async def _finish(self, delivery: Delivery, lease_until: float, *, abandoned: bool) -> None:
        if abandoned:
            self.abandoned += 1
        else:
            self.delivered += 1
        await self._record(delivery, lease_until, "mark done", lambda: self.outbox.finish(delivery))

    async def _record(
        self,
        delivery: Delivery,
        lease_until: float,
        what: str,
        write: Callable[[], Awaitable[bool]],
    ) -> None:
        """Store an attempt's outcome; retried while the claim's lease lasts."""
        failures = 0
        while True:
            try:
                held = await write()
            except BackendError as exc:
                failures += 1
                self._store_failed()
                delay = self.backoff.delay(failures, self.rng)
                if self.wall() + delay >= lease_until:
                    log.warning(
                        "could not %s webhook delivery %s (%s); its claim lapses and it is "
                        "tried again with the same webhook-id",
                        what,
                        delivery.id,
                        _describe(exc),
                    )
                    return
                if failures == 1:
                    log.warning(
                        "could not %s webhook delivery %s (%s); retrying",
                        what,
                        delivery.id,
                        _describe(exc),
                    )
                await self.sleep(delay)
                continue
            if not held:
                self.lost_claims += 1
                if self.metrics is not None:
                    self.metrics.webhook_claims_lost.inc()
                log.warning(
                    "webhook delivery %s was claimed again while this attempt ran "
                    "(its lease ran out); not recorded here: %s",
                    delivery.id,
                    what,
                )
            return

    async def _send(self, delivery: Delivery) -> str | None:
        """One attempt: ``None`` on success, else why it failed.

        Raises:
            InvalidWebhook: the URL is refused by the rules now (do not retry).
        """
        target = check_url(delivery.url, self.policy)
        try:
            addresses = await resolve_checked(target, self.policy, self.resolver)
        except HostUnresolved as exc:
            return exc.message
        body = delivery.payload.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signature_headers(self.key, delivery.id, int(self.wall()), body),
        }
        try:
            status = await self.sender.post(Attempt(target, addresses, body, headers))
        except DeliveryFailed as exc:
            return exc.message
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            return f"HTTP {status} (redirects are not followed)"
        return f"HTTP {status}"


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BackendError) else type(exc).__name__


def _origin(url: str) -> str:
    """Scheme, host and port only: paths and queries may hold the receiver's tokens."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"
