"""The client's exception tree. Transport errors are translated at the boundary.

::

    PollcastClientError
    ├── RequestRejected        the gateway answered 4xx (bad task key, unknown provider…)
    │   └── Unauthorized       401 / 403: missing, wrong or expired token
    ├── ConnectionLost         gave up reconnecting; ``__cause__`` is the last failure
    ├── ServerUnavailable      a 5xx / 429 answer (retried; the cause of ConnectionLost)
    ├── ProtocolError          the gateway sent something this client cannot read
    └── ServerError            a WebSocket ``error`` frame
        └── SubscribeRejected  ``subscribe`` was refused for some tasks
"""

from __future__ import annotations

from typing import Any

from pollcast_client.events import ErrorFrame

__all__ = [
    "ConnectionLost",
    "PollcastClientError",
    "ProtocolError",
    "RequestRejected",
    "ServerError",
    "ServerUnavailable",
    "SubscribeRejected",
    "Unauthorized",
]


class PollcastClientError(Exception):
    """Base of every error this package raises on purpose."""


class RequestRejected(PollcastClientError):
    """A 4xx answer; retrying the same request will not help.

    ``problem`` is the RFC 9457 body when the gateway sent one; ``code`` its
    machine-readable code (e.g. ``invalid_task``, ``unknown_provider``).
    """

    def __init__(self, status: int, problem: dict[str, Any] | None = None) -> None:
        self.status = status
        self.problem = problem or {}
        code = self.problem.get("code")
        self.code: str | None = code if isinstance(code, str) else None
        detail = self.problem.get("detail") or self.problem.get("title") or "request rejected"
        self.detail = str(detail)
        super().__init__(f"HTTP {status}: {self.detail}")


class Unauthorized(RequestRejected):
    """401/403: the token is missing, wrong, expired or not valid for this task."""


class ConnectionLost(PollcastClientError):
    """The gateway stayed unreachable for the whole reconnection policy."""


class ServerUnavailable(PollcastClientError):
    """A 5xx, 429 or 408 answer: this attempt failed, a later one may not."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


class ProtocolError(PollcastClientError):
    """An answer that breaks the wire contract (wrong content type, undecodable event)."""


class ServerError(PollcastClientError):
    """The server refused a WebSocket request with an ``error`` frame."""

    def __init__(self, frame: ErrorFrame) -> None:
        self.frame = frame
        self.code = frame.code
        self.task = frame.task
        where = f" ({frame.task})" if frame.task else ""
        super().__init__(f"{frame.code}{where}: {frame.message}")


class SubscribeRejected(ServerError):
    """Some tasks of a ``subscribe`` were refused; the others are subscribed.

    ``rejected`` maps each refused task to the server's error frame.
    """

    def __init__(self, rejected: dict[str, ErrorFrame]) -> None:
        self.rejected = rejected
        super().__init__(next(iter(rejected.values())))
