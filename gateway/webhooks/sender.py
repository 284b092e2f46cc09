"""One webhook POST over aiohttp, to the address that passed the SSRF check.

:class:`AiohttpWebhookSender` is the production :class:`WebhookSender`; tests
of the delivery loop may inject another. Its guarantees:

* **The checked address, and only it.** Each attempt gets its own
  ``TCPConnector`` whose resolver (:class:`PinnedResolver`) answers only for
  the URL's host, and only with the addresses
  :func:`~gateway.webhooks.targets.resolve_checked` approved; there is no
  DNS cache and no second lookup. ``Host``, TLS SNI and the certificate check
  still use the host name, because the URL keeps it.
* **No connection outlives its attempt.** aiohttp pools connections by
  (host, port, TLS) — not by the address they were opened to — so a kept
  connection opened after yesterday's check would carry today's delivery to
  yesterday's address, past the check made for it. A connector per attempt
  with ``force_close`` rules that out; the price is one TCP (and TLS)
  handshake per delivery, small next to a delivery's own cost and rate.
* **One deadline for the whole attempt**: connect, TLS, sending the body and
  reading the reply all fit in ``timeout_s`` (``asyncio.timeout`` around the
  lot, plus aiohttp's ``ClientTimeout(total=...)``); a receiver that drips
  its reply cannot stretch it.
* **Bounded reply.** Redirects are not followed, the body is not
  decompressed, and at most ``max_reply_bytes`` of it are read; the rest is
  dropped with the connection.
* **Errors translated here**: :class:`DeliveryFailed` (and
  :class:`DeliveryTimeout`), whose message names the kind of failure but
  never the URL (its path or query may hold the receiver's token).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import SocketFactoryType

from gateway import tracing
from gateway.exceptions import UpstreamError
from gateway.webhooks.targets import WebhookUrl

__all__ = [
    "MAX_REPLY_BYTES",
    "AiohttpWebhookSender",
    "Attempt",
    "DeliveryFailed",
    "DeliveryTimeout",
    "PinnedResolver",
    "WebhookSender",
]

MAX_REPLY_BYTES = 64 * 1024  # a receiver's reply body is read up to this, then dropped


class DeliveryFailed(UpstreamError):
    """An attempt failed before a complete HTTP answer (refused, reset, TLS, ...)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class DeliveryTimeout(DeliveryFailed):
    """The attempt did not finish within its deadline."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST: ``target`` is the checked URL, ``addresses`` what its host may be reached at."""

    target: WebhookUrl
    addresses: Sequence[str]
    body: bytes
    headers: Mapping[str, str]


class WebhookSender(Protocol):
    async def post(self, attempt: Attempt) -> int:
        """Send ``attempt``; the HTTP status of the answer.

        Raises:
            DeliveryFailed: no complete answer (``DeliveryTimeout``: not in time).
        """
        ...


class PinnedResolver(AbstractResolver):
    """Resolves one host name to the addresses already checked for it, and nothing else."""

    def __init__(self, host: str, addresses: Sequence[str]) -> None:
        self.host = host
        self.addresses = tuple(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.host:
            # Only the attempt's own URL is ever connected to; anything else is a bug.
            raise OSError(f"no checked address for {host!r}")
        results: list[ResolveResult] = []
        for address in self.addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            results.append(
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        return results

    async def close(self) -> None:
        pass


class AiohttpWebhookSender:
    """The gateway's webhook sender (see the module docstring for its guarantees)."""

    def __init__(
        self,
        *,
        timeout_s: float,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        socket_factory: SocketFactoryType | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.socket_factory = socket_factory  # tests: see which address a connect goes to
        self.max_reply_bytes = max_reply_bytes
        # None: aiohttp's default, certificates checked against the system's CAs.
        self.ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def post(self, attempt: Attempt) -> int:
        webhook_id = attempt.headers.get("webhook-id", "")
        with tracing.span("pollcast.webhook_attempt", {"pollcast.webhook.id": webhook_id}) as span:
            try:
                status = await self._attempt(attempt)
            except DeliveryFailed as exc:
                span.set_attribute("pollcast.outcome", type(exc).__name__)
                raise
            span.set_attribute("pollcast.outcome", status)
            return status

    async def _attempt(self, attempt: Attempt) -> int:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(attempt)
        except TimeoutError:
            raise DeliveryTimeout(f"no answer within {self.timeout_s:g} s") from None
        except (ssl.SSLError, aiohttp.ClientSSLError) as exc:
            raise DeliveryFailed(f"TLS failed ({type(exc).__name__})") from None
        except aiohttp.ClientResponseError as exc:  # a reply aiohttp will not parse
            raise DeliveryFailed(f"unreadable reply ({type(exc).__name__})") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # The type only: aiohttp's messages may quote the URL, query and all.
            raise DeliveryFailed(f"connection failed ({type(exc).__name__})") from None

    async def _post(self, attempt: Attempt) -> int:
        raw = attempt.target.url
        # Sent as registered: yarl would otherwise re-quote the path and query.
        url = yarl.URL(raw, encoded=raw.isascii())
        headers = dict(attempt.headers)
        tracing.inject(headers)  # W3C traceparent of this attempt's span, when tracing is on
        resolver = PinnedResolver(url.raw_host or "", attempt.addresses)
        connector = aiohttp.TCPConnector(
            resolver=resolver,
            use_dns_cache=False,
            force_close=True,
            limit=1,
            ssl=self.ssl,
            socket_factory=self.socket_factory,
        )
        async with (
            aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # no proxy from the environment: it would see the checked host
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as session,
            session.post(
                url, data=attempt.body, headers=headers, allow_redirects=False
            ) as response,
        ):
            left = self.max_reply_bytes
            while left > 0 and (chunk := await response.content.read(min(left, 16384))):
                left -= len(chunk)
            return response.status
