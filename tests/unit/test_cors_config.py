"""server.cors_origins: credentials are allowed cross-origin, so no origin may be "any"."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.exceptions import ConfigError
from gateway.web.auth import origin_allowed


def config(origins: list[str]) -> list[str]:
    return parse_config({"server": {"cors_origins": origins}}, env={}).server.cors_origins


def test_star_is_refused_with_what_to_write_instead() -> None:
    with pytest.raises(ConfigError) as refused:
        config(["https://app.example.com", "*"])
    assert refused.value.path == "server.cors_origins"
    assert "pollcast_token cookie" in refused.value.message
    assert '["https://app.example.com"]' in refused.value.message
    assert str(refused.value).startswith("server.cors_origins: ")


@pytest.mark.parametrize(
    "origin",
    [
        "https://*",  # every https site, as the CORS middleware reads a "*" inside
        "*.example.com",
        "https://app.*.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "app.example.com",
        "null",
        "",
    ],
)
def test_anything_but_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config([origin])
    assert refused.value.path == "server.cors_origins"
    assert repr(origin) in refused.value.message


@pytest.mark.parametrize(
    "origins",
    [
        [],
        ["https://app.example.com"],
        ["http://localhost:5173", "http://127.0.0.1:8080", "http://[::1]:3000"],
        ["https://*.apps.example.com"],
    ],
)
def test_origins_are_accepted(origins: list[str]) -> None:
    assert config(origins) == origins


def test_socket_origins_match_like_cors() -> None:
    allowed = ["https://app.example.com", "https://*.apps.example.com"]
    assert origin_allowed("https://app.example.com", allowed)
    assert origin_allowed("https://a.apps.example.com", allowed)
    assert not origin_allowed("https://apps.example.com.evil.net", allowed)
    assert not origin_allowed("https://evil.net", allowed)
    assert not origin_allowed("https://evil.net", [])
