"""Standard Webhooks signatures (https://www.standardwebhooks.com/, "Signature scheme").

Every delivery carries three headers:

* ``webhook-id`` — the message id, the same on every retry (the idempotency key);
* ``webhook-timestamp`` — integer Unix seconds of this attempt;
* ``webhook-signature`` — ``v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``;
  the spec allows several space-separated signatures (during a key rotation).

Secrets are either the spec's ``whsec_<base64>`` form (the bytes after the
prefix are the key) or any other text, used as UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

__all__ = [
    "MIN_SECRET_BYTES",
    "decode_secret",
    "sign",
    "signature_headers",
    "verify",
]

MIN_SECRET_BYTES = 16
_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300  # the spec's suggested replay window: five minutes


def decode_secret(text: str) -> bytes:
    """The HMAC key of a configured secret.

    Raises:
        ValueError: a ``whsec_`` secret that is not base64, or a key shorter
            than :data:`MIN_SECRET_BYTES` bytes.
    """
    if text.startswith(_PREFIX):
        try:
            key = base64.b64decode(text[len(_PREFIX) :], validate=True)
        except binascii.Error:
            raise ValueError("the part after whsec_ is not valid base64") from None
    else:
        key = text.encode()
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"a webhook secret needs at least {MIN_SECRET_BYTES} bytes of key "
            f"(got {len(key)}); e.g. whsec_ + base64 of 32 random bytes"
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three ``webhook-*`` headers of one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver checks: a matching ``v1`` signature and a recent timestamp.

    ``headers`` keys are lower-case.
    """
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp", "")
    offered = headers.get("webhook-signature", "")
    if not message_id or not stamp.isdigit():
        return False
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(key, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in offered.split())
