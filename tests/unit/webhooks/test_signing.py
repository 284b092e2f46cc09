"""Standard Webhooks signatures: the spec's own test vector, secrets, verification."""

from __future__ import annotations

import base64

import pytest

from gateway.webhooks.signing import decode_secret, sign, signature_headers, verify

# The test vector of the Standard Webhooks reference libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_spec_vector() -> None:
    key = decode_secret(SPEC_SECRET)
    assert key == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert sign(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_a_secret_without_padding_is_the_same_key() -> None:
    key = bytes(range(32))
    padded = base64.b64encode(key).decode()
    assert padded.endswith("=")
    assert decode_secret("whsec_" + padded) == decode_secret("whsec_" + padded.rstrip("=")) == key


@pytest.mark.parametrize(
    ("secret", "fragment"),
    [
        ("whsec_not*base64", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 16 bytes"),
        # Plain text is refused: the reference libraries would base64-decode it
        # into another key, and no receiver using them could verify a delivery.
        ("a plain secret of 30 characters", "whsec_ followed by base64"),
        ("c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0zMmJ5dGVz", "whsec_ followed by base64"),
        ("whsec_" + base64.b64encode(bytes(32)).decode() + "!", "not valid base64"),
        ("whsec_", "at least 16 bytes"),
    ],
)
def test_bad_secrets_are_refused(secret: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        decode_secret(secret)


def test_headers_verify_and_any_change_breaks_them() -> None:
    key = decode_secret(SPEC_SECRET)
    headers = signature_headers(key, "ailab:7f3c:3", SPEC_TIMESTAMP, SPEC_BODY)
    assert headers["webhook-id"] == "ailab:7f3c:3"
    assert headers["webhook-timestamp"] == str(SPEC_TIMESTAMP)
    assert verify(key, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 10)
    assert not verify(key, headers, SPEC_BODY + b" ", now=SPEC_TIMESTAMP)
    assert not verify(b"another key of 16+ bytes", headers, SPEC_BODY, now=SPEC_TIMESTAMP)
    assert not verify(key, {**headers, "webhook-id": "x"}, SPEC_BODY, now=SPEC_TIMESTAMP)
    # Replays outside the five-minute window are refused.
    assert not verify(key, headers, SPEC_BODY, now=SPEC_TIMESTAMP + 301)
    # Several signatures (a rotation): one match suffices.
    rotated = {**headers, "webhook-signature": "v1,bm9wZQ== " + headers["webhook-signature"]}
    assert verify(key, rotated, SPEC_BODY, now=SPEC_TIMESTAMP)
    assert not verify(key, {**headers, "webhook-timestamp": "soon"}, SPEC_BODY, now=0)
