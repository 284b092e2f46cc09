"""What every adapter must do alike: transport errors, broken bodies, settings, registry."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.core.model import FaultKind, State
from gateway.exceptions import ConfigError
from gateway.providers import ADAPTERS, adapter_class
from gateway.providers.aholo import AholoAdapter
from gateway.providers.ailab import AilabAdapter
from gateway.providers.base import Adapter
from gateway.providers.declarative import DeclarativeAdapter
from gateway.providers.genpic import GenpicAdapter
from gateway.providers.tryon import TryonAdapter
from gateway.providers.videoproc import VideoprocAdapter
from tests.unit.providers.support import CASES, build, fault_of, observe, reply

KINDS = sorted(CASES)
HTML_PAGE = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"


def adapter_and_request(kind: str) -> tuple[Adapter, Any]:
    factory, task_ids = CASES[kind]
    adapter = factory()
    return adapter, build(adapter, task_ids)


def single_fault(kind: str, body: bytes, status: int, headers: dict[str, str] | None = None) -> Any:
    adapter, request = adapter_and_request(kind)
    observations = observe(adapter, request, reply(body, status, headers))
    faults = {fault_of(o) for o in observations}
    assert len(faults) == 1, "a transport-level fault applies to the whole request"
    assert all(o.state is State.UNKNOWN and o.result is None for o in observations)
    return faults.pop()


def test_registry_maps_each_kind_to_its_adapter() -> None:
    assert {
        "ailab": AilabAdapter,
        "aholo": AholoAdapter,
        "tryon": TryonAdapter,
        "genpic": GenpicAdapter,
        "videoproc": VideoprocAdapter,
        "http": DeclarativeAdapter,
    } == ADAPTERS
    for kind, cls in ADAPTERS.items():
        assert adapter_class(kind) is cls
        assert cls.kind == kind


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        adapter_class("openai")
    assert str(caught.value) == (
        "unknown provider kind 'openai'; known kinds: aholo, ailab, genpic, http, tryon, videoproc"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is empty"),
        (b"  \r\n", "body is empty"),
        (HTML_PAGE, "body is an HTML/XML page, not JSON"),
        (b"OK", "body is not valid JSON (JSON is malformed: invalid character (byte 0))"),
        (b'{"a": 1', "body is not valid JSON (Input data was truncated)"),
        (b"\xff\xfe{}", "body is not valid JSON (JSON is malformed: invalid character (byte 0))"),
        (b"[]", "body is a list, expected an object"),
        (b'"done"', "body is a str, expected an object"),
        (b"null", "body is null, expected an object"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_unreadable_2xx_bodies_are_precise_malformed_faults(
    kind: str, body: bytes, message: str
) -> None:
    fault = single_fault(kind, body, 200)
    assert (fault.kind, fault.message) == (FaultKind.MALFORMED, f"{kind} reply: {message}")


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_messages_never_quote_the_body(kind: str) -> None:
    fault = single_fault(kind, b"sk-live-SECRET-ECHO and more", 200)
    assert "SECRET-ECHO" not in fault.message


@pytest.mark.parametrize("body", [HTML_PAGE, b"", b'{"message": "slow down"}'])
@pytest.mark.parametrize("kind", KINDS)
def test_429_is_rate_limited_with_retry_after(kind: str, body: bytes) -> None:
    fault = single_fault(kind, body, 429, {"retry-after": "12"})
    assert (fault.kind, fault.retry_after_s, fault.retryable) == (
        FaultKind.RATE_LIMITED,
        12.0,
        True,
    )


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (502, None), (503, 30.0)])
@pytest.mark.parametrize("kind", KINDS)
def test_5xx_without_envelope_is_a_server_fault(
    kind: str, status: int, retry_after: float | None
) -> None:
    headers = {} if retry_after is None else {"retry-after": "30"}
    fault = single_fault(kind, HTML_PAGE, status, headers)
    assert (fault.kind, fault.retry_after_s) == (FaultKind.SERVER, retry_after)
    assert fault.message == f"{kind} answered HTTP {status}"


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("kind", KINDS)
def test_401_403_without_envelope_is_a_non_retryable_auth_fault(kind: str, status: int) -> None:
    fault = single_fault(kind, b"Unauthorized", status)
    assert (fault.kind, fault.retryable) == (FaultKind.AUTH, False)


@pytest.mark.parametrize("kind", KINDS)
def test_other_4xx_without_envelope_is_a_client_fault(kind: str) -> None:
    fault = single_fault(kind, HTML_PAGE, 405)
    assert (fault.kind, fault.message) == (FaultKind.CLIENT, f"{kind} answered HTTP 405")


# The config file uses exactly these keys (one table per provider).
SETTINGS_KEYS = {
    "ailab": {"base_url", "api_key"},
    "aholo": {"base_url", "app_key", "app_secret", "appuid"},
    "tryon": {"base_url", "open_id", "api_key", "oss_base"},
    "genpic": {"base_url", "public_key", "private_key"},
    "videoproc": {"base_url"},
}
NOT_SECRET = {"base_url", "oss_base"}


def config_table(kind: str) -> dict[str, str]:
    return {
        key: "https://up.example.com" if key in NOT_SECRET else f"{kind}-{key}-value"
        for key in SETTINGS_KEYS[kind]
    }


@pytest.mark.parametrize("kind", KINDS)
def test_settings_take_exactly_the_config_keys(kind: str) -> None:
    cls = ADAPTERS[kind]
    settings = msgspec.convert(config_table(kind), cls.Settings)
    assert set(msgspec.structs.asdict(settings)) == SETTINGS_KEYS[kind]
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        msgspec.convert({**config_table(kind), "colour": "blue"}, cls.Settings)
    with pytest.raises(AttributeError):
        settings.base_url = "https://other.example.com"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
def test_settings_refuse_empty_credentials_and_non_http_urls(kind: str) -> None:
    cls = ADAPTERS[kind]
    with pytest.raises(msgspec.ValidationError, match=r"base_url"):
        msgspec.convert({**config_table(kind), "base_url": "ftp://up.example.com"}, cls.Settings)
    for key in SETTINGS_KEYS[kind] - NOT_SECRET:
        with pytest.raises(msgspec.ValidationError, match=rf"length >= 1 - at `\$\.{key}`"):
            msgspec.convert({**config_table(kind), key: ""}, cls.Settings)


@pytest.mark.parametrize("kind", KINDS)
def test_secret_values_cover_every_credential(kind: str) -> None:
    cls = ADAPTERS[kind]
    table = config_table(kind)
    adapter = cls(msgspec.convert(table, cls.Settings))
    expected = {value for key, value in table.items() if key not in NOT_SECRET}
    assert set(adapter.secret_values()) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_defaults_and_overrides(kind: str) -> None:
    cls = ADAPTERS[kind]
    settings = msgspec.convert(config_table(kind), cls.Settings)
    assert cls(settings).batch_size == cls.defaults.batch_size
    assert cls(settings, batch_size=7).batch_size == 7
    defaults = cls.defaults
    assert defaults.interval_s < defaults.max_interval_s <= 6 * defaults.interval_s
