"""What a webhook is: a registered target, and the deliveries owed to it.

A :class:`WebhookTarget` is registered per task (``POST /v1/tasks`` with
``"webhook"``). Every committed event the target wants becomes one
:class:`Delivery`, whose id — ``{task}:{seq}`` — is the Standard Webhooks
``webhook-id``: the same on every retry, so receivers can de-duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal
from urllib.parse import quote

import msgspec

from gateway.core.model import Event, EventKind

__all__ = [
    "Delivery",
    "EventChoice",
    "Registration",
    "WebhookTarget",
    "deliveries_for",
    "delivery_id",
    "delivery_key",
    "payload",
]

EventChoice = Literal["state", "progress", "terminal"]
"""``state``: every state change (the terminal one included); ``progress``: same-state
updates; ``terminal``: only the final event."""


class WebhookTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where to POST a task's events, and which ones (``POST /v1/tasks`` ``"webhook"``)."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    events: Annotated[tuple[EventChoice, ...], msgspec.Meta(min_length=1)] = ("terminal",)

    def wants(self, event: Event) -> bool:
        if event.terminal and "terminal" in self.events:
            return True
        if event.event is EventKind.STATE:
            return "state" in self.events
        return event.event is EventKind.PROGRESS and "progress" in self.events


class Registration(msgspec.Struct, frozen=True):
    """A target and the highest seq already turned into deliveries (or passed over)."""

    target: WebhookTarget
    mark: int


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One event owed to one URL. ``claim`` is set while a node holds it.

    ``id`` is the ``webhook-id`` a receiver de-duplicates by; ``key`` is where
    the outbox keeps the delivery, one per event *and* URL: a task's target
    replaced while the old one is still owed an event (a late ``POST /v1/tasks``
    with another webhook) is owed that event too, under the same ``id``.
    Deliveries stored before ``key`` existed have none, and are kept under
    their ``id`` (:attr:`slot`).
    """

    id: str
    task: str
    seq: int
    url: str
    payload: str  # the JSON body, exactly as signed and sent
    created_at: float
    due_at: float
    attempts: int = 0
    last_error: str | None = None
    claim: str | None = None
    key: str = ""

    @property
    def slot(self) -> str:
        """The outbox's key for this delivery."""
        return self.key or self.id


def delivery_key(webhook_id: str, url: str) -> str:
    """The outbox key of ``webhook_id`` owed to ``url`` (an id holds no space)."""
    return f"{webhook_id} {url}"


# Printable ASCII stays readable; anything else is percent-encoded so the id
# is a valid header value (RFC 9110 §5.5) whatever the task id holds.
_ID_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '%"\\')


def delivery_id(task: str, seq: int, epoch: str = "") -> str:
    """The ``webhook-id`` of a task's event: the task, its seq and the store's epoch.

    A store that lost its contents (a Redis restart without persistence)
    starts every task's seqs over; with the epoch (the store's incarnation,
    ``P:incarnation``) in the id, a receiver that de-duplicates by
    ``webhook-id`` does not drop the new epoch's deliveries as repeats.
    """
    base = f"{quote(task, safe=_ID_SAFE)}:{seq}"
    return f"{base}:{quote(epoch, safe=_ID_SAFE)}" if epoch else base


def payload(event: Event) -> str:
    """The Standard Webhooks payload shape: ``type``, ``timestamp`` and the event as ``data``."""
    kind = "task.progress" if event.event is EventKind.PROGRESS else "task.state"
    body = {"type": kind, "timestamp": event.updated_at, "data": event}
    return msgspec.json.encode(body).decode()


def deliveries_for(
    target: WebhookTarget, events: Sequence[Event], *, now: float, epoch: str = ""
) -> list[Delivery]:
    """The deliveries ``target`` wants out of ``events``, due now."""
    return [
        Delivery(
            id=(webhook_id := delivery_id(event.task, event.seq, epoch)),
            key=delivery_key(webhook_id, target.url),
            task=event.task,
            seq=event.seq,
            url=target.url,
            payload=payload(event),
            created_at=now,
            due_at=now,
        )
        for event in events
        if target.wants(event)
    ]
