"""Request signatures a declarative provider can ask for (``[providers.NAME.request.sign]``).

Upstreams sign status requests in a handful of shapes; each is data here,
never code from the configuration:

* **what is signed** — either a *template* rendered like any other
  (plain concatenation: aholo's ``md5(appSecret + appKey + appuid +
  timestamp)``), or the request's own parameters as *sorted pairs*: every
  field of the JSON body (or every query parameter) but the signature
  itself, lists flattened as ``Key.0``, ``Key.1``…, sorted by key, each
  contributing ``key + value``, between a ``prefix`` and a ``suffix``
  (genpic's ``sha1(sorted pairs + PrivateKey)``);
* **how** — a digest (``md5``, ``sha1``, ``sha256``) or ``hmac-sha256``
  with a key, written as lower-case hex or base64;
* **where it goes** — a query parameter, a top-level JSON body field or a
  header (``into = { query = "sign" }``).

This module holds the settings and the pure computations; the templates are
compiled with the rest of the provider in :mod:`gateway.providers.declarative`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

__all__ = [
    "Algorithm",
    "SignSettings",
    "SignTarget",
    "flatten_pairs",
    "scalar_text",
    "sign",
    "sorted_pairs_text",
]

Algorithm = Literal["md5", "sha1", "sha256", "hmac-sha256"]
Encoding = Literal["hex", "base64"]


class SignTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the signature goes: exactly one of a query parameter, a JSON field, a header."""

    query: str | None = None
    json: str | None = None
    header: str | None = None


class SignSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[providers.NAME.request.sign]``: what is signed, how, and where the signature goes."""

    algorithm: Algorithm
    into: SignTarget
    text: str | None = None  # a template: the signed text, concatenated as written
    sorted_params: Literal["json", "query"] | None = None  # or: the request's sorted pairs
    prefix: str = ""  # sorted_params: a template before the pairs
    suffix: str = ""  # sorted_params: a template after them (genpic: the private key)
    key: str | None = None  # hmac-sha256: the key, a template (usually "{secrets.NAME}")
    encoding: Encoding = "hex"


def sign(algorithm: Algorithm, text: str, *, key: str | None = None, encoding: Encoding) -> str:
    """The signature of ``text`` (UTF-8), lower-case hex or base64.

    Raises:
        ValueError: ``hmac-sha256`` without a key, or a key for a plain digest.
    """
    data = text.encode()
    if algorithm == "hmac-sha256":
        if key is None:
            raise ValueError("hmac-sha256 needs a key")
        digest = hmac.new(key.encode(), data, hashlib.sha256).digest()
    else:
        if key is not None:
            raise ValueError(f"{algorithm} is a plain digest and takes no key")
        # Signatures, not password storage: the upstream chose the algorithm.
        digest = hashlib.new(algorithm, data, usedforsecurity=False).digest()
    if encoding == "base64":
        return base64.b64encode(digest).decode()
    return digest.hex()


def scalar_text(value: object) -> str:
    """How a JSON scalar enters a signed text: strings as they are, ``true``/``false``,
    ``null`` as nothing, numbers as JSON writes them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return msgspec.json.encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not a JSON scalar")


def flatten_pairs(params: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """``(key, text)`` pairs, a list value ``K`` becoming ``K.0``, ``K.1``…

    Raises:
        TypeError: a value that is neither a scalar nor a list of scalars.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params:
        if isinstance(value, list | tuple):
            pairs.extend((f"{key}.{index}", scalar_text(item)) for index, item in enumerate(value))
        else:
            pairs.append((key, scalar_text(value)))
    return pairs


def sorted_pairs_text(params: Iterable[tuple[str, Any]], *, prefix: str, suffix: str) -> str:
    """``prefix`` + every ``key + value`` of the flattened pairs sorted by key + ``suffix``.

    Keys sort by code point, so ``TaskUIDs.10`` comes before ``TaskUIDs.2``, as
    a plain string sort of the flattened keys does upstream. Pairs with equal
    keys (a repeated query parameter) keep their order.
    """
    pairs = sorted(flatten_pairs(params), key=lambda pair: pair[0])
    return prefix + "".join(key + value for key, value in pairs) + suffix
