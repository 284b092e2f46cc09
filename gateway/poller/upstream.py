"""How a status poll reaches an upstream: one HTTP request, one bounded response.

The poller depends on :class:`UpstreamClient` only. In production that is
:class:`AiohttpUpstreamClient` (one ``aiohttp.ClientSession`` per provider); unit
tests give it a :class:`MockUpstream` whose handler answers in memory, the way
``httpx.MockTransport(handler)`` does.

What a client promises, whatever is behind it:

* header names come back lower-case, repeated headers joined with ``", "``;
* the request target reaches the wire exactly as :func:`request_target`
  encodes it (some upstreams sign the query string byte for byte);
* every failure is an :class:`~gateway.exceptions.UpstreamError` (a
  :class:`~gateway.exceptions.UpstreamTimeout` when time ran out) whose
  message never holds the URL, because a signed query string is a credential.

Deliberately absent: redirects (an upstream that redirects a status call is
misconfigured; the 3xx is returned as is), cookies, HTTP/2, and any way to
turn TLS verification off.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import ssl
import urllib.request
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Annotated, Any, Protocol, runtime_checkable
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import certifi
import msgspec
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from gateway.exceptions import UpstreamError, UpstreamTimeout
from gateway.providers.base import UpstreamResponse

__all__ = [
    "AiohttpUpstreamClient",
    "HttpSettings",
    "MockUpstream",
    "Target",
    "UpstreamCall",
    "UpstreamClient",
    "describe",
    "request_target",
    "ssl_context",
]

USER_AGENT = "pollcast/1"
# Kept as they are in a path or query (RFC 3986 reserved and unreserved, and "%"
# so that an already-encoded URL is not encoded twice); anything else is escaped.
_URL_SAFE = "/%:@!$&'()*+,;=?-._~"


class HttpSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A provider's HTTP options (keys of its ``[providers.NAME]`` table)."""

    proxy: str | None = None  # http://[user:password@]host:port
    trust_env: bool = False  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment
    ca_file: str | None = None  # PEM bundle trusted in addition to certifi's
    # The response body after decompression (and on the wire), refused beyond this.
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 16 * 1024 * 1024
    # The status line and each header line of a response, and how many header lines.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=256, le=1 << 20)] = 8190
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=10_000)] = 128


@runtime_checkable
class UpstreamClient(Protocol):
    """What the poller needs to reach an upstream."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: tuple[tuple[str, str], ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
        timeout_s: float,
    ) -> UpstreamResponse:
        """One request and its whole response, in at most ``timeout_s``.

        Raises:
            UpstreamTimeout: no complete response within ``timeout_s``.
            UpstreamError: the request could not be sent, or the response was
                broken, cut short or over a limit. The message never holds the URL.
        """
        ...

    async def aclose(self) -> None:
        """Close every connection; the client is not used again."""
        ...


# -- the request target --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A request URL split the way the wire needs it."""

    scheme: str
    host: str
    port: int
    path_query: str  # the request-target, percent-encoded, e.g. "/v1/x?a=1"

    @property
    def origin(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


def request_target(url: str, params: tuple[tuple[str, str], ...] = ()) -> Target:
    """``url`` plus ``params`` as they go on the wire.

    The path and the URL's own query keep every reserved character and every
    existing ``%XX``; ``params`` are appended with every byte but the
    unreserved ones escaped (``quote(safe="")``), so a signature computed over
    those strings matches what the upstream receives.

    Raises:
        UpstreamError: not an absolute http(s) URL, or whitespace in the target.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"not an http(s) URL (scheme {scheme!r})")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise UpstreamError("the URL's port is not a number in 0-65535") from None
    path_query = quote(parts.path or "/", safe=_URL_SAFE)
    query = quote(parts.query, safe=_URL_SAFE)
    if params:
        encoded = urlencode(params, quote_via=quote)
        query = f"{query}&{encoded}" if query else encoded
    if query:
        path_query += "?" + query
    if any(c in path_query for c in " \t\r\n"):
        raise UpstreamError("request target holds whitespace")
    return Target(scheme, parts.hostname, port, path_query)


@lru_cache(maxsize=4096)
def _wire(url: str, params: tuple[tuple[str, str], ...]) -> tuple[Target, URL]:
    """:func:`request_target` and its ``yarl.URL``, kept for URLs polled again and again.

    ``encoded=True``: yarl would otherwise re-quote the path and query.
    """
    target = request_target(url, params)
    return target, URL(target.origin + target.path_query, encoded=True)


@lru_cache(maxsize=1024)  # adapters send the same few header sets again and again
def _check_headers(headers: tuple[tuple[str, str], ...]) -> None:
    for name, value in headers:
        if any(c in name or c in value for c in "\r\n\0"):
            raise UpstreamError(f"header {name[:40]!r} holds a line break")
        if not (name.isascii() and value.isascii()):
            raise UpstreamError(f"header {name[:40]!r} holds characters other than ASCII")


def _join_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


# -- bounded body reading --------------------------------------------------------


class _BodyTooLarge(UpstreamError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"response larger than {limit} bytes")


class _BoundedBody:
    """Collects a body (decoding gzip or deflate) and refuses it past ``limit`` bytes.

    Both the bytes received and the bytes they decode to count against the
    limit, so neither a large reply nor a small one that inflates (a "zip
    bomb") is ever held whole: decompression asks zlib for at most one byte
    more than is left (``Decompress.decompress(data, max_length)``).
    """

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.size = 0
        self.chunks: list[bytes] = []
        encoding = encoding.strip().lower()
        self._zlib: Any = None  # zlib's Decompress type is not importable
        self._deflate = encoding == "deflate"
        self._head = b""  # "deflate": the first bytes, until there are two to look at
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit:
            raise _BodyTooLarge(self.limit)
        if self._deflate and self._zlib is None:
            # RFC 9110 §8.4.1.2: "deflate" is zlib-wrapped, yet some servers
            # send raw deflate; a zlib header's first two bytes are a multiple of 31.
            data = self._head + data
            if len(data) < 2:
                self._head = data  # too little to tell yet
                return
            self._head = b""
            wrapped = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._zlib = zlib.decompressobj(wbits=zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        if self._zlib is None:
            self._add(data)
            return
        if self._zlib.eof:
            return  # bytes after the end of the compressed stream: not part of the body
        try:
            out = self._zlib.decompress(data, self.limit - self.size + 1)
        except zlib.error:
            raise UpstreamError("response body does not match its content-encoding") from None
        if self._zlib.unconsumed_tail:
            raise _BodyTooLarge(self.limit)
        self._add(out)

    def _add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise _BodyTooLarge(self.limit)
        if data:
            self.chunks.append(data)

    def result(self) -> bytes:
        if self._head or (self._zlib is not None and not self._zlib.eof):
            raise UpstreamError("response body does not match its content-encoding")
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


# -- aiohttp ---------------------------------------------------------------------


class _ResponseHandler(ResponseHandler):
    """aiohttp's connection protocol, refusing a body the peer cut off with a reset.

    A body delimited by the end of the connection (no Content-Length, not
    chunked) is complete only if the connection ended cleanly (FIN). aiohttp
    ends such a body on any close; on a reset (``exc`` set) the body is marked
    failed here first, so the reader gets an error instead of a prefix.
    """

    def connection_lost(self, exc: BaseException | None) -> None:
        payload = self._payload
        if exc is not None and payload is not None and not payload.is_eof():
            payload.set_exception(
                aiohttp.ClientPayloadError("connection reset before the response was complete"),
                exc,
            )
        super().connection_lost(exc)


class _Connector(aiohttp.TCPConnector):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = partial(_ResponseHandler, loop=self._loop)  # type: ignore[assignment]


def _proxy_parts(proxy: str) -> tuple[URL, tuple[tuple[str, str], ...]]:
    """The proxy URL without credentials, and the header that carries them."""
    url = URL(proxy)
    if url.user is None:
        return url, ()
    token = f"{url.user}:{url.password or ''}".encode()  # yarl has decoded them
    auth = "Basic " + base64.b64encode(token).decode("ascii")
    return url.with_user(None).with_password(None), (("Proxy-Authorization", auth),)


def ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """certifi's roots, plus ``ca_file``'s; certificates and hostnames always verified.

    Raises:
        OSError: ``ca_file`` cannot be read.
        ssl.SSLError: ``ca_file`` holds no PEM certificate.
    """
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
_COMPRESSED = frozenset(("gzip", "x-gzip", "deflate"))


class AiohttpUpstreamClient:
    """An :class:`UpstreamClient` on one ``aiohttp.ClientSession`` (one provider).

    Connections are kept alive and reused, at most ``concurrency`` at once
    (the provider's own limit); DNS answers are cached; redirects are not
    followed and cookies are not kept. The session is opened on first use,
    inside the running event loop.
    """

    def __init__(self, settings: HttpSettings | None = None, *, concurrency: int = 16) -> None:
        self.settings = settings or HttpSettings()
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._proxy: tuple[URL, tuple[tuple[str, str], ...]] | None = None
        self._env_proxies: dict[str, str] | None = None
        self._proxy_for: dict[str, tuple[URL, tuple[tuple[str, str], ...]] | None] = {}
        if self.settings.proxy:
            self._proxy = _proxy_parts(self.settings.proxy)

    def _open(self) -> aiohttp.ClientSession:
        s = self.settings
        if self._ssl is None:
            self._ssl = ssl_context(s.ca_file)
        if s.trust_env and self._env_proxies is None:
            self._env_proxies = urllib.request.getproxies_environment()
        connector = _Connector(limit=self.concurrency, ssl=self._ssl, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=_NO_TIMEOUT,  # one asyncio.timeout() per request covers it all
            auto_decompress=False,  # decoded here, within max_body_bytes
            headers={"User-Agent": USER_AGENT},
            skip_auto_headers=("Accept-Encoding",),
            max_line_size=s.max_header_bytes,
            max_field_size=s.max_header_bytes,
            max_headers=s.max_headers,
            trust_env=False,  # the environment's proxies are read here (no ~/.netrc)
        )
        return self._session

    def _proxy_of(self, target: Target) -> tuple[URL, tuple[tuple[str, str], ...]] | None:
        if self._proxy is not None or self._env_proxies is None:
            return self._proxy
        origin = target.origin
        if origin not in self._proxy_for:
            proxies = self._env_proxies
            found = proxies.get(target.scheme)
            # proxy_bypass_environment applies NO_PROXY (host, host:port, suffixes, "*").
            bypass = urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                f"{target.host}:{target.port}", proxies
            )
            self._proxy_for[origin] = _proxy_parts(found) if found and not bypass else None
        return self._proxy_for[origin]

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: tuple[tuple[str, str], ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
        timeout_s: float,
    ) -> UpstreamResponse:
        target, wire_url = _wire(url, params)
        _check_headers(headers)
        session = self._session or self._open()
        proxy = self._proxy_of(target)
        # aiohttp sends an idempotent request once more by itself when the
        # connection closed before any answer; a status query is a read
        # whatever its method, so a POST gets that second chance here.
        retries = 0 if method.upper() in aiohttp.client.IDEMPOTENT_METHODS else 1
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    try:
                        async with session.request(
                            method,
                            wire_url,
                            headers=headers,
                            data=body,
                            allow_redirects=False,
                            proxy=proxy[0] if proxy else None,
                            proxy_headers=proxy[1] if proxy and proxy[1] else None,
                        ) as reply:
                            content = await self._read(reply)
                            headers_in = _join_headers(reply.raw_headers)
                            return UpstreamResponse(reply.status, headers_in, content)
                    except aiohttp.ServerDisconnectedError:
                        if not retries:
                            raise
                        retries -= 1
        except TimeoutError:
            raise UpstreamTimeout(f"no response within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            # "from None": aiohttp's exceptions carry the request URL (and so
            # a signed query string) into any traceback that would show them.
            raise UpstreamError(describe(exc, self.settings)) from None
        except ValueError as exc:  # aiohttp's own check of a header or URL
            raise UpstreamError(f"request not sendable ({type(exc).__name__})") from None

    async def _read(self, reply: aiohttp.ClientResponse) -> bytes:
        limit = self.settings.max_body_bytes
        length = reply.content_length
        if length is not None and length > limit:
            raise _BodyTooLarge(limit)
        encoding = reply.headers.get("Content-Encoding", "")
        if length is not None and encoding.strip().lower() not in _COMPRESSED:
            return await reply.read()  # framed and within the limit: read in one go
        collected = _BoundedBody(encoding, limit)
        stream = reply.content
        while chunk := await stream.readany():
            collected.feed(chunk)
        return collected.result()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def describe(exc: aiohttp.ClientError, settings: HttpSettings) -> str:
    """A translated aiohttp failure: what went wrong, never where (no URL)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", None) or type(cert_error).__name__
        return f"TLS certificate not accepted ({reason})"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS handshake failed ({type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot connect to the proxy ({type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"the proxy refused the tunnel (HTTP {exc.status})"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        if isinstance(_innermost(exc), ConnectionResetError):
            return "connection reset before the response was complete"
        return "connection closed before a complete response"
    if isinstance(exc, aiohttp.ClientResponseError):  # the response head did not parse
        cause = _innermost(exc)
        if isinstance(cause, aiohttp.http_exceptions.LineTooLong):
            return f"response head line longer than {settings.max_header_bytes} bytes"
        if "Too many headers" in str(cause):
            return f"response head has more than {settings.max_headers} header lines"
        return f"malformed HTTP response ({type(cause).__name__})"
    if isinstance(exc, aiohttp.ClientOSError):
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return f"connection failed ({name})"
    return f"request failed ({type(exc).__name__})"


def _innermost(exc: BaseException) -> BaseException:
    seen = 0
    while exc.__cause__ is not None and seen < 8:
        exc, seen = exc.__cause__, seen + 1
    return exc


# -- the in-memory fake ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """A request as a :class:`MockUpstream` handler sees it."""

    method: str
    url: str  # as the adapter gave it, before params
    target: Target  # where it would go and the exact request-target
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout_s: float

    @property
    def path_query(self) -> str:
        return self.target.path_query


Handler = Callable[[UpstreamCall], UpstreamResponse | Awaitable[UpstreamResponse]]


@dataclass
class MockUpstream:
    """An in-memory :class:`UpstreamClient`: ``handler`` answers every request.

    Like ``httpx.MockTransport(handler)``: the handler gets the request (an
    :class:`UpstreamCall`) and returns an :class:`UpstreamResponse` (or an
    awaitable of one), or raises (an ``UpstreamError`` to play a network
    failure). The request is encoded and checked as the real client would,
    so a handler can assert on ``call.path_query``. Header names of the reply
    are lower-cased as the real client's are.
    """

    handler: Handler
    calls: list[UpstreamCall] = field(default_factory=list)
    closed: bool = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: tuple[tuple[str, str], ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
        timeout_s: float,
    ) -> UpstreamResponse:
        if self.closed:
            raise UpstreamError("client is closed")
        call = UpstreamCall(method, url, request_target(url, params), headers, body, timeout_s)
        _check_headers(headers)
        self.calls.append(call)
        reply = self.handler(call)
        if not isinstance(reply, UpstreamResponse):
            reply = await reply
        if any(name != name.lower() for name in reply.headers):
            reply = UpstreamResponse(
                reply.status_code, {k.lower(): v for k, v in reply.headers.items()}, reply.body
            )
        return reply

    async def aclose(self) -> None:
        self.closed = True
