"""The aiohttp sender against hostile receivers on real sockets: deadlines, pinning, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from gateway.webhooks.sender import (
    AiohttpWebhookSender,
    Attempt,
    DeliveryFailed,
    DeliveryTimeout,
    PinnedResolver,
)
from gateway.webhooks.targets import UrlPolicy, check_url

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LOCAL = UrlPolicy(allow_private=True)


@contextlib.asynccontextmanager
async def serving(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A raw TCP server of the test's own; yields its port."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return head


def attempt(url: str, addresses: tuple[str, ...] = ("127.0.0.1",)) -> Attempt:
    return Attempt(check_url(url, LOCAL), addresses, b'{"x": 1}', {"webhook-id": "vp:t:1"})


async def drip(writer: asyncio.StreamWriter, data: bytes, *, every_s: float) -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(every_s)


@pytest.mark.parametrize(
    ("head", "body"),
    [
        # The status line and headers trickle in: every byte well within 0.5 s
        # of the previous one, the whole reply not.
        (b"HTTP/1.1 204 No Content\r\nX-Slow: " + b"a" * 14 + b"\r\n\r\n", b""),
        # Quick headers, then a body that trickles.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n", b"b" * 15),
    ],
)
async def test_one_deadline_covers_the_whole_reply(head: bytes, body: bytes) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if body:
            writer.write(head)
            await drip(writer, body, every_s=0.1)
        else:
            await drip(writer, head, every_s=0.03)

    async with serving(slow) as port:
        sender = AiohttpWebhookSender(timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(DeliveryTimeout, match=r"no answer within 0\.5 s"):
            await sender.post(attempt(f"http://127.0.0.1:{port}/in"))
        assert time.monotonic() - started < 0.9


async def test_a_huge_reply_body_is_not_read() -> None:
    sent = 0
    done = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
        chunk = b"z" * 65536
        try:
            while sent < 512 * 1024 * 1024:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        finally:
            done.set()

    async with serving(flood) as port:
        sender = AiohttpWebhookSender(timeout_s=5.0)
        started = time.monotonic()
        assert await sender.post(attempt(f"http://127.0.0.1:{port}/in")) == 200
        assert time.monotonic() - started < 2.0
        await asyncio.wait_for(done.wait(), 5)
    # What the kernel's socket buffers took before the sender hung up: megabytes, not 512 MiB.
    assert sent < 64 * 1024 * 1024, sent


async def test_redirects_are_answers_not_followed() -> None:
    followed = asyncio.Event()

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        followed.set()

    async with serving(elsewhere) as other:

        async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{other}/\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()

        async with serving(redirect) as port:
            status = await AiohttpWebhookSender(timeout_s=2).post(
                attempt(f"http://127.0.0.1:{port}/")
            )
    assert status == 307
    assert not followed.is_set()


async def test_the_request_goes_to_the_pinned_address_under_the_hosts_name() -> None:
    seen: list[bytes] = []

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async with serving(ok, host="127.0.0.2") as port:
        url = f"http://hooks.example:{port}/in?token=t0p"
        status = await AiohttpWebhookSender(timeout_s=2).post(attempt(url, ("127.0.0.2",)))
    assert status == 204
    [head] = seen
    assert head.startswith(b"POST /in?token=t0p HTTP/1.1\r\n")
    assert f"host: hooks.example:{port}\r\n".encode() in head.lower()


async def test_the_url_is_sent_as_registered_not_requoted() -> None:
    seen: list[bytes] = []

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async with serving(ok) as port:
        url = f"http://127.0.0.1:{port}/a%2Fb/%7Euser?sig=a%2Bb%3D"
        assert await AiohttpWebhookSender(timeout_s=2).post(attempt(url)) == 204
    assert seen[0].startswith(b"POST /a%2Fb/%7Euser?sig=a%2Bb%3D HTTP/1.1\r\n")


async def test_errors_name_the_failure_never_the_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, not listening: connection refused
        url = f"http://127.0.0.1:{closed}/in?token=s3cr3t-token"
        with pytest.raises(DeliveryFailed) as info:
            await AiohttpWebhookSender(timeout_s=2).post(attempt(url))
    assert not isinstance(info.value, DeliveryTimeout)
    assert info.value.message.startswith("connection failed (")
    assert "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "s3cr3t" not in caplog.text

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with serving(hang_up) as port:
        url = f"http://127.0.0.1:{port}/in?token=s3cr3t-token"
        with pytest.raises(DeliveryFailed, match="connection failed") as info:
            await AiohttpWebhookSender(timeout_s=2).post(attempt(url))
    assert "s3cr3t" not in str(info.value)


async def test_https_to_a_plain_http_receiver_is_a_tls_failure() -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    async with serving(plain) as port:
        with pytest.raises(DeliveryFailed, match=r"^TLS failed \("):
            await AiohttpWebhookSender(timeout_s=2).post(attempt(f"https://127.0.0.1:{port}/in"))


async def test_the_pinned_resolver_answers_only_its_host() -> None:
    resolver = PinnedResolver("hooks.example", ["93.184.216.34", "2606:2800:220:1::1"])
    answers = await resolver.resolve("hooks.example", 443)
    assert [(a["host"], a["port"], a["family"]) for a in answers] == [
        ("93.184.216.34", 443, socket.AF_INET),
        ("2606:2800:220:1::1", 443, socket.AF_INET6),
    ]
    with pytest.raises(OSError, match="no checked address"):
        await resolver.resolve("other.example", 443)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def tls_server(
    ca: trustme.CA, name: str, seen: list[str | None]
) -> tuple[asyncio.Server, int]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server_ctx)

    def sni(sock: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(server_name)

    server_ctx.sni_callback = sni  # type: ignore[assignment]

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            await read_request(reader)
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(ok, "127.0.0.1", 0, ssl=server_ctx)
    return server, int(server.sockets[0].getsockname()[1])


async def test_tls_goes_to_the_pinned_address_with_the_hosts_name_for_sni_and_cert(
    ca: trustme.CA,
) -> None:
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen: list[str | None] = []
    server, port = await tls_server(ca, "hooks.example", seen)
    try:
        sender = AiohttpWebhookSender(timeout_s=3, ssl_context=client_ctx)
        status = await sender.post(attempt(f"https://hooks.example:{port}/in"))
    finally:
        server.close()
        await server.wait_closed()
    assert status == 204
    assert seen == ["hooks.example"]  # SNI names the host, not 127.0.0.1


async def test_a_certificate_for_another_name_fails_the_attempt(ca: trustme.CA) -> None:
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen: list[str | None] = []
    server, port = await tls_server(ca, "other.example", seen)
    try:
        sender = AiohttpWebhookSender(timeout_s=3, ssl_context=client_ctx)
        with pytest.raises(
            DeliveryFailed, match=r"^TLS failed \(ClientConnectorCertificateError\)$"
        ):
            await sender.post(attempt(f"https://hooks.example:{port}/in"))
    finally:
        server.close()
        await server.wait_closed()


async def test_endless_reply_headers_fail_the_attempt_at_once() -> None:
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while sent < 256 * 1024 * 1024:
            writer.write(b"X-More: headers\r\n" * 4096)
            await writer.drain()
            sent += 17 * 4096

    async with serving(flood) as port:
        started = time.monotonic()
        with pytest.raises(DeliveryFailed, match=r"^unreadable reply \("):
            await AiohttpWebhookSender(timeout_s=5).post(attempt(f"http://127.0.0.1:{port}/in"))
        assert time.monotonic() - started < 2.0
    assert sent < 64 * 1024 * 1024


async def test_an_international_host_name_is_sent_as_idna_to_the_pinned_address() -> None:
    seen: list[bytes] = []

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async with serving(ok) as port:
        url = f"http://bücher.example:{port}/in"
        assert await AiohttpWebhookSender(timeout_s=2).post(attempt(url)) == 204
    assert f"host: xn--bcher-kva.example:{port}\r\n".encode() in seen[0].lower()
