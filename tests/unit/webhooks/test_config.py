"""The [webhooks] section: defaults, and errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import parse_config
from gateway.exceptions import ConfigError
from gateway.webhooks.settings import WebhooksConfig

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_off_by_default_with_safe_defaults() -> None:
    config = parse_config({}, env={})
    assert config.webhooks == WebhooksConfig()
    assert config.webhooks.secret is None
    assert config.webhooks.allow_private is False
    assert config.webhooks.max_age_s == 86400.0


def test_a_configured_secret_is_a_secret() -> None:
    config = parse_config({"webhooks": {"secret": "${HOOK_SECRET}"}}, env={"HOOK_SECRET": SECRET})
    assert config.webhooks.secret == SECRET
    assert SECRET in config.secret_values()


@pytest.mark.parametrize(
    ("section", "path", "fragment"),
    [
        ({"secret": "short"}, "webhooks.secret", "whsec_ followed by base64"),
        ({"secret": "a plain text secret of many bytes"}, "webhooks.secret", "whsec_ followed"),
        ({"secret": "whsec_c2hvcnQ="}, "webhooks.secret", "at least 16 bytes"),
        ({"secret": "whsec_***"}, "webhooks.secret", "not valid base64"),
        ({"allowed_hosts": ["https://hooks.example.com"]}, "webhooks.allowed_hosts[0]", "regex"),
        ({"max_age_s": 0}, "webhooks.max_age_s", "> 0"),
        ({"retries": 3}, "webhooks.retries", "unknown key"),
    ],
)
def test_bad_values_name_the_key(section: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"webhooks": section}, env={})
    assert info.value.path == path
    assert fragment in str(info.value)
