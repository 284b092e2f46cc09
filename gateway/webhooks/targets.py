"""Which URLs pollcast will POST to: a guard against server-side request forgery.

A webhook URL comes from a client, and the gateway sits next to internal
services; so (OWASP SSRF Prevention Cheat Sheet, "allow-list" and "block
private ranges"):

* only ``http`` and ``https`` URLs, with a host, without credentials or a fragment;
* if ``allowed_hosts`` is set, the host must be one of them (``*.example.com``
  matches any subdomain of example.com, not example.com itself);
* every address the host resolves to must be a public (globally routable)
  unicast address — loopback, private, link-local, shared, multicast and
  reserved ranges are refused — unless ``allow_private`` is set; an IPv6
  address that carries an IPv4 address (NAT64, 6to4, IPv4-mapped,
  -compatible or -translated) is judged as the IPv4 address it carries,
  since that is where a translator or relay would send the request;
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
    "embedded_ipv4",
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


# IPv6 forms whose last 32 bits are an IPv4 address that a translator on
# the path delivers to (RFC 6052 §2.4 for NAT64 with a /96 prefix, RFC 8215
# for the local-use NAT64 prefix, RFC 4291 §2.5.5 for IPv4-compatible and
# -mapped, RFC 2765 §2.1 for IPv4-translated).
_LOW32_EMBEDDING = tuple(
    ipaddress.IPv6Network(net)
    for net in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0/96", "::ffff:0:0:0/96", "::/96")
)
# Not globally reachable (IANA IPv6 Special-Purpose Address Registry), though
# Python 3.11's ``is_global`` does not know it: the local-use NAT64 prefix,
# whose IPv4 may sit at any RFC 6052 position the operator chose.
_LOCAL_USE_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, or ``None``.

    Teredo (``2001::/32``) is not unwrapped: its client address is the far
    side of a relay, and the prefix is not globally reachable anyway, so it
    stays refused unless private addresses are allowed.
    """
    if ip.sixtofour is not None:  # 2002::/16: bits 16–47 (RFC 3056 §2)
        return ip.sixtofour
    if int(ip) <= 1:  # :: and ::1 are IPv6's own unspecified and loopback
        return None
    for net in _LOW32_EMBEDDING:
        if ip in net:
            return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def check_address(address: str, policy: UrlPolicy) -> None:
    """Refuse an address that is not public, unless the policy allows private ones.

    Raises:
        InvalidWebhook: naming the kind of address.
    """
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            address.split("%", 1)[0]  # drop an IPv6 zone id
        )
    except ValueError:
        raise InvalidWebhook("the host resolves to something that is not an IP address") from None
    shown = str(ip)
    local_use = isinstance(ip, ipaddress.IPv6Address) and ip in _LOCAL_USE_NAT64
    if isinstance(ip, ipaddress.IPv6Address) and (inner := embedded_ipv4(ip)) is not None:
        shown = f"{ip} (IPv4 {inner})" if ip.ipv4_mapped is None else str(inner)
        ip = inner
    if ip.is_multicast or ip.is_unspecified:
        raise InvalidWebhook(f"the host resolves to {shown}, which is not a unicast address")
    if policy.allow_private or (ip.is_global and not local_use):
        return
    if ip.is_loopback:
        kind = "a loopback"
    elif ip.is_link_local:
        kind = "a link-local"
    elif ip.is_private or local_use:
        kind = "a private"
    else:
        kind = "a reserved"
    raise InvalidWebhook(
        f"the host resolves to {shown}, {kind} address (set webhooks.allow_private to permit)"
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
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        pass
    else:  # an IP literal is its own address: the connection goes there, whatever DNS says
        check_address(str(literal), policy)
        return [str(literal)]
    try:
        addresses = await resolver(target.host, target.port)
    except OSError:
        raise HostUnresolved(f"host {target.host!r} does not resolve") from None
    if not addresses:
        raise HostUnresolved(f"host {target.host!r} does not resolve")
    for address in addresses:
        check_address(address, policy)
    return addresses
