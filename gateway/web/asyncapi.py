"""``GET /asyncapi.json``: an AsyncAPI 3.0 document of what the gateway pushes.

It describes the SSE streams (one task, many tasks), the WebSocket protocol
of ``/v1/ws`` and the Standard Webhooks POSTs — the parts the OpenAPI
document (``/schema/openapi.json``) cannot. Every payload schema is generated
with :func:`msgspec.json.schema_components` from the very ``Struct`` types
the gateway encodes (:class:`~gateway.core.model.Event`, the WebSocket frames
of :mod:`gateway.core.protocol`, :class:`WebhookPayload`), so the document
cannot drift from the wire.

AsyncAPI 3.0.0: https://www.asyncapi.com/docs/reference/specification/v3.0.0
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any, Literal

import msgspec
from litestar import Request, get

from gateway.core.model import Event
from gateway.core.protocol import (
    ErrorFrame,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

__all__ = ["ASYNCAPI_VERSION", "WebhookPayload", "asyncapi_document", "asyncapi_json"]

ASYNCAPI_VERSION = "3.0.0"
_REF = "#/components/schemas/{name}"


class WebhookPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of a webhook POST (Standard Webhooks: ``type``, ``timestamp``, ``data``).

    :func:`gateway.webhooks.model.payload` builds it; the tests decode its
    output with this type, so this schema is the one the receivers see.
    """

    type: Literal["task.state", "task.progress"]
    timestamp: str
    data: Event


# (component name, type) of every payload the document names.
_PAYLOADS: tuple[tuple[str, Any], ...] = (
    ("Event", Event),
    ("Subscribe", Subscribe),
    ("Unsubscribe", Unsubscribe),
    ("Ping", Ping),
    ("Subscribed", Subscribed),
    ("Unsubscribed", Unsubscribed),
    ("Pong", Pong),
    ("ErrorFrame", ErrorFrame),
    ("WebhookPayload", WebhookPayload),
)


def _asyncapi_schema(node: Any) -> Any:
    """msgspec's JSON Schema as an AsyncAPI Schema Object.

    The two differ in one keyword msgspec emits: AsyncAPI's ``discriminator``
    is the property name alone, not OpenAPI's ``{"propertyName", "mapping"}``.
    """
    if isinstance(node, dict):
        out = {key: _asyncapi_schema(value) for key, value in node.items()}
        discriminator = out.get("discriminator")
        if isinstance(discriminator, dict):
            out["discriminator"] = discriminator["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


@cache
def _schemas() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [kind for _, kind in _PAYLOADS], ref_template=_REF
    )
    missing = {name for name, _ in _PAYLOADS} - set(components)
    assert not missing, f"schema components lack {missing}"
    schemas: dict[str, Any] = _asyncapi_schema(components)
    return schemas


def _message(name: str, payload: str, summary: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "title": name,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(name=payload)},
        **extra,
    }


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/{kind}/{name}"}


_TASK_PARAMETERS = {
    "provider": {
        "description": "A configured provider name (`GET /v1/providers`): ^[a-z][a-z0-9_-]{0,31}$."
    },
    "task_id": {"description": "The upstream task id: 1–256 printable characters, no whitespace."},
}

_WEBHOOK_HEADERS = {
    "type": "object",
    "description": "Standard Webhooks headers (https://www.standardwebhooks.com/).",
    "properties": {
        "webhook-id": {
            "type": "string",
            "description": "`{task}:{seq}`, the same on every retry: the idempotency key.",
        },
        "webhook-timestamp": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "Unix seconds of this attempt.",
        },
        "webhook-signature": {
            "type": "string",
            "description": (
                'Space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.'
            ),
        },
    },
    "required": ["webhook-id", "webhook-timestamp", "webhook-signature"],
}


def asyncapi_document(
    *, host: str, secure: bool = False, token_auth: bool = False
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of a gateway reachable at ``host`` (``name:port``).

    Args:
        host: what clients connect to (the ``Host`` they used).
        secure: served over TLS (``https`` / ``wss``).
        token_auth: ``auth.mode = "token"``: every server requires a key or token.
    """
    security = [_ref("components/securitySchemes", "apiKey")] if token_auth else []
    security += [_ref("components/securitySchemes", "subscriberToken")] if token_auth else []
    servers = {
        "http": {
            "host": host,
            "protocol": "https" if secure else "http",
            "description": "SSE streams (`text/event-stream`); NDJSON with "
            "`Accept: application/x-ndjson`.",
            "security": security,
        },
        "ws": {
            "host": host,
            "protocol": "wss" if secure else "ws",
            "description": "`/v1/ws`: JSON text frames, many tasks per connection.",
            "security": security,
        },
    }
    event = _ref("components/messages", "event")
    channels = {
        "taskEvents": {
            "address": "/v1/tasks/{provider}/{task_id}/events",
            "title": "One task's events (SSE)",
            "description": (
                "`GET` opens a stream that starts with `retry:` and a `snapshot`, then "
                "`state` / `progress` / `notice` events; each SSE `data:` is one event and "
                "`id:` is its seq (notices carry no id). `Last-Event-ID` (or "
                "`?last_event_id=`) replays exactly the missed events; a reconnect that "
                "already holds the terminal seq gets `204 No Content`. The stream ends "
                "after the terminal event; `: ping` comments keep it alive."
            ),
            "servers": [_ref("servers", "http")],
            "parameters": {name: _ref("components/parameters", name) for name in _TASK_PARAMETERS},
            "messages": {"event": event},
        },
        "manyTasksEvents": {
            "address": "/v1/events",
            "title": "Many tasks' events on one stream (SSE)",
            "description": (
                "`GET /v1/events?tasks=a:1,b:2`: the events of every listed task, "
                "interleaved. `id:` is an opaque cursor that resumes all of them "
                "(`Last-Event-ID` or `?cursor=`)."
            ),
            "servers": [_ref("servers", "http")],
            "messages": {"event": event},
        },
        "ws": {
            "address": "/v1/ws",
            "title": "WebSocket",
            "description": (
                "Client frames `subscribe` (with `since` to resume), `unsubscribe` and "
                "`ping`; the server answers `subscribed`, `unsubscribed`, `pong`, sends "
                "every event of the subscribed tasks, and an `error` frame for a bad "
                "frame — the connection stays open."
            ),
            "servers": [_ref("servers", "ws")],
            "messages": {
                "subscribe": _ref("components/messages", "subscribe"),
                "unsubscribe": _ref("components/messages", "unsubscribe"),
                "ping": _ref("components/messages", "ping"),
                "event": event,
                "subscribed": _ref("components/messages", "subscribed"),
                "unsubscribed": _ref("components/messages", "unsubscribed"),
                "pong": _ref("components/messages", "pong"),
                "error": _ref("components/messages", "error"),
            },
        },
        "webhook": {
            "address": None,  # the URL each registration gives (POST /v1/tasks "webhook")
            "title": "Webhooks",
            "description": (
                'A task registered with `"webhook": {"url", "events"}` gets its events '
                "POSTed there, signed with the Standard Webhooks scheme and retried with "
                "backoff until the receiver answers 2xx."
            ),
            "messages": {
                "taskState": _ref("components/messages", "taskState"),
                "taskProgress": _ref("components/messages", "taskProgress"),
            },
        },
    }

    def channel_messages(channel: str, *names: str) -> list[dict[str, str]]:
        return [_ref(f"channels/{channel}/messages", name) for name in names]

    operations = {
        "sendTaskEvents": {
            "action": "send",
            "title": "Stream one task's events",
            "channel": _ref("channels", "taskEvents"),
            "bindings": {"http": {"method": "GET"}},
            "messages": channel_messages("taskEvents", "event"),
        },
        "sendManyTasksEvents": {
            "action": "send",
            "title": "Stream many tasks' events",
            "channel": _ref("channels", "manyTasksEvents"),
            "bindings": {"http": {"method": "GET"}},
            "messages": channel_messages("manyTasksEvents", "event"),
        },
        "receiveWsFrames": {
            "action": "receive",
            "title": "Client frames",
            "channel": _ref("channels", "ws"),
            "messages": channel_messages("ws", "subscribe", "unsubscribe", "ping"),
        },
        "sendWsFrames": {
            "action": "send",
            "title": "Server frames",
            "channel": _ref("channels", "ws"),
            "messages": channel_messages(
                "ws", "event", "subscribed", "unsubscribed", "pong", "error"
            ),
        },
        "sendWebhooks": {
            "action": "send",
            "title": "Webhook deliveries",
            "channel": _ref("channels", "webhook"),
            "bindings": {"http": {"method": "POST"}},
            "messages": channel_messages("webhook", "taskState", "taskProgress"),
        },
    }
    webhook_extra = {"headers": _WEBHOOK_HEADERS}
    messages = {
        "event": _message(
            "event",
            "Event",
            "A snapshot, a state change, a progress update or a notice of one task.",
        ),
        "subscribe": _message("subscribe", "Subscribe", "Follow tasks; `since` resumes each."),
        "unsubscribe": _message("unsubscribe", "Unsubscribe", "Stop following tasks."),
        "ping": _message("ping", "Ping", "Asks for a `pong`."),
        "subscribed": _message("subscribed", "Subscribed", "The tasks now followed."),
        "unsubscribed": _message("unsubscribed", "Unsubscribed", "The tasks no longer followed."),
        "pong": _message("pong", "Pong", "The answer to a `ping`."),
        "error": _message("error", "ErrorFrame", "A frame was refused; the connection stays."),
        "taskState": _message(
            "taskState",
            "WebhookPayload",
            "`type: task.state`: a state change (the terminal one included).",
            **webhook_extra,
        ),
        "taskProgress": _message(
            "taskProgress",
            "WebhookPayload",
            "`type: task.progress`: progress within the same state.",
            **webhook_extra,
        ),
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:pollcast:gateway",
        "info": {
            "title": "pollcast",
            "version": "1",
            "description": (
                "Each upstream task is polled once; every transition is pushed over SSE, "
                "WebSocket and webhooks. The request/response API is in /schema/openapi.json."
            ),
        },
        "defaultContentType": "application/json",
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": copy.deepcopy(_schemas()),  # callers may change their copy
            "messages": messages,
            "parameters": _TASK_PARAMETERS,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A backend's API key: `Authorization: Bearer <key>`.",
                },
                "subscriberToken": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "A subscriber token scoped to tasks (`POST /v1/tasks`).",
                },
            },
        },
    }


@get("/asyncapi.json", include_in_schema=False, sync_to_thread=False)
def asyncapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the streams, the WebSocket and the webhooks."""
    gateway = request.app.state.gateway
    return asyncapi_document(
        host=request.url.netloc,
        secure=request.url.scheme == "https",
        token_auth=gateway.config.auth.mode == "token",
    )
