"""The task listing's cursor: opaque to clients, validated when it comes back.

``GET /v1/tasks`` pages through the followed tasks in the order of their keys
(keyset paging): a cursor is the last key of a page, with the filters it was
issued for, as base64url of a msgpack array. Tasks added while a client
pages never make it see a task twice or skip one that was there all along.
"""

from __future__ import annotations

import base64
import binascii
import re

import msgspec

from gateway.core.model import TaskKey
from gateway.exceptions import InputError, InvalidCursor

__all__ = [
    "CURSOR_VERSION",
    "MAX_CURSOR_CHARS",
    "ListCursor",
    "decode_list_cursor",
    "encode_list_cursor",
    "parse_count",
]

CURSOR_VERSION = 1
MAX_CURSOR_CHARS = 1024
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class ListCursor(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Where the next page starts: after ``after``, under the same filters."""

    v: int
    after: str
    provider: str | None
    state: str | None


_decoder = msgspec.msgpack.Decoder(ListCursor)
_encoder = msgspec.msgpack.Encoder()


def encode_list_cursor(cursor: ListCursor) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(cursor)).rstrip(b"=").decode("ascii")


def decode_list_cursor(text: str, *, provider: str | None, state: str | None) -> ListCursor:
    """The cursor ``text`` stands for; it must belong to a listing with these filters.

    Raises:
        InvalidCursor: not one of ours, or issued for other filters (field ``cursor``).
    """
    if len(text) > MAX_CURSOR_CHARS or not _BASE64URL.fullmatch(text):
        raise InvalidCursor("cursor is not a cursor this gateway issued", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _decoder.decode(raw)
        TaskKey.parse(cursor.after)
    except (binascii.Error, ValueError, msgspec.DecodeError, InputError) as exc:
        raise InvalidCursor("cursor is not a cursor this gateway issued", field="cursor") from exc
    if cursor.v != CURSOR_VERSION:
        raise InvalidCursor("cursor is from another version of the listing", field="cursor")
    if (cursor.provider, cursor.state) != (provider, state):
        raise InvalidCursor(
            "cursor belongs to a listing with other filters; "
            "pass the same provider and state as the page it came from",
            field="cursor",
        )
    return cursor


def parse_count(
    raw: str | None, *, field: str, default: int, low: int, high: int | None = None
) -> int:
    """A decimal query parameter in ``low … high`` (``default`` when absent).

    Raises:
        InputError: naming ``field``.
    """
    if raw is None or raw == "":
        return default
    if len(raw) > 20 or not raw.isascii() or not raw.isdigit():
        raise InputError(f"{field} must be a non-negative integer", field=field)
    value = int(raw)
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f"at least {low}"
        raise InputError(f"{field} must be {bounds}; got {raw[:40]}", field=field)
    return value
