"""Which webhook URLs are refused, and why (SSRF rules)."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.exceptions import InvalidWebhook
from gateway.webhooks.targets import (
    HostUnresolved,
    UrlPolicy,
    check_address,
    check_url,
    embedded_ipv4,
    resolve_checked,
)

OPEN = UrlPolicy()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://hooks.example.com/x", "must start with https:// or http://"),
        ("file:///etc/passwd", "must start with https:// or http://"),
        ("gopher://hooks.example.com", "must start with https:// or http://"),
        ("https://user:pw@hooks.example.com/x", "must not carry credentials"),
        ("https://hooks.example.com/x#frag", "must not have a #fragment"),
        ("https:///path-only", "has no host"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
        ("https://hooks.example.com/a b", "whitespace or control characters"),
        ("https://hooks.example.com/" + "a" * 2100, "longer than 2048"),
    ],
)
def test_malformed_urls_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(InvalidWebhook) as info:
        check_url(url, OPEN)
    assert fragment in info.value.message
    assert info.value.field == "webhook.url"
    assert info.value.status == 422


def test_a_good_url_is_taken_apart() -> None:
    target = check_url("https://Hooks.Example.com./in?x=1", OPEN)
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert check_url("http://[::1]:8080/x", UrlPolicy(allow_private=True)).host == "::1"
    assert check_url("http://h.example.com/", OPEN).port == 80


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("hooks.example.com", True),
        ("api.hooks.example.com", True),  # *.hooks.example.com
        ("example.com", False),
        ("evil-hooks.example.com", False),
        ("hooks.example.com.evil.net", False),
        ("127.0.0.1", True),
    ],
)
def test_the_allow_list(host: str, allowed: bool) -> None:
    policy = UrlPolicy(allowed_hosts=("hooks.example.com", "*.hooks.example.com", "127.0.0.1"))
    url = f"https://{host}/in"
    if allowed:
        assert check_url(url, policy).host == host
    else:
        with pytest.raises(InvalidWebhook, match=r"not in webhooks\.allowed_hosts"):
            check_url(url, policy)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.5", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata endpoints live here
        ("fe80::1%eth0", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: judged as the IPv4 address
        ("100.64.0.1", "reserved"),  # carrier-grade NAT
        ("fc00::1", "private"),
    ],
)
def test_private_addresses_are_refused_unless_allowed(address: str, kind: str) -> None:
    with pytest.raises(InvalidWebhook) as info:
        check_address(address, OPEN)
    assert f"{kind} address" in info.value.message
    assert "webhooks.allow_private" in info.value.message
    check_address(address, UrlPolicy(allow_private=True))


@pytest.mark.parametrize("address", ["0.0.0.0", "224.0.0.1", "ff02::1", "::"])
def test_unspecified_and_multicast_are_refused_always(address: str) -> None:
    with pytest.raises(InvalidWebhook, match="not a unicast address"):
        check_address(address, UrlPolicy(allow_private=True))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
async def test_public_addresses_pass(address: str) -> None:
    target = check_url("https://hooks.example.com/in", OPEN)

    async def public(host: str, port: int) -> list[str]:
        return [address]

    # The checked address is the one the sender will connect to.
    assert await resolve_checked(target, OPEN, public) == [address]
    with pytest.raises(InvalidWebhook):  # the same check refuses a private neighbour
        check_address("10.0.0.7", OPEN)


async def test_every_resolved_address_must_pass() -> None:
    target = check_url("https://hooks.example.com/in", OPEN)

    async def mixed(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.com", 443)
        return ["93.184.216.34", "10.0.0.7"]

    with pytest.raises(InvalidWebhook, match=r"10\.0\.0\.7, a private address"):
        await resolve_checked(target, OPEN, mixed)

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    assert await resolve_checked(target, OPEN, public) == ["93.184.216.34"]


async def test_a_host_that_does_not_resolve() -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(HostUnresolved, match="does not resolve"):
        await resolve_checked(check_url("https://nope.invalid/", OPEN), OPEN, nxdomain)


async def test_the_system_resolver_finds_loopback_for_an_ip_literal() -> None:
    target = check_url("http://127.0.0.1:9/", UrlPolicy(allow_private=True))
    assert await resolve_checked(target, UrlPolicy(allow_private=True)) == ["127.0.0.1"]
    with pytest.raises(InvalidWebhook, match="loopback"):
        await resolve_checked(target, OPEN)


# IPv6 addresses that carry an IPv4 address: a NAT64 translator, a 6to4 relay
# or the host's own stack delivers to the IPv4 address, so that is what is judged.
@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 (RFC 6052) of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # 169.254.169.254, cloud metadata
        ("64:ff9b::c0a8:1", "private"),  # 192.168.0.1
        ("64:ff9b:1::a00:1", "private"),  # local-use NAT64 (RFC 8215) of 10.0.0.1
        ("64:ff9b:1::808:808", "private"),  # local-use prefix: never global
        ("2002:0a00:0001::", "private"),  # 6to4 (RFC 3056) of 10.0.0.1
        ("2002:7f00:1:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("::7f00:1", "loopback"),  # IPv4-compatible ::127.0.0.1 (RFC 4291)
        ("::10.0.0.1", "private"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
        ("::ffff:0:7f00:1", "loopback"),  # IPv4-translated ::ffff:0:127.0.0.1 (RFC 2765)
        ("::ffff:0:a9fe:a9fe", "link-local"),
        ("::ffff:0:6440:1", "reserved"),  # 100.64.0.1, carrier-grade NAT
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo: not global
    ],
)
def test_ipv4_embedded_in_ipv6_is_judged_as_that_ipv4(address: str, kind: str) -> None:
    with pytest.raises(InvalidWebhook) as info:
        check_address(address, OPEN)
    assert f"{kind} address" in info.value.message
    check_address(address, UrlPolicy(allow_private=True))


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("64:ff9b::808:808", "8.8.8.8"),
        ("2002:5db8:d822::1", "93.184.216.34"),
        ("::ffff:0:808:808", "8.8.8.8"),
        ("::ffff:8.8.8.8", "8.8.8.8"),
        ("::8.8.8.8", "8.8.8.8"),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
        ("::1", None),
        ("::", None),
    ],
)
def test_embedded_public_ipv4_passes(address: str, inner: str | None) -> None:
    ip = ipaddress.IPv6Address(address)
    found = embedded_ipv4(ip)
    assert (str(found) if found else None) == inner
    if inner is not None:
        check_address(address, OPEN)


@pytest.mark.parametrize(
    "address", ["64:ff9b::e000:1", "2002:e000:1::", "::ffff:0:0:0", "64:ff9b::", "::0.0.0.0"]
)
def test_embedded_multicast_and_unspecified_are_refused_always(address: str) -> None:
    with pytest.raises(InvalidWebhook, match="not a unicast address"):
        check_address(address, UrlPolicy(allow_private=True))


def test_a_resolver_answer_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(InvalidWebhook, match="not an IP address"):
        check_address("hooks.example.com", OPEN)
