"""Many tasks over one WebSocket (docs/protocol.md, "WebSocket"), reconnecting on its own.

::

    async with connect("http://127.0.0.1:8000") as ws:
        await ws.subscribe(["ailab:abc", "aholo:42"])
        async for event in ws:          # ends once every subscribed task has ended
            print(event.task, event.state, event.progress)

One background task owns the connection: it reads frames, routes control
frames to whoever waits for them (``subscribe`` waits for ``subscribed``,
``ping`` for ``pong``) and queues events for the iterator. When the
connection drops it reconnects (backing off with full jitter, see
:class:`~pollcast_client.resume.Reconnect`) and subscribes again to every
unfinished task with ``since`` = the last seq it delivered, so the server
replays exactly what was missed; events already delivered are dropped.

Errors: a refused subscription raises :class:`SubscribeRejected` from
:meth:`TaskSocket.subscribe`; any other ``error`` frame (one not about a
task being subscribed) is raised as :class:`ServerError` from the iterator,
and the connection stays usable — iterate again to continue. Giving up on
reconnecting raises :class:`ConnectionLost` from the iterator and from every
pending call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException
from websockets.uri import parse_uri

from pollcast_client.client import ReconnectHook, Reconnecting, auth_headers, split_task
from pollcast_client.errors import (
    ConnectionLost,
    PollcastClientError,
    ProtocolError,
    RequestRejected,
    ServerError,
    SubscribeRejected,
    Unauthorized,
)
from pollcast_client.events import (
    AnyEvent,
    ErrorFrame,
    Event,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    decode_frame,
    encode,
)
from pollcast_client.resume import DEFAULT_RECONNECT, Reconnect, SeqTracker

__all__ = ["TaskSocket", "connect", "ws_url"]

log = logging.getLogger("pollcast_client")

OPEN_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 30.0
# The gateway echoes at most this much of a task it refuses (gateway/web/ws.py).
_MAX_TASK_LEN = 300


# The gateway refuses credentials after accepting the socket (a browser sees no
# handshake status): an error frame with one of these codes, then close code
# 4000 + the HTTP status (gateway/web/ws.py).
_CREDENTIAL_CODES = frozenset({"unauthorized", "invalid_token", "token_expired", "forbidden"})
_CREDENTIAL_CLOSE = {4401: 401, 4403: 403}


def _credentials_status(conn: ClientConnection | None) -> int | None:
    """401/403 if the server closed ``conn`` for its credentials."""
    if conn is None or conn.close_code is None:
        return None
    return _CREDENTIAL_CLOSE.get(conn.close_code)


class _Wake:
    """Queued to make a waiting iterator re-check whether it is done."""


_WAKE: Final = _Wake()
_Item = AnyEvent | PollcastClientError | _Wake


def ws_url(base_url: str) -> str:
    """``http(s)://host[/prefix]`` (or ``ws(s)://…``) → ``ws(s)://host[/prefix]/v1/ws``.

    Raises:
        ValueError: for any other scheme or an unusable URL.
    """
    base = base_url.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            base = ws + base[len(http) :]
    url = base + "/v1/ws"
    try:
        parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"gateway URL {base_url!r} must be http(s):// or ws(s)://") from exc
    return url


def connect(
    base_url: str,
    token: str | None = None,
    *,
    proxy: str | None = None,
    reconnect: Reconnect = DEFAULT_RECONNECT,
    reply_timeout_s: float = REPLY_TIMEOUT_S,
    on_reconnect: ReconnectHook | None = None,
) -> TaskSocket:
    """A multiplexed task socket; use it as ``async with connect(...) as ws``.

    Args:
        base_url: the gateway, ``http://…`` or ``ws://…``.
        token: an API key or a subscriber token, sent as ``Authorization:
            Bearer <token>`` in the handshake. (Not as ``?token=``: the
            gateway takes API keys from the header only, since a URL ends up
            in logs; ``?token=`` exists for browsers, which cannot set headers.)
        proxy: an HTTP/SOCKS proxy URL; ``None`` (the default) connects
            directly, whatever the environment says.
        reconnect: the reconnection policy (``base_s`` defaults to 1 s).
        reply_timeout_s: how long ``subscribe``/``ping`` wait for the answer.
        on_reconnect: called before each reconnection wait.
    """
    return TaskSocket(
        ws_url(base_url),
        token,
        proxy=proxy,
        reconnect=reconnect,
        reply_timeout_s=reply_timeout_s,
        on_reconnect=on_reconnect,
    )


class TaskSocket:
    """A WebSocket following many tasks. Iterating yields their events, each once.

    ``url`` is the ``ws(s)://…/v1/ws`` endpoint; the token travels in the
    handshake's ``Authorization`` header. ``reconnects`` counts the connections
    opened after the first one.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        proxy: str | None = None,
        reconnect: Reconnect = DEFAULT_RECONNECT,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        on_reconnect: ReconnectHook | None = None,
    ) -> None:
        self.url = url
        self._headers = auth_headers(token)
        self.reconnects = 0
        self._proxy = proxy
        self._reconnect = reconnect
        self._reply_timeout_s = reply_timeout_s
        self._on_reconnect = on_reconnect
        self._seqs = SeqTracker()
        self._wanted: dict[str, None] = {}  # subscribed tasks, in order
        self._acks: dict[str, asyncio.Future[ErrorFrame | None]] = {}
        self._pongs: deque[asyncio.Future[None]] = deque()
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._conn: ClientConnection | None = None
        self._opened: asyncio.Future[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._fatal: PollcastClientError | None = None
        self._refusal: ErrorFrame | None = None  # why the server is about to close

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> TaskSocket:
        """Open the first connection (retrying per the policy).

        Raises:
            ConnectionLost, RequestRejected: as the connection attempts failed.
        """
        loop = asyncio.get_running_loop()
        self._opened = loop.create_future()
        self._runner = asyncio.create_task(self._run(), name=f"pollcast-ws {self.url}")
        try:
            await self._opened
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        waiters: list[asyncio.Future[Any]] = [*self._acks.values(), *self._pongs]
        for waiter in waiters:
            waiter.cancel()
        self._acks.clear()
        self._pongs.clear()

    # -- requests ------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        """The subscribed tasks that have not ended yet."""
        return [t for t in self._wanted if t not in self._seqs.finished]

    async def subscribe(self, tasks: Iterable[str]) -> None:
        """Follow ``tasks``; returns once the server confirmed every one.

        The first event of each task is its snapshot (or, after a reconnect,
        what was missed). Subscribing to a task already followed does nothing.

        Raises:
            ValueError: a task is not ``provider:task_id``.
            SubscribeRejected: the server refused some tasks (the others are
                subscribed); ``rejected`` names each with its error frame.
            TimeoutError: no answer within ``reply_timeout_s``.
            ConnectionLost: the socket gave up reconnecting.
        """
        self._raise_if_dead()
        new = [t for t in dict.fromkeys(tasks) if t not in self._wanted]
        for task in new:
            split_task(task)
            if len(task) > _MAX_TASK_LEN:
                raise ValueError(f"task {task[:40]!r}… is longer than any valid task key")
        if not new:
            return
        loop = asyncio.get_running_loop()
        acks = {}
        for task in new:
            self._wanted[task] = None
            acks[task] = self._acks[task] = loop.create_future()
        conn = self._conn
        if conn is not None:
            # Without a connection, the next one subscribes to everything wanted.
            await self._send_subscribe(conn, new)
        async with asyncio.timeout(self._reply_timeout_s):
            answers = await asyncio.gather(*acks.values(), return_exceptions=True)
        rejected: dict[str, ErrorFrame] = {}
        for task, answer in zip(acks, answers, strict=True):
            if isinstance(answer, ErrorFrame):
                rejected[task] = answer
            elif isinstance(answer, asyncio.CancelledError):
                # unsubscribe() withdrew it meanwhile, or close() ended the socket.
                if self._runner is None:
                    raise ConnectionLost("the socket was closed")
            elif isinstance(answer, BaseException):
                raise answer
        if rejected:
            raise SubscribeRejected(rejected)

    async def unsubscribe(self, tasks: Iterable[str]) -> None:
        """Stop following ``tasks``; their later events are dropped."""
        names = [t for t in dict.fromkeys(tasks) if t in self._wanted]
        for task in names:
            del self._wanted[task]
            ack = self._acks.pop(task, None)
            if ack is not None and not ack.done():
                ack.cancel()
        self._inbox.put_nowait(_WAKE)
        conn = self._conn
        if names and conn is not None:
            with contextlib.suppress(WebSocketException):
                await conn.send(encode(Unsubscribe(tasks=names)).decode())

    async def ping(self) -> float:
        """Round trip through the gateway's frame handling; returns seconds.

        Raises:
            ConnectionLost: there is no connection, or it dropped before the pong.
            TimeoutError: no pong within ``reply_timeout_s``.
        """
        self._raise_if_dead()
        conn = self._conn
        if conn is None:
            raise ConnectionLost("not connected (reconnecting)")
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        started = time.monotonic()
        try:
            await conn.send(encode(Ping()).decode())
        except WebSocketException as exc:
            raise ConnectionLost(f"the connection dropped: {exc}") from exc
        async with asyncio.timeout(self._reply_timeout_s):
            await pong
        return time.monotonic() - started

    # -- iteration -----------------------------------------------------------

    def __aiter__(self) -> TaskSocket:
        return self

    async def __anext__(self) -> AnyEvent:
        """The next event of any subscribed task.

        Stops once at least one task was subscribed and every subscribed task
        delivered its terminal event.

        Raises:
            ServerError: an ``error`` frame not tied to a subscription.
            ConnectionLost, RequestRejected: the socket gave up.
        """
        while True:
            if self._inbox.empty():
                if self._fatal is not None:
                    raise self._fatal
                if self._wanted and not self.tasks:
                    raise StopAsyncIteration
            item = await self._inbox.get()
            if isinstance(item, _Wake):
                continue
            if isinstance(item, PollcastClientError):
                raise item
            if item.task in self._wanted:
                return item

    # -- the connection ------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        error: BaseException | None = None
        refused: int | None = None  # a 403 answer to the last attempt
        while True:
            conn: ClientConnection | None = None
            try:
                async with ws_connect(
                    self.url,
                    additional_headers=self._headers,
                    proxy=self._proxy,
                    open_timeout=OPEN_TIMEOUT_S,
                ) as conn:
                    failures, error, refused = 0, None, None
                    self._refusal = None
                    if self._opened is not None and self._opened.done():
                        self.reconnects += 1
                    self._conn = conn
                    resume = self.tasks  # read together with _conn: see subscribe()
                    if resume:
                        await self._send_subscribe(conn, resume)
                    if self._opened is not None and not self._opened.done():
                        self._opened.set_result(None)
                    async for data in conn:
                        self._receive(data)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 401:
                    self._die(Unauthorized(status))
                    return
                # A draining gateway closes before accepting, which reaches the
                # client as 403 (ASGI): worth retrying, on this node or the next.
                refused = status if status == 403 else None
                if 400 <= status < 500 and status not in (403, 408, 429):
                    self._die(RequestRejected(status))
                    return
                error = exc
            except (OSError, TimeoutError, WebSocketException) as exc:
                error = exc
            except ProtocolError as exc:
                self._die(exc)
                return
            finally:
                self._conn = None
                self._fail_pongs(ConnectionLost("the connection dropped before the pong"))
            denied = _credentials_status(conn)
            if denied is not None:
                # Refused or expired credentials: the same token will not do better.
                refusal = self._refusal
                problem = {"code": refusal.code, "detail": refusal.message} if refusal else None
                self._die(Unauthorized(denied, problem))
                return
            if error is not None:
                failures += 1
            if self._reconnect.gives_up(failures):
                lost = ConnectionLost(f"gave up on {self.url} after {failures} failed attempts")
                lost.__cause__ = error
                self._die(Unauthorized(refused) if refused is not None else lost)
                return
            delay = self._reconnect.delay(failures, None, random.random)
            log.debug(
                "%s: reconnecting in %.2f s (failures: %d): %s", self.url, delay, failures, error
            )
            if self._on_reconnect is not None:
                self._on_reconnect(Reconnecting(self.url, failures, delay, error))
            await asyncio.sleep(delay)

    async def _send_subscribe(self, conn: ClientConnection, tasks: list[str]) -> None:
        since = {t: s for t in tasks if (s := self._seqs.since(t)) is not None}
        log.debug("subscribe %s since %s", tasks, since)
        with contextlib.suppress(WebSocketException):
            # A failed send shows up as the connection closing; _run reconnects.
            await conn.send(encode(Subscribe(tasks=tasks, since=since)).decode())

    def _receive(self, data: str | bytes) -> None:
        try:
            frame = decode_frame(data)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"not a frame of the contract ({exc}): {data[:200]!r}") from exc
        match frame:
            case Subscribed(tasks=tasks):
                for task in tasks:
                    self._answer(task, None)
            case Pong():
                if self._pongs:
                    pong = self._pongs.popleft()
                    if not pong.done():
                        pong.set_result(None)
            case ErrorFrame(task=task) if task is not None and task in self._wanted:
                # A refused subscription: the user's subscribe() raises it, or
                # (for a re-subscription after a reconnect) the iterator does.
                del self._wanted[task]
                if task in self._acks:
                    self._answer(task, frame)
                else:
                    self._inbox.put_nowait(ServerError(frame))
            case ErrorFrame(code=code) if code in _CREDENTIAL_CODES:
                # The close that follows (4401/4403) ends the socket with this reason.
                self._refusal = frame
            case ErrorFrame():
                self._inbox.put_nowait(ServerError(frame))
            case Unsubscribed():
                pass
            case Event() if frame.task in self._wanted and self._seqs.admit(frame):
                self._inbox.put_nowait(frame)

    def _answer(self, task: str, frame: ErrorFrame | None) -> None:
        ack = self._acks.pop(task, None)
        if ack is not None and not ack.done():
            ack.set_result(frame)

    def _die(self, error: PollcastClientError) -> None:
        self._fatal = error
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(error)
        self._fail_waiters(error)
        self._inbox.put_nowait(_WAKE)

    def _fail_waiters(self, error: PollcastClientError) -> None:
        for ack in self._acks.values():
            if not ack.done():
                ack.set_exception(error)
        self._acks.clear()
        self._fail_pongs(error)

    def _fail_pongs(self, error: PollcastClientError) -> None:
        while self._pongs:
            pong = self._pongs.popleft()
            if not pong.done():
                pong.set_exception(error)

    def _raise_if_dead(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._runner is None:
            raise RuntimeError("use the socket inside 'async with connect(...)'")
