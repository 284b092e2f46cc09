"""Our signatures against the Standard Webhooks reference library, and ``verify`` on any input."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.webhooks.signing import decode_secret, sign, signature_headers, verify

SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
KEY = decode_secret(SECRET)
NOW = 1_800_000_000


@given(
    key=st.binary(min_size=16, max_size=64),
    message_id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    body=st.text().map(str.encode),
    padded=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_the_reference_library_verifies_what_we_sign(
    key: bytes, message_id: str, body: bytes, padded: bool
) -> None:
    encoded = base64.b64encode(key).decode()
    secret = "whsec_" + (encoded if padded else encoded.rstrip("="))
    ours = decode_secret(secret)
    assert ours == key
    headers = signature_headers(ours, message_id, NOW, body)
    reference = Webhook(secret)
    # The reference checks the timestamp against the real clock: sign for now.
    live = signature_headers(ours, message_id, int(time.time()), body)
    assert reference.verify(body, live, json_parse=False) is None
    at = datetime.fromtimestamp(NOW, tz=UTC)
    assert reference.sign(message_id, at, body.decode()) == headers["webhook-signature"]


def test_the_reference_library_refuses_a_wrong_key() -> None:
    body = b'{"type": "task.state"}'
    headers = signature_headers(b"another key, 16+ bytes", "vp:t:1", int(time.time()), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, headers, json_parse=False)


_header_values = st.one_of(
    st.none(),
    st.text(),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "1e9", "-1", "1800000000.5", "１８００", "²", "0x6b49d200"]),
    st.text(st.characters(codec="utf-8")),
)


@given(
    message_id=_header_values,
    stamp=_header_values,
    signature=st.one_of(
        _header_values,
        st.lists(st.text(), max_size=4).map(" ".join),
        st.just("v1,\udcff"),
        st.just("v1,ü" + sign(KEY, "id", NOW, b"x")[4:]),
    ),
    body=st.binary(max_size=64),
    now=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30)),
)
@settings(max_examples=500, deadline=None)
def test_verify_never_raises(
    message_id: str | None, stamp: str | None, signature: str | None, body: bytes, now: float
) -> None:
    headers = {
        name: value
        for name, value in (
            ("webhook-id", message_id),
            ("webhook-timestamp", stamp),
            ("webhook-signature", signature),
        )
        if value is not None
    }
    assert verify(KEY, headers, body, now=now) in (True, False)


@pytest.mark.parametrize(
    "stamp",
    [
        "",
        "-1800000000",
        "1800000000.0",
        "1.8e9",
        "１８００００００００",
        "²",
        " 1800000000",
        "9" * 400,
    ],
)
def test_odd_timestamps_are_false_not_errors(stamp: str) -> None:
    headers = {**signature_headers(KEY, "vp:t:1", NOW, b"{}"), "webhook-timestamp": stamp}
    assert verify(KEY, headers, b"{}", now=NOW) is False


@pytest.mark.parametrize(
    "signature",
    ["", "v1,", "v1,ü", "v1,\udcff", "nonsense", "v2," + sign(KEY, "vp:t:1", NOW, b"{}")[3:]],
)
def test_odd_signatures_are_false_not_errors(signature: str) -> None:
    headers = {**signature_headers(KEY, "vp:t:1", NOW, b"{}"), "webhook-signature": signature}
    assert verify(KEY, headers, b"{}", now=NOW) is False


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_false(missing: str) -> None:
    headers = signature_headers(KEY, "vp:t:1", NOW, b"{}")
    assert verify(KEY, headers, b"{}", now=NOW) is True
    del headers[missing]
    assert verify(KEY, headers, b"{}", now=NOW) is False


def test_an_id_with_a_lone_surrogate_is_false() -> None:
    headers = {**signature_headers(KEY, "vp:t:1", NOW, b"{}"), "webhook-id": "vp:\udcff"}
    assert verify(KEY, headers, b"{}", now=NOW) is False
