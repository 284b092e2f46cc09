"""The upstream client: aiohttp against scripted servers on real sockets, and the fake."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib

import pytest

from gateway.core.model import FaultKind
from gateway.exceptions import UpstreamError, UpstreamTimeout
from gateway.logs import configure_logging
from gateway.poller.exchange import send
from gateway.poller.upstream import (
    AiohttpUpstreamClient,
    HttpSettings,
    MockUpstream,
    UpstreamCall,
    UpstreamClient,
    request_target,
)
from gateway.providers.base import UpstreamRequest, UpstreamResponse
from tests.integration.gateway_server import free_port
from tests.scripted_upstream import ScriptedServer, ok, serving


async def get(client: AiohttpUpstreamClient, server: ScriptedServer) -> UpstreamResponse:
    return await client.request("GET", f"{server.url}/status", timeout_s=2.0)


async def test_one_connection_serves_request_after_request() -> None:
    async with serving([ok(b"1"), ok(b"2"), ok(b"3")]) as server:
        client = AiohttpUpstreamClient()
        bodies = [(await get(client, server)).body for _ in range(3)]
        await client.aclose()
    assert bodies == [b"1", b"2", b"3"]
    assert server.connections == 1


# The request lines the former hand-written client put on the wire for these
# inputs (its _request_head), byte for byte: signatures are computed over them.
WIRE_CASES = [
    (
        "/v2/aholo/project/task/list/by-ids",
        (
            ("appuid", "u/1"),
            ("appkey", "k+ey=="),
            ("timestamp", "1700000000000"),
            ("sign", "aB3+/=%7E~*'()!ü 空"),
        ),
        b"/v2/aholo/project/task/list/by-ids?appuid=u%2F1&appkey=k%2Bey%3D%3D"
        b"&timestamp=1700000000000&sign=aB3%2B%2F%3D%257E~%2A%27%28%29%21%C3%BC%20%E7%A9%BA",
    ),
    (
        "/api/status/ab%2Fcd?x=1&y=a+b%20c",
        (("task_id", "a b/ü"), ("sig", "k=v&w")),
        b"/api/status/ab%2Fcd?x=1&y=a+b%20c&task_id=a%20b%2F%C3%BC&sig=k%3Dv%26w",
    ),
    ("/p/ä b;x=1/[]?q=ä|^", (), b"/p/%C3%A4%20b;x=1/%5B%5D?q=%C3%A4%7C%5E"),
]


@pytest.mark.parametrize(("path", "params", "target"), WIRE_CASES)
async def test_the_request_target_reaches_the_wire_byte_for_byte(
    path: str, params: tuple[tuple[str, str], ...], target: bytes
) -> None:
    async with serving([ok()]) as server:
        client = AiohttpUpstreamClient()
        await client.request("GET", server.url + path, params=params, timeout_s=2.0)
        await client.aclose()
    request_line = server.requests[0].split(b"\r\n")[0]
    assert request_line == b"GET " + target + b" HTTP/1.1"
    assert request_target(server.url + path, params).path_query.encode() == target


async def test_params_headers_and_body_go_out_as_given() -> None:
    async with serving([ok()]) as server:
        client = AiohttpUpstreamClient()
        await client.request(
            "POST",
            f"{server.url}/v1/query?x=1",
            params=(("task_id", "a b/ü"), ("sig", "k=v&w")),
            headers=(("X-Api-Key", "k1"), ("X-Many", "a"), ("X-Many", "b")),
            body=b'{"a":1}',
            timeout_s=2.0,
        )
        await client.aclose()
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = [line.lower() for line in head.split(b"\r\n")]
    assert lines[0] == b"post /v1/query?x=1&task_id=a%20b%2f%c3%bc&sig=k%3dv%26w http/1.1"
    assert f"host: 127.0.0.1:{server.port}".encode() in lines
    assert b"x-api-key: k1" in lines and b"content-length: 7" in lines
    assert [line for line in lines if line.startswith(b"x-many")] == [b"x-many: a", b"x-many: b"]
    assert b"user-agent: pollcast/1" in lines
    # Nothing asks for a compressed reply unless the adapter does.
    assert not any(line.startswith(b"accept-encoding") for line in lines)
    assert body == b'{"a":1}'


async def test_chunked_gzip_deflate_and_until_close_bodies_are_read_whole() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nset-cookie: a\r\nset-cookie: b\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    zipped = ok(gzip.compress(b'{"state":"done"}'), b"content-encoding: gzip")
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = raw_deflate.compress(b"raw deflate") + raw_deflate.flush()
    deflate = ok(deflated, b"Content-Encoding: deflate")
    wrapped = ok(zlib.compress(b"zlib deflate"), b"content-encoding: deflate")

    def until_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        writer.close()

    packed = zlib.compress(b"one byte a chunk")
    one_byte_chunks = (
        b"HTTP/1.1 200 OK\r\ncontent-encoding: deflate\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"".join(b"1\r\n%s\r\n" % packed[i : i + 1] for i in range(len(packed)))
        + b"0\r\n\r\n"
    )

    async def dribble(writer: asyncio.StreamWriter) -> None:
        first = one_byte_chunks.index(b"\r\n\r\n") + 4 + 6  # the head and one 1-byte chunk
        writer.write(one_byte_chunks[:first])
        await writer.drain()
        await asyncio.sleep(0.05)  # the reader sees that one byte alone
        writer.write(one_byte_chunks[first:])

    script = [chunked, zipped, deflate, wrapped, dribble, until_close]
    async with serving(script) as server:
        client = AiohttpUpstreamClient()
        replies = [await get(client, server) for _ in range(6)]
        await client.aclose()
    assert [r.body for r in replies] == [
        b"hello world",
        b'{"state":"done"}',
        b"raw deflate",
        b"zlib deflate",
        b"one byte a chunk",
        b"all of it",
    ]
    assert replies[0].headers["set-cookie"] == "a, b"
    assert replies[2].headers["content-encoding"] == "deflate"  # names lower-case


async def test_redirects_are_returned_and_cookies_are_never_sent_back() -> None:
    redirect = (
        b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\nset-cookie: s=1\r\n"
        b"content-length: 0\r\n\r\n"
    )
    async with serving([redirect, ok()]) as server:
        client = AiohttpUpstreamClient()
        first = await get(client, server)
        await get(client, server)
        await client.aclose()
    assert first.status_code == 302 and first.headers["location"] == "/elsewhere"
    assert len(server.requests) == 2  # the redirect was not followed …
    assert b"cookie" not in server.requests[1].lower()  # … and the cookie not kept


async def test_a_kept_connection_the_upstream_closed_is_replaced_without_an_error() -> None:
    def answer_then_hang_up(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"first"))
        writer.close()  # but the reply said nothing of closing: the client keeps it

    async with serving([answer_then_hang_up, ok(b"second")]) as server:
        client = AiohttpUpstreamClient()
        assert (await get(client, server)).body == b"first"
        await asyncio.sleep(0.05)
        assert (await get(client, server)).body == b"second"
        await client.aclose()
    assert server.connections == 2


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_kept_connection_closed_as_the_request_went_out_is_retried_once(
    method: str,
) -> None:
    def hang_up(writer: asyncio.StreamWriter) -> None:
        writer.close()  # the request was read, and nothing answers it

    async with serving([ok(b"first"), hang_up, ok(b"second")]) as server:
        client = AiohttpUpstreamClient()
        url = f"{server.url}/v2/query"
        assert (await client.request(method, url, body=b"[]", timeout_s=2.0)).body == b"first"
        assert (await client.request(method, url, body=b"[]", timeout_s=2.0)).body == b"second"
        await client.aclose()
    assert server.connections == 2 and len(server.requests) == 3


async def test_an_upstream_that_never_answers_is_asked_twice_at_most() -> None:
    def hang_up(writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with serving([hang_up, hang_up, hang_up, ok()]) as server:
        client = AiohttpUpstreamClient()
        with pytest.raises(UpstreamError, match="closed before a complete response"):
            await client.request("POST", f"{server.url}/q", body=b"[]", timeout_s=2.0)
        await client.aclose()
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial", "closed before a complete"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", r"malformed HTTP response \(BadStatusLine\)"),
        (ok(b"x" * 5000), "larger than 4096 bytes"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1388\r\n" + b"x" * 5000,
            "larger than 4096 bytes",
        ),
        (ok(b"not gzip", b"content-encoding: gzip"), "content-encoding"),
        (
            ok(gzip.compress(b"y" * 3000, mtime=0)[:-12], b"content-encoding: gzip"),
            "content-encoding",
        ),
        (
            ok(gzip.compress(b"z" * 5000, mtime=0), b"content-encoding: gzip"),
            "larger than 4096 bytes",
        ),
    ],
)
async def test_broken_replies_fail_plainly_and_the_connection_is_dropped(
    reply: bytes, message: str
) -> None:
    def send_and_close(writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        writer.close()

    async with serving([send_and_close, ok(b"next")]) as server:
        client = AiohttpUpstreamClient(HttpSettings(max_body_bytes=4096))
        with pytest.raises(UpstreamError, match=message):
            await get(client, server)
        assert (await get(client, server)).body == b"next"
        await client.aclose()
    assert server.connections == 2  # the broken connection was never reused


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_not_reused() -> None:
    async def stall(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.0)

    async with serving([stall, ok(b"fresh")]) as server:
        client = AiohttpUpstreamClient()
        with pytest.raises(UpstreamTimeout, match=r"no response within 0\.2 s"):
            await client.request("GET", f"{server.url}/s", timeout_s=0.2)
        assert (await get(client, server)).body == b"fresh"
        await client.aclose()
    assert server.connections == 2


async def test_a_refused_connection_and_bad_requests_say_what_failed() -> None:
    client = AiohttpUpstreamClient()
    with pytest.raises(UpstreamError, match=r"cannot connect \(ConnectionRefusedError\)"):
        await client.request("GET", f"http://127.0.0.1:{free_port()}/", timeout_s=2.0)
    with pytest.raises(UpstreamError, match="line break"):
        await client.request(
            "GET", "http://127.0.0.1:1/", headers=(("X-A", "1\r\nX-B: 2"),), timeout_s=2.0
        )
    with pytest.raises(UpstreamError, match="other than ASCII"):
        await client.request("GET", "http://127.0.0.1:1/", headers=(("X-A", "é"),), timeout_s=2.0)
    with pytest.raises(UpstreamError, match="not an http"):
        await client.request("GET", "ftp://example.com/x", timeout_s=2.0)
    with pytest.raises(UpstreamError, match="port"):
        await client.request("GET", "http://127.0.0.1:99999/x", timeout_s=2.0)
    await client.aclose()


async def test_failures_never_carry_the_url_or_its_signed_query() -> None:
    client = AiohttpUpstreamClient()
    url = f"http://127.0.0.1:{free_port()}/v2/x?sign=SECRET-SIGNATURE"
    with pytest.raises(UpstreamError) as caught:
        await client.request("GET", url, params=(("appkey", "SECRET-KEY"),), timeout_s=2.0)
    await client.aclose()
    text = str(caught.value)
    assert "SECRET" not in text and "127.0.0.1" not in text and "/v2/x" not in text
    # Nothing chained that a traceback would print (aiohttp's errors hold the URL).
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# -- send(): what the poller sees -------------------------------------------------

REQUEST = UpstreamRequest(
    "GET", "http://upstream.test/api/status/t1", ("t1",), params=(("k", "v"),)
)


async def test_send_turns_network_failures_into_faults_without_the_url() -> None:
    def timeout(call: UpstreamCall) -> UpstreamResponse:
        raise UpstreamTimeout("no response within 1 s")

    def broken(call: UpstreamCall) -> UpstreamResponse:
        raise UpstreamError("connection closed before a complete response")

    slow = await send(MockUpstream(timeout), REQUEST, name="vp", timeout_s=1.0)
    cut = await send(MockUpstream(broken), REQUEST, name="vp", timeout_s=1.0)
    assert not isinstance(slow, UpstreamResponse) and not isinstance(cut, UpstreamResponse)
    assert (slow.kind, slow.message) == (FaultKind.TIMEOUT, "vp did not answer within 1 s")
    assert cut.kind is FaultKind.NETWORK
    assert cut.message == "vp: connection closed before a complete response"


async def test_the_fake_sees_the_request_as_the_wire_would_and_answers_it() -> None:
    async def handler(call: UpstreamCall) -> UpstreamResponse:
        await asyncio.sleep(0)
        return UpstreamResponse(200, {"Content-Type": "application/json"}, b"{}")

    fake = MockUpstream(handler)
    assert isinstance(fake, UpstreamClient)
    reply = await send(fake, REQUEST, name="vp", timeout_s=3.0)
    assert reply == UpstreamResponse(200, {"content-type": "application/json"}, b"{}")
    (call,) = fake.calls
    assert (call.method, call.path_query, call.timeout_s) == ("GET", "/api/status/t1?k=v", 3.0)
    assert call.target.origin == "http://upstream.test"
    await fake.aclose()
    closed = await send(fake, REQUEST, name="vp", timeout_s=3.0)
    assert not isinstance(closed, UpstreamResponse) and closed.kind is FaultKind.NETWORK


def test_aiohttp_client_loggers_stay_at_warning_even_at_debug() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    names = ("aiohttp.client", "aiohttp.internal", "httpx")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        configure_logging("json", level=logging.DEBUG)
        assert {n: logging.getLogger(n).getEffectiveLevel() for n in names} == dict.fromkeys(
            names, logging.WARNING
        )
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
