"""How a credential may be spelled when it leaks, written out independently of
gateway.redaction, so that a test does not check the redactor against itself."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

__all__ = ["spellings"]


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def spellings(secret: str, *, partner: str | None = None) -> list[str]:
    """Raw, percent-encoded (``quote``, ``quote_plus``; upper and lower hex), base64
    (standard and URL-safe, padded or not) and JSON-escaped; with ``partner``,
    the base64 of ``partner:secret`` too (HTTP Basic)."""
    percent = [quote(secret, safe=""), quote(secret), quote_plus(secret)]
    blobs = [secret.encode()]
    if partner is not None:
        blobs.append(f"{partner}:{secret}".encode())
    b64 = []
    for blob in blobs:
        for encoded in (base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode()):
            b64 += [encoded, encoded.rstrip("=")]
    escaped = json.dumps(secret)[1:-1]
    found = [secret, *percent, *map(_lower_hex, percent), *b64, escaped]
    found.append(escaped.replace("/", "\\/"))
    return list(dict.fromkeys(found))
