"""TLS to upstreams (always verified) and CONNECT proxies, with certificates from trustme."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from gateway.exceptions import UpstreamError
from gateway.poller.upstream import AiohttpUpstreamClient, HttpSettings
from tests.scripted_upstream import listening, ok, read_request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    yield str(path)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(ok(b'{"status":"processing"}'))
        await writer.drain()


@asynccontextmanager
async def tls_upstream(cert: trustme.LeafCert) -> AsyncIterator[int]:
    async with listening(answer, ssl=server_context(cert)) as port:
        yield port


async def get(transport: AiohttpUpstreamClient, port: int, host: str = "127.0.0.1") -> bytes:
    try:
        url = f"https://{host}:{port}/api/status/t1"
        return (await transport.request("GET", url, timeout_s=5.0)).body
    finally:
        await transport.aclose()


async def test_a_custom_ca_bundle_is_trusted_besides_certifis(ca: trustme.CA, ca_file: str) -> None:
    async with tls_upstream(ca.issue_cert("127.0.0.1")) as port:
        assert await get(AiohttpUpstreamClient(HttpSettings(ca_file=ca_file)), port) == (
            b'{"status":"processing"}'
        )
        # Without the bundle the same upstream is not trusted: certifi's roots alone.
        with pytest.raises(UpstreamError, match="TLS certificate not accepted"):
            await get(AiohttpUpstreamClient(), port)


async def test_a_certificate_for_another_host_is_refused(ca: trustme.CA, ca_file: str) -> None:
    async with tls_upstream(ca.issue_cert("upstream.example")) as port:
        with pytest.raises(UpstreamError, match=r"TLS certificate not accepted \(.*mismatch"):
            await get(AiohttpUpstreamClient(HttpSettings(ca_file=ca_file)), port)


async def test_an_expired_certificate_is_refused(ca: trustme.CA, ca_file: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expired = ca.issue_cert(
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    async with tls_upstream(expired) as port:
        with pytest.raises(UpstreamError, match=r"TLS certificate not accepted \(.*expired"):
            await get(AiohttpUpstreamClient(HttpSettings(ca_file=ca_file)), port)


# -- CONNECT proxies ----------------------------------------------------------------


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy: reads the request, opens the tunnel, pipes bytes both ways."""

    port: int = 0
    heads: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        method, target, _ = head.split(b"\r\n")[0].split(b" ")
        if method != b"CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            return
        host, _, port = target.decode().rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@asynccontextmanager
async def connect_proxy() -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy()
    async with listening(proxy.handle) as port:
        proxy.port = port
        yield proxy


async def test_a_request_goes_through_a_connect_proxy_with_its_credentials(
    ca: trustme.CA, ca_file: str
) -> None:
    async with tls_upstream(ca.issue_cert("127.0.0.1")) as port, connect_proxy() as proxy:
        settings = HttpSettings(proxy=f"http://user:p%40ss@127.0.0.1:{proxy.port}", ca_file=ca_file)
        assert await get(AiohttpUpstreamClient(settings), port) == b'{"status":"processing"}'
    (head,) = proxy.heads
    lines = head.split(b"\r\n")
    assert lines[0] == f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode()
    token = base64.b64encode(b"user:p@ss")
    assert b"proxy-authorization: basic " + token.lower() in [line.lower() for line in lines]


async def test_trust_env_takes_the_proxy_from_the_environment_and_honours_no_proxy(
    ca: trustme.CA, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with (
        tls_upstream(ca.issue_cert("127.0.0.1", "localhost")) as port,
        connect_proxy() as proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "localhost")
        ignoring = AiohttpUpstreamClient(HttpSettings(ca_file=ca_file))
        assert await get(ignoring, port) == b'{"status":"processing"}'
        assert proxy.heads == []  # trust_env off: the environment is not read
        trusting = AiohttpUpstreamClient(HttpSettings(ca_file=ca_file, trust_env=True))
        assert await get(trusting, port) == b'{"status":"processing"}'
        assert len(proxy.heads) == 1 and proxy.heads[0].startswith(b"CONNECT 127.0.0.1:")
        bypassing = AiohttpUpstreamClient(HttpSettings(ca_file=ca_file, trust_env=True))
        assert await get(bypassing, port, host="localhost") == b'{"status":"processing"}'
        assert len(proxy.heads) == 1  # NO_PROXY: straight to the upstream


async def test_a_proxy_that_refuses_the_tunnel_is_a_plain_failure(
    ca: trustme.CA, ca_file: str
) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async with listening(refuse) as proxy_port:
        settings = HttpSettings(proxy=f"http://127.0.0.1:{proxy_port}", ca_file=ca_file)
        with pytest.raises(UpstreamError, match=r"the proxy refused the tunnel \(HTTP 403\)"):
            await get(AiohttpUpstreamClient(settings), 9)
