"""pollcast client: follow task status from a pollcast gateway.

::

    import pollcast_client as pc

    async for event in pc.watch("http://127.0.0.1:8000", "ailab:abc"):     # SSE, one task
        print(event.event, event.state, event.progress)

    async with pc.connect("http://127.0.0.1:8000") as ws:                  # WebSocket, many
        await ws.subscribe(["ailab:abc", "aholo:42"])
        async for event in ws:
            ...

    final = await pc.wait("http://127.0.0.1:8000", "ailab:abc", timeout=600)
    final = pc.sync.wait("http://127.0.0.1:8000", "ailab:abc")             # no asyncio

Both transports reconnect on their own and resume where they left off, so
each event is delivered once and in order.
"""

from pollcast_client import sync
from pollcast_client.client import Reconnecting, events_url, wait, watch
from pollcast_client.errors import (
    ConnectionLost,
    PollcastClientError,
    ProtocolError,
    RequestRejected,
    ServerError,
    ServerUnavailable,
    SubscribeRejected,
    Unauthorized,
)
from pollcast_client.events import (
    TERMINAL_STATES,
    AnyEvent,
    ErrorFrame,
    ErrorInfo,
    Event,
    EventKind,
    Notice,
    ProgressUpdate,
    Result,
    Snapshot,
    State,
    StateChanged,
)
from pollcast_client.resume import Reconnect
from pollcast_client.ws import TaskSocket, connect

__all__ = [
    "TERMINAL_STATES",
    "AnyEvent",
    "ConnectionLost",
    "ErrorFrame",
    "ErrorInfo",
    "Event",
    "EventKind",
    "Notice",
    "PollcastClientError",
    "ProgressUpdate",
    "ProtocolError",
    "Reconnect",
    "Reconnecting",
    "RequestRejected",
    "Result",
    "ServerError",
    "ServerUnavailable",
    "Snapshot",
    "State",
    "StateChanged",
    "SubscribeRejected",
    "TaskSocket",
    "Unauthorized",
    "connect",
    "events_url",
    "sync",
    "wait",
    "watch",
]

__version__ = "0.1.0"
