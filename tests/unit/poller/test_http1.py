"""The upstream HTTP client against a scripted HTTP server on a real socket."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from gateway.poller.http1 import HttpFailure, UpstreamClient, UpstreamTimeout
from gateway.providers.base import UpstreamResponse
from tests.integration.gateway_server import free_port

Script = list[bytes | Callable[[asyncio.StreamWriter], object]]


def ok(body: bytes = b'{"ok":true}', *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(line + b"\r\n" for line in extra),
        body,
    )


class Server:
    """Answers each request with the next scripted reply (bytes, or a callable)."""

    def __init__(self, replies: Script) -> None:
        self.replies = replies
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                self.requests.append(head + await reader.readexactly(length))
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
async def serving(replies: Script) -> AsyncIterator[Server]:
    server = Server(replies)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


async def get(client: UpstreamClient, server: Server) -> UpstreamResponse:
    return await client.request("GET", f"http://127.0.0.1:{server.port}/status", timeout_s=2.0)


async def test_one_connection_serves_request_after_request() -> None:
    async with serving([ok(b"1"), ok(b"2"), ok(b"3")]) as server:
        client = UpstreamClient()
        bodies = [(await get(client, server)).body for _ in range(3)]
        await client.aclose()
    assert bodies == [b"1", b"2", b"3"]
    assert server.connections == 1 and client.connections_opened == 1


async def test_params_headers_and_body_go_out_as_given() -> None:
    async with serving([ok()]) as server:
        client = UpstreamClient()
        await client.request(
            "POST",
            f"http://127.0.0.1:{server.port}/v1/query?x=1",
            params=(("task_id", "a b/ü"), ("sig", "k=v&w")),
            headers=(("X-Api-Key", "k1"),),
            body=b'{"a":1}',
            timeout_s=2.0,
        )
        await client.aclose()
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/query?x=1&task_id=a%20b%2F%C3%BC&sig=k%3Dv%26w HTTP/1.1"
    assert f"host: 127.0.0.1:{server.port}".encode() in lines
    assert b"X-Api-Key: k1" in lines and b"content-length: 7" in lines
    assert body == b'{"a":1}'


async def test_chunked_gzip_and_until_close_bodies_are_read_whole() -> None:
    packed = gzip.compress(b'{"state":"done"}')
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nset-cookie: a\r\nset-cookie: b\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    zipped = ok(packed, b"content-encoding: gzip")

    def until_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        writer.close()

    async with serving([chunked, zipped, until_close]) as server:
        client = UpstreamClient()
        first = await get(client, server)
        second = await get(client, server)
        third = await get(client, server)
        await client.aclose()
    assert first.body == b"hello world"
    assert first.headers["set-cookie"] == "a, b"
    assert second.body == b'{"state":"done"}'
    assert third.body == b"all of it"


async def test_a_kept_connection_the_upstream_closed_is_replaced_without_an_error() -> None:
    def answer_then_hang_up(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"first"))
        writer.close()  # but the reply said nothing of closing: the client keeps it

    async with serving([answer_then_hang_up, ok(b"second")]) as server:
        client = UpstreamClient()
        assert (await get(client, server)).body == b"first"
        await asyncio.sleep(0.05)
        assert (await get(client, server)).body == b"second"
        await client.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial", "closed before a complete"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "malformed HTTP response"),
        (ok(b"x" * 5000), "larger than 4096 bytes"),
        (ok(b"not gzip", b"content-encoding: gzip"), "content-encoding"),
    ],
)
async def test_broken_replies_fail_plainly_and_the_connection_is_dropped(
    reply: bytes, message: str
) -> None:
    def send_and_close(writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        writer.close()

    async with serving([send_and_close, ok(b"next")]) as server:
        client = UpstreamClient(max_body_bytes=4096)
        with pytest.raises(HttpFailure, match=message):
            await get(client, server)
        assert (await get(client, server)).body == b"next"
        await client.aclose()
    assert server.connections == 2  # the broken connection was never reused


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_not_reused() -> None:
    async def stall(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.0)

    async with serving([stall, ok(b"fresh")]) as server:
        client = UpstreamClient()
        with pytest.raises(UpstreamTimeout, match=r"no response within 0\.2 s"):
            await client.request("GET", f"http://127.0.0.1:{server.port}/s", timeout_s=0.2)
        assert client._idle.get(("http", "127.0.0.1", server.port)) in (None, [])
        await client.aclose()


async def test_a_refused_connection_and_bad_requests_say_what_failed() -> None:
    client = UpstreamClient()
    with pytest.raises(HttpFailure, match=r"cannot connect \(ConnectionRefusedError\)"):
        await client.request("GET", f"http://127.0.0.1:{free_port()}/", timeout_s=2.0)
    with pytest.raises(HttpFailure, match="line break"):
        await client.request(
            "GET", "http://127.0.0.1:1/", headers=(("X-A", "1\r\nX-B: 2"),), timeout_s=2.0
        )
    with pytest.raises(HttpFailure, match="not an http"):
        await client.request("GET", "ftp://example.com/x", timeout_s=2.0)
