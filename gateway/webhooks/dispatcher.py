"""The delivery loop: claim due deliveries, POST them signed, finish or reschedule.

One attempt (Standard Webhooks, "Delivery"):

* the URL is checked again and its host resolved again; the request goes to
  the checked address (``Host`` and TLS SNI keep the name), so a DNS answer
  that changed since registration cannot point it elsewhere;
* ``POST`` the payload with ``webhook-id`` / ``webhook-timestamp`` /
  ``webhook-signature``; redirects are not followed;
* a 2xx answer within ``timeout_s`` is success; anything else — 3xx, 4xx,
  5xx, a timeout, a refused connection — is retried with exponential
  backoff (:class:`~gateway.webhooks.retry.RetrySchedule`) until the delivery
  is ``max_age_s`` old, then abandoned with a log line. A URL that no longer
  passes the rules is abandoned at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable

import httpx

from gateway.aio import cancel_and_wait, raise_if_cancelled
from gateway.exceptions import BackendError, InvalidWebhook
from gateway.webhooks.model import Delivery
from gateway.webhooks.outbox import Outbox
from gateway.webhooks.retry import RetrySchedule
from gateway.webhooks.signing import signature_headers
from gateway.webhooks.targets import (
    HostUnresolved,
    Resolver,
    UrlPolicy,
    check_url,
    resolve_checked,
    system_resolver,
)

__all__ = ["Dispatcher"]

log = logging.getLogger("pollcast.webhooks")

USER_AGENT = "pollcast-webhooks/1"


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
        http: httpx.AsyncClient,
        resolver: Resolver = system_resolver,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.key = key
        self.policy = policy
        self.schedule = schedule
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.http = http
        self.resolver = resolver
        self.wall = wall
        self.rng = rng or random.Random()
        # A claim outlives the longest attempt by a margin: only a dead node lets one lapse.
        self.lease_s = timeout_s * 2 + 5.0
        self.token = uuid.uuid4().hex  # this node's claim token
        self.delivered = 0
        self.abandoned = 0
        self._free = concurrency  # attempts this node may still start
        self._wake = asyncio.Event()
        self._attempts: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Something was enqueued: look at once instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            raise_if_cancelled()  # the outbox may have swallowed a cancel (gateway/aio.py)
            self._wake.clear()
            claimed: list[Delivery] = []
            if self._free > 0:
                now = self.wall()
                try:
                    claimed = await self.outbox.claim(
                        now, now + self.lease_s, self._free, self.token
                    )
                except BackendError:
                    log.warning("cannot read the webhook outbox; retrying", exc_info=True)
            for delivery in claimed:
                self._free -= 1
                task = asyncio.create_task(self._attempt(delivery))
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

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            await self._deliver(delivery)
        except Exception:
            # Its claim lapses and the delivery is tried again; the loop goes on.
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            error = await self._send(delivery)
        except InvalidWebhook as exc:
            log.warning(
                "webhook delivery %s abandoned: %s",
                delivery.id,
                exc.message,
                extra={"task": delivery.task, "webhook_id": delivery.id},
            )
            await self._finish(delivery, abandoned=True)
            return
        if error is None:
            await self._finish(delivery, abandoned=False)
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
                extra={"task": delivery.task, "webhook_id": delivery.id},
            )
            await self._finish(delivery, abandoned=True)
            return
        log.info(
            "webhook delivery %s failed (%s); attempt %d in %.1f s",
            delivery.id,
            error,
            attempts + 1,
            due - now,
            extra={"task": delivery.task, "webhook_id": delivery.id},
        )
        try:
            await self.outbox.retry(delivery, due, error)
        except BackendError:
            log.warning("could not reschedule webhook delivery %s", delivery.id, exc_info=True)

    async def _finish(self, delivery: Delivery, *, abandoned: bool) -> None:
        if abandoned:
            self.abandoned += 1
        else:
            self.delivered += 1
        try:
            await self.outbox.finish(delivery)
        except BackendError:
            # The claim lapses and the delivery is sent again, same webhook-id.
            log.warning("could not mark webhook delivery %s done", delivery.id, exc_info=True)

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
        url = httpx.URL(delivery.url)
        pinned = url.copy_with(host=addresses[0])
        body = delivery.payload.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            # The name the receiver expects, though we connect to the checked address.
            "host": url.netloc.decode("ascii"),
            **signature_headers(self.key, delivery.id, int(self.wall()), body),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with self.http.stream(
                "POST",
                pinned,
                content=body,
                headers=headers,
                timeout=self.timeout_s,
                follow_redirects=False,
                extensions=extensions,
            ) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return f"no answer within {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            return f"connection failed ({type(exc).__name__})"
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            return f"HTTP {status} (redirects are not followed)"
        return f"HTTP {status}"


def _origin(url: str) -> str:
    """Scheme, host and port only: paths and queries may hold the receiver's tokens."""
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"
