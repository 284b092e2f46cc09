"""Standard Webhooks signatures (https://www.standardwebhooks.com/, "Signature scheme").

Every delivery carries three headers:

* ``webhook-id`` — the message id, the same on every retry (the idempotency key);
* ``webhook-timestamp`` — integer Unix seconds of this attempt;
* ``webhook-signature`` — ``v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``;
  the spec allows several space-separated signatures (during a key rotation).

A secret is the spec's ``whsec_<base64>`` form and nothing else: the key is
the base64-decoded part after the prefix, exactly as the reference libraries
(``standardwebhooks``) read it, so a receiver using them verifies what we
sign. Padding may be left off (the reference accepts that too); anything
that is not base64 is refused rather than guessed at.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
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
    """The HMAC key of a configured ``whsec_<base64>`` secret.

    Raises:
        ValueError: not ``whsec_`` + base64, or a key shorter than
            :data:`MIN_SECRET_BYTES` bytes.
    """
    if not text.startswith(_PREFIX):
        raise ValueError(
            "a webhook secret is whsec_ followed by base64 (Standard Webhooks), "
            "e.g. whsec_ + base64 of 32 random bytes"
        )
    encoded = text[len(_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not valid base64") from None
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


_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # integer Unix seconds; 12 digits reach year 33658


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver checks: a matching ``v1`` signature and a recent timestamp.

    ``headers`` keys are lower-case. Never raises: missing headers, a
    timestamp that is not integer seconds, and signatures that are not
    ASCII are all just ``False``.
    """
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    offered = headers.get("webhook-signature")
    if not isinstance(message_id, str) or not message_id:
        return False
    if not isinstance(stamp, str) or _TIMESTAMP.fullmatch(stamp) is None:
        return False
    if not isinstance(offered, str):
        return False
    timestamp = int(stamp)
    if not abs(now - timestamp) <= tolerance_s:  # also False for a NaN ``now``
        return False
    try:
        expected = sign(key, message_id, timestamp, body).encode()
    except UnicodeEncodeError:  # a lone surrogate in the id: not something we sent
        return False
    # compare_digest refuses non-ASCII str: compare bytes (a lone surrogate
    # becomes "?", which no base64 signature contains).
    return any(
        hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
        for candidate in offered.split()
    )
