"""The upstream HTTP client: HTTP/1.1 with keep-alive connections per origin, and no more.

Status polls are the gateway's hot path towards the upstreams. With httpx they
spent ~90 % of the poller's CPU (py-spy on ``make bench``'s poll step), half of
it in httpcore's pool, which re-examines every connection for every request:
1,590 polls/s with 2 in flight, 485 with 64. What a status endpoint needs is
small: send a request, read a response framed by ``Content-Length``, chunks or
the end of the connection, keep the connection for the next one. This is that,
on asyncio's protocol callbacks and httptools' response parser (llhttp, already
here under uvicorn).

Deliberately absent: redirects (an upstream that redirects a status call is
misconfigured; the 3xx is returned as is), proxies, cookies, HTTP/2.
Responses above ``max_body_bytes`` are refused, not buffered.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from urllib.parse import quote, urlencode, urlsplit

import certifi
import httptools

from gateway.providers.base import UpstreamResponse

__all__ = ["HttpFailure", "UpstreamClient", "UpstreamTimeout"]

USER_AGENT = "pollcast/1"
# Kept as they are in a path or query (RFC 3986 reserved and unreserved, and "%"
# so that an already-encoded URL is not encoded twice); anything else is escaped.
_URL_SAFE = "/%:@!$&'()*+,;=?-._~"
Origin = tuple[str, str, int]  # scheme, host, port


class HttpFailure(Exception):
    """The request got no usable response. The message never holds the URL
    (some upstreams sign requests in the query string)."""


class UpstreamTimeout(HttpFailure):
    pass


class _Closed(HttpFailure):
    def __init__(self, got_bytes: bool) -> None:
        super().__init__("connection closed before a complete response")
        self.got_bytes = got_bytes


class UpstreamClient:
    """Keep-alive connections to any number of origins; at most ``max_idle`` kept per origin.

    Concurrency is the caller's to bound (each provider lane admits at most
    its ``concurrency`` polls at once); a request never waits for a
    connection, it opens one if none is idle.
    """

    def __init__(
        self,
        *,
        max_idle: int = 10,
        max_body_bytes: int = 16 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_idle = max_idle
        self.max_body_bytes = max_body_bytes
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self.connections_opened = 0

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
        """One request and its whole response (header names lower-case, repeated
        headers joined with ", ").

        Raises:
            UpstreamTimeout: no complete response within ``timeout_s``.
            HttpFailure: could not connect, the connection broke, or the
                response was not HTTP/1.x or too large.
        """
        origin, head = _request_head(method, url, params, headers, body)
        raw = head + body if body else head
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                connection = self._checkout(origin)
                if connection is not None:
                    try:
                        reply = await connection.roundtrip(raw)
                    except _Closed as exc:
                        if exc.got_bytes:
                            raise
                        # The upstream closed this kept-alive connection as the
                        # request went out: nothing was answered; once more, anew.
                        connection = None
                    else:
                        self._checkin(origin, connection)
                        return reply
                connection = await self._connect(origin)
                reply = await connection.roundtrip(raw)
        except TimeoutError:
            if connection is not None:
                connection.close()
            raise UpstreamTimeout(f"no response within {timeout_s:g} s") from None
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        self._checkin(origin, connection)
        return reply

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for connection in pool:
                connection.close()
        self._idle.clear()

    def _checkout(self, origin: Origin) -> _Connection | None:
        pool = self._idle.get(origin)
        while pool:
            connection = pool.pop()
            if connection.usable:
                return connection
        return None

    def _checkin(self, origin: Origin, connection: _Connection) -> None:
        pool = self._idle.setdefault(origin, [])
        if connection.usable and len(pool) < self.max_idle:
            pool.append(connection)
        else:
            connection.close()

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context(cafile=certifi.where())
            tls = self._ssl
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self.max_body_bytes),
                host,
                port,
                ssl=tls,
                server_hostname=host if tls is not None else None,
            )
        except OSError as exc:  # refused, unreachable, DNS, TLS
            raise HttpFailure(f"cannot connect ({type(exc).__name__})") from None
        self.connections_opened += 1
        return connection


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, responses parsed as they arrive."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._got_bytes = False

    @property
    def usable(self) -> bool:
        return not self.closed and self.keep_alive and self._waiter is None

    async def roundtrip(self, raw: bytes) -> UpstreamResponse:
        assert self.transport is not None and self._waiter is None
        if self.closed:
            raise _Closed(got_bytes=False)
        self._reset()
        self.keep_alive = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpFailure(f"malformed HTTP response ({type(exc).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and self._reads_until_close():
            self._finish()  # HTTP/1.0 style: the body ended with the connection
        else:
            self._fail(_Closed(self._got_bytes))

    # -- httptools callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # a second response to one request: not to be trusted again

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body_bytes:
            self._fail(HttpFailure(f"response larger than {self.max_body_bytes} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim response: the real one follows
            self._reset()
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._finish()

    # -- internals ------------------------------------------------------------

    def _reads_until_close(self) -> bool:
        names = {name.lower() for name, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in self._headers:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = b"".join(self._body)
        try:
            body = _decode(body, headers.get("content-encoding", ""))
        except zlib.error:
            self.close()
            waiter.set_exception(HttpFailure("response body does not match its content-encoding"))
            return
        waiter.set_result(UpstreamResponse(self._status, headers, body))

    def _fail(self, error: HttpFailure) -> None:
        self.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)


def _decode(body: bytes, encoding: str) -> bytes:
    """gzip and deflate (sent only if a declarative provider asks for them)."""
    encoding = encoding.strip().lower()
    if not body or encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, wbits=zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:  # raw deflate, as some servers send it
            return zlib.decompress(body, wbits=-zlib.MAX_WBITS)
    return body  # unknown: the adapter will find it is not what it expects


def _request_head(
    method: str,
    url: str,
    params: tuple[tuple[str, str], ...],
    headers: tuple[tuple[str, str], ...],
    body: bytes | None,
) -> tuple[Origin, bytes]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise HttpFailure(f"not an http(s) URL (scheme {scheme!r})")
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    host = parts.hostname
    host_header = host if ":" not in host else f"[{host}]"
    if port != default_port:
        host_header += f":{port}"
    target = quote(parts.path or "/", safe=_URL_SAFE)
    query = quote(parts.query, safe=_URL_SAFE)
    if params:
        encoded = urlencode(params, quote_via=quote)
        query = f"{query}&{encoded}" if query else encoded
    if query:
        target += "?" + query
    lines = [f"{method.upper()} {target} HTTP/1.1", f"host: {host_header}"]
    given = set()
    for name, value in headers:
        if any(c in name or c in value for c in "\r\n\0"):
            raise HttpFailure(f"header {name[:40]!r} holds a line break")
        given.add(name.lower())
        lines.append(f"{name}: {value}")
    if "user-agent" not in given:
        lines.append(f"user-agent: {USER_AGENT}")
    if "accept" not in given:
        lines.append("accept: */*")
    if body is not None or method.upper() in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body or b'')}")
    if any(c in target for c in " \r\n"):
        raise HttpFailure("request target holds whitespace")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise HttpFailure("a header holds characters HTTP/1.1 cannot carry") from None
    return (scheme, host, port), head
