"""pollcast's exception tree. Library errors are translated at the boundary.

Every class below, wherever it is defined::

    PollcastError
    ├── ConfigError            a bad configuration (names the key path)
    ├── InputError             bad client input → HTTP 4xx / WS error frame
    │   ├── InvalidTaskKey     malformed provider name or task id (422)
    │   ├── UnknownProvider    no such provider configured (404)
    │   ├── UnknownTask        a task the store does not hold and nothing polls (404)
    │   ├── NotWatched         unwatching a task nobody watches (404)
    │   ├── InvalidCursor      garbage Last-Event-ID / cursor / since (400)
    │   ├── TooManyTasks       more tasks in one request than allowed (400)
    │   ├── Unauthorized       no, wrong or expired credentials (401 + WWW-Authenticate)
    │   ├── Forbidden          a valid principal asking for more than it may (403)
    │   ├── LimitExceeded      a rate or quota ran out (429 + Retry-After)
    │   ├── InvalidWebhook     a webhook URL pollcast will not call (422)
    │   ├── BadFrame           a WebSocket frame that is no client message
    │   │                      (gateway/core/protocol.py)
    │   └── TaskExists         the simulator's admin API: that task exists (409,
    │                          gateway/sim/timeline.py)
    ├── UpstreamError          a request to an upstream API failed
    │   ├── UpstreamTimeout    … because no complete response came in time
    │   ├── _BodyTooLarge      … because the reply outgrew http.max_body_bytes
    │   │                      (gateway/poller/upstream.py)
    │   └── DeliveryFailed     a webhook attempt got no complete answer
    │       │                  (gateway/webhooks/sender.py)
    │       └── DeliveryTimeout  … within its deadline
    └── BackendError           the hub's store is unreachable or refused a write
        └── SeqConflict        another writer already committed that seq

Where a library's error can come out (``sqlite3``, redis-py, aiohttp), it
becomes one of these: ``sqlite3.Error`` in gateway/hub/local.py and
gateway/webhooks/outbox.py, redis-py's errors through
:data:`gateway.hub.client.REDIS_ERRORS`, aiohttp's in gateway/poller/upstream.py
and gateway/webhooks/sender.py.

Outside the tree are signals, each caught by the code that expects it:
``MalformedReply`` (an adapter's reply becomes a ``malformed`` fault),
``PathSyntaxError`` and ``ConditionSyntaxError`` (become a ``ConfigError``),
``QueueClosed`` and ``LinkLost`` (a closed subscriber queue, a lost Redis
subscription) and the simulator's own request-body and client-gone signals.
"""

from __future__ import annotations


class PollcastError(Exception):
    """Base of every error pollcast raises on purpose."""


class ConfigError(PollcastError):
    """The configuration is wrong. ``path`` names the key, e.g. ``providers.ailab.api_key``."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class InputError(PollcastError):
    """Client input that cannot be served. ``status`` is the HTTP status to answer."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(message)


class InvalidTaskKey(InputError):
    status = 422
    code = "invalid_task"


class UnknownProvider(InputError):
    status = 404
    code = "unknown_provider"


class UnknownTask(InputError):
    """The store holds no such task and nothing polls it (404)."""

    status = 404
    code = "unknown_task"


class NotWatched(InputError):
    """``DELETE`` of a task nobody watches (404)."""

    status = 404
    code = "not_watched"


class InvalidCursor(InputError):
    status = 400
    code = "invalid_cursor"


class TooManyTasks(InputError):
    status = 400
    code = "too_many_tasks"


class Unauthorized(InputError):
    """``code`` is ``unauthorized`` (no credentials), ``invalid_token`` or ``token_expired``."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, code: str = "unauthorized") -> None:
        super().__init__(message, field="authorization")
        self.code = code

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value (RFC 6750 §3)."""
        if self.code == "unauthorized":
            return 'Bearer realm="pollcast"'
        return f'Bearer realm="pollcast", error="invalid_token", error_description="{self.code}"'


class Forbidden(InputError):
    """``code`` is ``forbidden`` (not granted) or ``not_watched`` (would start upstream polling)."""

    status = 403
    code = "forbidden"

    def __init__(self, message: str, *, code: str = "forbidden", field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code


class LimitExceeded(InputError):
    status = 429
    code = "limit_exceeded"

    def __init__(
        self, message: str, *, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class InvalidWebhook(InputError):
    """A webhook URL refused by the gateway's rules (scheme, allow-list, private address)."""

    status = 422
    code = "invalid_webhook"

    def __init__(self, message: str, *, field: str | None = "webhook.url") -> None:
        super().__init__(message, field=field)


class UpstreamError(PollcastError):
    """An upstream request failed on the network (timeout, reset, refused)."""


class UpstreamTimeout(UpstreamError):
    """No complete response from the upstream within the request's time limit."""


class BackendError(PollcastError):
    """The hub backend (SQLite, Redis) failed."""


class SeqConflict(BackendError):
    """Another writer committed the same seq first; re-read and re-observe."""
