"""Upstreams a test writes byte by byte, on real sockets: scripted and hostile ones."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

__all__ = [
    "Script",
    "ScriptedServer",
    "listening",
    "ok",
    "read_request",
    "reset",
    "serving",
]

Script = list[bytes | Callable[[asyncio.StreamWriter], object]]
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def ok(body: bytes = b'{"ok":true}', *extra: bytes) -> bytes:
    """A complete ``200 OK`` framed by Content-Length, with ``extra`` header lines."""
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(line + b"\r\n" for line in extra),
        body,
    )


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and its Content-Length body, as received."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    return head + await reader.readexactly(length)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ScriptedServer:
    """Answers each request with the next scripted reply (bytes, or a callable)."""

    def __init__(self, replies: Script) -> None:
        self.replies = replies
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                self.requests.append(await read_request(reader))
                reply = self.replies.pop(0)
                if callable(reply):
                    result = reply(writer)
                    if asyncio.iscoroutine(result):
                        await result
                    if writer.is_closing():
                        return
                else:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(replies: Script) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(replies)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


@asynccontextmanager
async def listening(behave: Behaviour, **kwargs: object) -> AsyncIterator[int]:
    """Run ``behave(reader, writer)`` for every connection; yield the port.

    Errors of a connection the client gave up on (reset, broken pipe) end
    that connection only.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await behave(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
