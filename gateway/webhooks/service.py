"""Webhooks as the gateway sees them: register, queue committed events, deliver.

The poller calls :meth:`Webhooks.committed` after the hub stored a batch of
events; whichever node stored them queues the deliveries, because the
registrations live in the shared outbox, not in one node's memory.
:meth:`Webhooks.catch_up` queues whatever was committed but never queued — at
start (a node that died between the two steps) and, by :meth:`Webhooks.keep_up`,
whenever queueing failed (the store was down), with backoff until it works;
the marks make those replays harmless.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.aio import cancel_and_wait
from gateway.core.model import Event
from gateway.exceptions import BackendError
from gateway.hub.base import Hub
from gateway.webhooks.dispatcher import Dispatcher, Sleep
from gateway.webhooks.model import Registration, WebhookTarget, deliveries_for
from gateway.webhooks.outbox import Outbox, SqliteOutbox
from gateway.webhooks.retry import RetrySchedule
from gateway.webhooks.sender import AiohttpWebhookSender, WebhookSender
from gateway.webhooks.settings import WebhooksConfig
from gateway.webhooks.signing import decode_secret
from gateway.webhooks.targets import (
    Resolver,
    UrlPolicy,
    check_url,
    resolve_checked,
    system_resolver,
)

if TYPE_CHECKING:
    from gateway.metrics import Metrics

__all__ = ["Webhooks", "outbox_for"]

log = logging.getLogger("pollcast.webhooks")


def outbox_for(
    backend_kind: str,
    *,
    path: str,
    url: str,
    prefix: str,
    max_connections: int = 1000,
    cluster: bool = False,
) -> Outbox:
    """The outbox that lives where the hub's state does (``backend.kind``)."""
    if backend_kind == "redis":
        from gateway.webhooks.redis_outbox import RedisOutbox

        return RedisOutbox(url, prefix, max_connections=max_connections, cluster=cluster)
    return SqliteOutbox(path)


class Webhooks:
    def __init__(
        self,
        config: WebhooksConfig,
        outbox: Outbox,
        hub: Hub,
        *,
        resolver: Resolver = system_resolver,
        sender: WebhookSender | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not config.secret:
            raise ValueError("webhooks need a secret")
        self.config = config
        self.outbox = outbox
        self.hub = hub
        self.policy = UrlPolicy(tuple(config.allowed_hosts), config.allow_private)
        self.resolver = resolver
        self.wall = wall
        # aiohttp, like the gateway's other outbound HTTP; a connection per attempt.
        self.sender = sender or AiohttpWebhookSender(timeout_s=config.timeout_s)
        self.dispatcher = Dispatcher(
            outbox,
            key=decode_secret(config.secret),
            policy=self.policy,
            schedule=RetrySchedule(config.retry_base_s, config.retry_max_s, config.max_age_s),
            timeout_s=config.timeout_s,
            poll_s=config.poll_s,
            concurrency=config.concurrency,
            sender=self.sender,
            resolver=resolver,
            wall=wall,
            rng=rng,
            metrics=metrics,
            sleep=sleep,
        )
        self._runners: list[asyncio.Task[None]] = []
        self._behind = asyncio.Event()  # a commit was not queued: catch up

    async def start(self) -> None:
        await self.outbox.start()
        self._behind.set()  # what a previous run committed but never queued
        self._runners = [
            asyncio.create_task(self.dispatcher.run(), name="pollcast-webhooks"),
            asyncio.create_task(self.keep_up(), name="pollcast-webhooks-catch-up"),
        ]

    async def close(self) -> None:
        await cancel_and_wait(*self._runners)
        self._runners = []
        await self.dispatcher.close()
        await self.outbox.close()

    async def check(self, target: WebhookTarget) -> None:
        """Whether the gateway will call ``target.url`` (its host is resolved and checked).

        Raises:
            InvalidWebhook: the URL breaks the rules (scheme, allow-list, address).
        """
        await resolve_checked(check_url(target.url, self.policy), self.policy, self.resolver)

    async def register(self, task: str, target: WebhookTarget) -> None:
        """Deliver ``task``'s future events that ``target`` wants (its final one, if it has
        ended). The target must have passed :meth:`check`."""
        current = await self.hub.snapshot(task)
        if current is None:
            mark = 0
        elif current.terminal:
            mark = current.seq - 1  # the final event is still owed to the new target
        else:
            mark = current.seq
        await self.outbox.register(task, target, mark)
        # Events committed while we registered found no target: queue them now.
        await self.catch_up([task])

    async def unregister(self, task: str) -> bool:
        return await self.outbox.unregister(task)

    async def committed(self, events: Sequence[Event]) -> None:
        """The hub stored ``events``: queue what registered targets want. Never raises."""
        by_task: dict[str, list[Event]] = {}
        for event in events:
            by_task.setdefault(event.task, []).append(event)
        try:
            registrations = await self.outbox.registrations(list(by_task))
            for task, registration in registrations.items():
                await self._enqueue(task, registration, by_task[task])
        except Exception as exc:
            # Not lost: keep_up() runs catch_up(), which queues what the marks
            # lack. Raising here would fail the poll that committed these events.
            log.warning(
                "could not queue webhook deliveries for %d task(s) (%s); catching up later",
                len(by_task),
                exc,
                exc_info=not isinstance(exc, BackendError),
            )
            self._behind.set()

    async def keep_up(self) -> None:
        """Run :meth:`catch_up` whenever queueing failed, backing off while it fails too."""
        dispatcher = self.dispatcher
        failures = 0
        while True:
            await self._behind.wait()
            self._behind.clear()
            try:
                await self.catch_up()
            except Exception as exc:  # this loop must outlive the store, like the dispatcher
                failures += 1
                if failures == 1:
                    log.warning(
                        "webhook catch-up failed (%s); retrying with backoff",
                        exc,
                        exc_info=not isinstance(exc, BackendError),
                    )
                self._behind.set()
                await dispatcher.sleep(dispatcher.backoff.delay(failures, dispatcher.rng))
                continue
            if failures:
                log.info("webhook catch-up done after %d failed attempt(s)", failures)
                failures = 0

    async def catch_up(self, tasks: Sequence[str] | None = None) -> None:
        """Queue the stored events of registered tasks that lie above their marks."""
        for task, registration in (await self.outbox.registrations(tasks)).items():
            current = await self.hub.snapshot(task)
            if current is None or current.seq <= registration.mark:
                continue
            missed = await self.hub.history(task, registration.mark)
            events = [enc.event for enc in missed] if missed is not None else [current]
            await self._enqueue(task, registration, events)

    async def _enqueue(self, task: str, registration: Registration, events: list[Event]) -> None:
        fresh = [event for event in events if event.seq > registration.mark]
        if not fresh:
            return
        deliveries = deliveries_for(
            registration.target, fresh, now=self.wall(), epoch=await self.outbox.epoch()
        )
        stored = await self.outbox.enqueue(
            task,
            deliveries,
            max(event.seq for event in fresh),
            done=any(event.terminal for event in fresh),
        )
        if stored:
            self.dispatcher.wake()
