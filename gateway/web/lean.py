"""Smaller stand-ins for objects uvicorn makes per connection.

An idle stream costs what its connection's objects cost, times 10,000.
uvicorn gives every connection two :class:`asyncio.Event` (flow control and
the request's message event) and a :class:`collections.deque` for pipelined
requests; each holds a deque, which CPython allocates with a 64-slot block:
about 760 bytes apiece, measured with tracemalloc, for objects that almost
never hold anything. These keep the same interface without the block.
The WebSocket protocol's inbound :class:`asyncio.Queue` is three deques and
an event; :class:`Inbox` is a list and one waiter. :func:`forget_headers`
lets an open connection drop the request head it no longer reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from uvicorn.protocols.http.flow_control import FlowControl

if TYPE_CHECKING:
    from litestar.types import Scope

__all__ = ["Inbox", "LeanFlowControl", "Pipeline", "Signal", "forget_headers"]


class Signal(asyncio.Event):
    """:class:`asyncio.Event` with a list of waiters, made only when someone waits.

    ``on_set``, when given, is called on every ``set()``, set already or not:
    uvicorn sets a request's message event for each thing it learns (body,
    end of body, the client gone) and only ``receive()`` clears it, so a
    consumer that does not call ``receive()`` learns of each all the same.
    """

    def __init__(self, value: bool = False) -> None:  # no super(): that makes the deque
        self._flag = value
        self._pending: list[asyncio.Future[None]] | None = None
        self.on_set: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Signal {'set' if self._flag else 'unset'}>"

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            pending, self._pending = self._pending, None
            for waiter in pending or ():
                if not waiter.done():
                    waiter.set_result(None)
        if self.on_set is not None:
            self.on_set()

    def clear(self) -> None:
        self._flag = False

    async def wait(self) -> Literal[True]:
        if self._flag:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._pending is None:
            self._pending = []
        self._pending.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._pending is not None and waiter in self._pending:
                self._pending.remove(waiter)


class LeanFlowControl(FlowControl):
    """uvicorn's write/read back-pressure, on a :class:`Signal`."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self._is_writable_event = Signal(True)


class Pipeline(list[Any]):
    """The two deque methods uvicorn uses for pipelined requests, on a list.

    ``appendleft`` then ``pop`` is first in, first out, as with the deque.
    """

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class Inbox:
    """The three :class:`asyncio.Queue` methods uvicorn's WebSocket protocol
    uses (``put_nowait``, ``get``, ``empty``), unbounded, for one consumer.

    A second concurrent ``get`` is a bug in the caller (the ASGI app has one
    receive loop) and raises rather than waiting unseen. ``on_put``, when
    set, is called after each item arrives: a consumer that waits on
    something else (gateway/web/ws.py waits on its events) learns of it.
    """

    __slots__ = ("_items", "_waiter", "on_put")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        self.on_put: Callable[[], None] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_put is not None:
            self.on_put()

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("Inbox.get() is already awaited by another task")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


def forget_headers(scope: Scope) -> None:
    """Drop a request's headers, raw and as Litestar parsed them, once read.

    For a connection that stays open after its head was read (credentials,
    origin, ``Last-Event-ID``: an accepted WebSocket, a started stream); the
    two copies cost about 1–2 KB, times every open connection.
    """
    scope["headers"] = []
    with contextlib.suppress(Exception):  # Litestar's parsed copy, if it keeps one there
        from litestar.types import Empty
        from litestar.utils.scope.state import ScopeState

        state = ScopeState.from_scope(scope)
        if state.headers is not Empty:
            state.headers = Empty
