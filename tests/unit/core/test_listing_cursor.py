"""The task listing's opaque cursor: round trip, and refusal of anything else."""

from __future__ import annotations

import base64

import msgspec
import pytest

from gateway.core.listing import (
    ListCursor,
    decode_list_cursor,
    encode_list_cursor,
    parse_count,
)
from gateway.exceptions import InputError, InvalidCursor


def raw(value: object) -> str:
    return base64.urlsafe_b64encode(msgspec.msgpack.encode(value)).rstrip(b"=").decode()


def test_a_cursor_round_trips_and_is_url_safe() -> None:
    cursor = ListCursor(v=1, after="ailab:a/b:c?d", provider="ailab", state="running")
    text = encode_list_cursor(cursor)
    assert text.replace("-", "").replace("_", "").isalnum()
    assert decode_list_cursor(text, provider="ailab", state="running") == cursor


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64!",
        "A",  # no whole byte
        raw([1, "ailab:a", None]),  # a field short
        raw([1, "ailab:a", None, None, "extra"]),
        raw({"v": 1, "after": "ailab:a"}),
        raw([1, "no-colon", None, None]),
        raw([1, "ailab:" + "x" * 300, None, None]),  # a task id the gateway never lists
        raw([2, "ailab:a", None, None]),  # another version
        raw([1, 5, None, None]),
        "A" * 2000,
    ],
)
def test_anything_but_a_cursor_we_issued_is_refused(text: str) -> None:
    with pytest.raises(InvalidCursor) as info:
        decode_list_cursor(text, provider=None, state=None)
    assert info.value.field == "cursor"


def test_a_cursor_goes_only_with_its_filters() -> None:
    text = encode_list_cursor(ListCursor(v=1, after="ailab:a", provider="ailab", state=None))
    for provider, state in ((None, None), ("ailab", "running"), ("tryon", None)):
        with pytest.raises(InvalidCursor, match="filters"):
            decode_list_cursor(text, provider=provider, state=state)


@pytest.mark.parametrize("value", ["-1", "1e3", " 5", "0x10", "٣", "1" * 21, "0", "1001"])
def test_counts_out_of_range_or_not_decimal_are_refused(value: str) -> None:
    with pytest.raises(InputError) as info:
        parse_count(value, field="limit", default=100, low=1, high=1000)
    assert info.value.field == "limit"


def test_counts_in_range() -> None:
    assert parse_count(None, field="limit", default=100, low=1, high=1000) == 100
    assert parse_count("", field="limit", default=100, low=1, high=1000) == 100
    assert parse_count("1000", field="limit", default=100, low=1, high=1000) == 1000
