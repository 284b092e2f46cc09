"""Which URLs pollcast will POST to: a guard against server-side request forgery.

A webhook URL comes from a client, and the gateway sits next to internal
services; so (OWASP SSRF Prevention Cheat Sheet, "allow-list" and "block
private ranges"):

* only ``http`` and ``https`` URLs, with a host, without credentials or a fragment;
* if ``allowed_hosts`` is set, the host must be one of them (``*.example.com``
  matches any subdomain of example.com, not example.com itself);
* every address the host resolves to must be a public (globally routable)
  unicast address — loopback, private, link-local, shared, multicast and
  reserved ranges are refused — unless ``allow_private`` is set;
* the check runs at registration *and* before every delivery attempt, and the
  attempt connects to the very address that was checked, so a DNS answer that
  changes in between (DNS rebinding) cannot redirect it;
* redirects are never followed (a 3xx is a failed attempt).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.exceptions import InvalidWebhook

__all__ = [
    "MAX_URL_LENGTH",
    "HostUnresolved",
    "Resolver",
    "UrlPolicy",
    "WebhookUrl",
    "check_address",
    "check_url",
    "resolve_checked",
    "system_resolver",
]

MAX_URL_LENGTH = 2048

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) → addresses`` (IP literals as text)."""


class HostUnresolved(InvalidWebhook):
    """The host has no address right now; a later attempt may succeed."""


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False

    def host_allowed(self, host: str) -> bool:
        if not self.allowed_hosts:
            return True
        for entry in self.allowed_hosts:
            pattern = entry.lower().rstrip(".")
            if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
                return True
        return False


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """A URL that passed :func:`check_url`. ``host`` is lower-case, without brackets."""

    url: str
    scheme: str
    host: str
    port: int


def check_url(url: str, policy: UrlPolicy) -> WebhookUrl:
    """Check the URL's shape and host name (no DNS yet).

    Raises:
        InvalidWebhook: saying which rule the URL breaks.
    """
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhook(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidWebhook("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhook(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidWebhook("the URL must start with https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook("the URL must not carry credentials (user:password@)")
    if parts.fragment:
        raise InvalidWebhook("the URL must not have a #fragment")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidWebhook("the URL has no host")
    if not policy.host_allowed(host):
        raise InvalidWebhook(f"host {host!r} is not in webhooks.allowed_hosts")
    if port is None:
        port = 443 if scheme == "https" else 80
    return WebhookUrl(url=url, scheme=scheme, host=host, port=port)


def check_address(address: str, policy: UrlPolicy) -> None:
    """Refuse an address that is not public, unless the policy allows private ones.

    Raises:
        InvalidWebhook: naming the kind of address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified:
        raise InvalidWebhook(f"the host resolves to {ip}, which is not a unicast address")
    if policy.allow_private or ip.is_global:
        return
    if ip.is_loopback:
        kind = "a loopback"
    elif ip.is_link_local:
        kind = "a link-local"
    elif ip.is_private:
        kind = "a private"
    else:
        kind = "a reserved"
    raise InvalidWebhook(
        f"the host resolves to {ip}, {kind} address (set webhooks.allow_private to permit)"
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, by the system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_checked(
    target: WebhookUrl, policy: UrlPolicy, resolver: Resolver = system_resolver
) -> Sequence[str]:
    """Resolve the host and check every address it has.

    Raises:
        HostUnresolved: the host does not resolve (now).
        InvalidWebhook: one of its addresses is refused.
    """
    try:
        addresses = await resolver(target.host, target.port)
    except OSError:
        raise HostUnresolved(f"host {target.host!r} does not resolve") from None
    if not addresses:
        raise HostUnresolved(f"host {target.host!r} does not resolve")
    for address in addresses:
        check_address(address, policy)
    return addresses
