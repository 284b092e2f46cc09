"""Follow one task over Server-Sent Events: :func:`watch` (every event) and :func:`wait` (the end).

``GET /v1/tasks/{provider}/{task_id}/events`` (docs/protocol.md, "HTTP endpoints") streams a
``snapshot`` and then every ``state``/``progress`` event until the terminal
one; ``id:`` is the seq. This module is what a browser's ``EventSource``
does, plus what it leaves out: it stops at the terminal event, backs off on
failures, and never delivers an event twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from pollcast_client.errors import (
    ConnectionLost,
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
    Unauthorized,
)
from pollcast_client.events import AnyEvent, decode_event
from pollcast_client.resume import DEFAULT_RECONNECT, Reconnect, SeqTracker
from pollcast_client.sse import SSEDecoder

__all__ = ["Reconnecting", "events_url", "split_task", "wait", "watch"]

log = logging.getLogger("pollcast_client")

#: Longer than several of the server's heartbeats (``: ping`` every 15 s by
#: default), so only a stream that really went silent times out.
DEFAULT_READ_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0

# Statuses worth another try: the server is busy, draining or briefly broken.
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """Passed to ``on_reconnect`` before each wait: why, and for how long.

    ``target`` is the task (SSE) or the WebSocket URL. ``failures`` is 0 when
    the stream ended normally (the server closed it, e.g. while draining) and
    counts consecutive failed attempts otherwise; ``error`` is the failure.
    """

    target: str
    failures: int
    delay_s: float
    error: BaseException | None


ReconnectHook = Callable[[Reconnecting], None]


def split_task(task: str) -> tuple[str, str]:
    """``"provider:task_id"`` → ``(provider, task_id)``; the id may contain ``:``.

    Raises:
        ValueError: if either part is missing (the gateway validates the rest).
    """
    provider, sep, task_id = task.partition(":")
    if not sep or not provider or not task_id:
        raise ValueError(f"task {task!r} must look like 'provider:task_id'")
    return provider, task_id


def events_url(base_url: str, task: str) -> str:
    """The single-task event stream URL of ``task`` on the gateway at ``base_url``."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"gateway URL {base_url!r} must start with http:// or https://")
    provider, task_id = split_task(task)
    path = f"/v1/tasks/{quote(provider, safe='')}/{quote(task_id, safe='')}/events"
    return base_url.rstrip("/") + path


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def _http_client(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    # Environment proxies are ignored (trust_env=False): buffering proxies break
    # event streams. Pass your own client to go through one.
    async with httpx.AsyncClient(trust_env=False) as owned:
        yield owned


async def watch(
    base_url: str,
    task: str,
    token: str | None = None,
    *,
    last_event_id: int | None = None,
    client: httpx.AsyncClient | None = None,
    reconnect: Reconnect = DEFAULT_RECONNECT,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    on_reconnect: ReconnectHook | None = None,
) -> AsyncGenerator[AnyEvent, None]:
    """Every event of ``task``, in seq order, each once, until the terminal event.

    The first event is a ``snapshot`` (unless ``last_event_id`` is given: then
    the events after that seq). Notices (``event == "notice"``) are yielded
    too; they do not count for resuming. When the connection drops or the
    server closes the stream early (e.g. ``server_draining``), it reconnects
    with ``Last-Event-ID`` after the server's ``retry:`` time, backing off with
    full jitter while attempts fail (see :class:`Reconnect`).

    Args:
        base_url: the gateway, e.g. ``"http://127.0.0.1:8000"``.
        task: ``"provider:task_id"``.
        token: sent as ``Authorization: Bearer <token>``.
        last_event_id: resume after this seq instead of starting with a snapshot.
        client: an ``httpx.AsyncClient`` to use (it is not closed); by default
            one is created without environment proxies. Stream requests
            always use this function's timeouts.
        reconnect: the reconnection policy.
        read_timeout_s: a stream silent this long (no event, no heartbeat)
            counts as dropped.
        on_reconnect: called before each reconnection wait.

    Raises:
        RequestRejected: a 4xx answer (``Unauthorized`` for 401/403).
        ConnectionLost: ``reconnect.max_failures`` consecutive attempts failed.
        ProtocolError: the server sent something that is not an event stream.

    The stream ends without an event when the server answers ``204`` (the
    task already delivered its terminal event up to ``last_event_id``).
    """
    url = events_url(base_url, task)
    seqs = SeqTracker({task: last_event_id} if last_event_id is not None else None)
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=read_timeout_s)
    failures = 0
    server_retry_s: float | None = None
    async with _http_client(client) as http:
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            headers.update(auth_headers(token))
            since = seqs.since(task)
            if since is not None:
                headers["Last-Event-ID"] = str(since)
            log.debug("GET %s (Last-Event-ID: %s)", url, since)
            decoder = SSEDecoder()
            received = False
            error: BaseException | None = None
            retry_after_s = 0.0
            try:
                async with http.stream("GET", url, headers=headers, timeout=timeout) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        await response.aread()
                        retry_after_s = _raise_unless_retryable(response)
                        error = ServerUnavailable(response.status_code)
                    else:
                        _check_event_stream(response)
                        async for chunk in response.aiter_bytes():
                            for message in decoder.feed(chunk):
                                received = True
                                event = _decode(message.data)
                                if not seqs.admit(event):
                                    continue
                                yield event
                                if event.terminal and event.counts_for_resume:
                                    return
                            if decoder.retry_ms is not None:
                                server_retry_s = decoder.retry_ms / 1000
            except httpx.TransportError as exc:
                error = exc
            failures = 0 if received and error is None else failures + 1
            if error is None and not received:
                error = ProtocolError("the stream closed before sending any event")
            if reconnect.gives_up(failures):
                raise ConnectionLost(
                    f"gave up on {url} after {failures} failed attempts: {error}"
                ) from error
            delay = max(reconnect.delay(failures, server_retry_s, random.random), retry_after_s)
            log.debug("%s: reconnecting in %.2f s (failures: %d): %s", task, delay, failures, error)
            if on_reconnect is not None:
                on_reconnect(Reconnecting(task, failures, delay, error))
            await asyncio.sleep(delay)


def _raise_unless_retryable(response: httpx.Response) -> float:
    """Raise for a final 4xx; otherwise return the ``Retry-After`` delay (0 if none)."""
    status = response.status_code
    if status in _RETRYABLE:
        return _retry_after_s(response.headers.get("retry-after"))
    problem = _problem(response)
    if status in (401, 403):
        raise Unauthorized(status, problem)
    if 400 <= status < 500:
        raise RequestRejected(status, problem)
    raise ProtocolError(f"unexpected HTTP {status} from {response.request.url}")


def _retry_after_s(value: str | None) -> float:
    """``Retry-After`` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date."""
    if not value:
        return 0.0
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _problem(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _check_event_stream(response: httpx.Response) -> None:
    media_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if media_type != "text/event-stream":
        raise ProtocolError(f"expected text/event-stream, got {media_type or 'no content type'!r}")


def _decode(data: str) -> AnyEvent:
    try:
        return decode_event(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not an event object ({exc}): {data[:200]!r}") from exc


async def wait(
    base_url: str,
    task: str,
    token: str | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - one deadline over every reconnection
    *,
    client: httpx.AsyncClient | None = None,
    reconnect: Reconnect = DEFAULT_RECONNECT,
) -> AnyEvent:
    """Wait until ``task`` ends; return its terminal event (``succeeded``, ``failed``…).

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
        RequestRejected, ConnectionLost, ProtocolError: as :func:`watch`.
    """
    async with asyncio.timeout(timeout):
        async with aclosing(
            watch(base_url, task, token, client=client, reconnect=reconnect)
        ) as events:
            async for event in events:
                if event.terminal and event.counts_for_resume:
                    return event
    raise ProtocolError(f"the stream of {task} ended without a terminal event")
