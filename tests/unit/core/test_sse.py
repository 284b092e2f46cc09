"""SSE framing, Last-Event-ID and multiplexed cursors."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import ErrorInfo, Event, EventKind, State
from gateway.core.sse import (
    PING,
    Encoded,
    decode_cursor,
    encode_cursor,
    parse_last_event_id,
    retry_frame,
    sse_message,
)
from gateway.core.tracker import initial_snapshot, notice
from gateway.exceptions import InputError, InvalidCursor

TASK = "ailab:7f3c9e"


def _state_event(seq: int = 3) -> Event:
    return Event(
        event=EventKind.STATE,
        task=TASK,
        seq=seq,
        state=State.FAILED,
        terminal=True,
        progress=None,
        position=None,
        message="failed: 图片格式错误",
        result=None,
        error=ErrorInfo("upstream_failed", "bad image"),
        upstream={"task_status": -1},
        updated_at="2026-11-21T10:00:05.120Z",
        observed_at="2026-11-21T10:00:05.118Z",
    )


# --- Encoded ---------------------------------------------------------------


def test_state_event_sse_frame_is_exact() -> None:
    event = _state_event(seq=3)
    enc = Encoded(event)
    payload = msgspec.json.encode(event)
    assert enc.json == payload
    assert enc.sse == b"id: 3\nevent: state\ndata: " + payload + b"\n\n"
    assert enc.sse_tail == b"event: state\ndata: " + payload + b"\n\n"
    assert enc.line == payload + b"\n"
    assert enc.text == payload.decode()


def test_encoded_json_is_one_line_even_with_newlines_in_fields() -> None:
    event = msgspec.structs.replace(_state_event(), message="line one\nline two\r\nthree")
    enc = Encoded(event)
    assert b"\n" not in enc.json and b"\r" not in enc.json
    # One data line: a reader joining data lines gets the JSON back unchanged.
    assert enc.sse.count(b"\n") == 4
    data_line = enc.sse.split(b"\n")[2]
    assert msgspec.json.decode(data_line.removeprefix(b"data: "))["message"] == event.message


def test_snapshot_and_progress_frames_carry_id_and_kind() -> None:
    snap = Encoded(initial_snapshot(TASK, 0.0))
    assert snap.sse.startswith(b"id: 0\nevent: snapshot\ndata: {")
    progress = Encoded(msgspec.structs.replace(_state_event(seq=12), event=EventKind.PROGRESS))
    assert progress.sse.startswith(b"id: 12\nevent: progress\ndata: {")


def test_notice_has_no_id_line() -> None:
    note = notice(None, task=TASK, code="upstream_degraded", message="ailab answers 503", now=0.0)
    enc = Encoded(note)
    assert enc.sse == enc.sse_tail
    assert enc.sse == b"event: notice\ndata: " + enc.json + b"\n\n"
    assert b"id:" not in enc.sse
    assert msgspec.json.decode(enc.json)["code"] == "upstream_degraded"
    assert enc.counts_for_resume is False


def test_encoded_resume_flag() -> None:
    enc = Encoded(_state_event())
    assert enc.counts_for_resume is True
    assert enc.event == _state_event()
    notice = msgspec.structs.replace(_state_event(), event=EventKind.NOTICE, code="resync")
    assert Encoded(notice).counts_for_resume is False  # notices are never replayed


def test_text_is_decoded_once() -> None:
    enc = Encoded(_state_event())
    assert enc.text is enc.text


def test_retry_frame() -> None:
    assert retry_frame(3000) == b"retry: 3000\n\n"
    assert retry_frame(0) == b"retry: 0\n\n"


def test_ping_is_a_comment() -> None:
    assert PING == b": ping\n\n"


def test_sse_message_with_and_without_id_and_event() -> None:
    assert sse_message(b"{}") == b"data: {}\n\n"
    assert sse_message(b"{}", event="state") == b"event: state\ndata: {}\n\n"
    assert sse_message(b"{}", event="state", id="c1.3.4") == (
        b"id: c1.3.4\nevent: state\ndata: {}\n\n"
    )
    assert sse_message(b"[1]", id="7") == b"id: 7\ndata: [1]\n\n"


# --- Last-Event-ID ---------------------------------------------------------


@pytest.mark.parametrize("raw", [None, ""])
def test_missing_last_event_id_is_none(raw: str | None) -> None:
    assert parse_last_event_id(raw) is None


@pytest.mark.parametrize(("raw", "seq"), [("0", 0), ("42", 42), ("007", 7), (str(2**53), 2**53)])
def test_last_event_id_parses_seqs(raw: str, seq: int) -> None:
    assert parse_last_event_id(raw) == seq


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "-1",
        "+1",
        "1.5",
        "1e3",
        " 1",
        "1 ",
        "1_000",
        "٣",  # ARABIC-INDIC DIGIT THREE: str.isdigit() is true for it
        "²",  # SUPERSCRIPT TWO: also isdigit()
        "１２",  # fullwidth digits
        "c1.1.2",
        "9" * 10_000,
        "x" * 10_000,
        str(2**53 + 1),
        "9" * 20,
        "0" * 21,
    ],
)
def test_garbage_last_event_id_is_invalid_cursor(raw: str) -> None:
    with pytest.raises(InvalidCursor) as info:
        parse_last_event_id(raw)
    assert info.value.field == "last_event_id"
    assert info.value.status == 400
    assert "Last-Event-ID" in info.value.message


def test_invalid_cursor_is_an_input_error() -> None:
    with pytest.raises(InputError):
        parse_last_event_id("nope")


# --- multiplexed cursor ----------------------------------------------------


@pytest.mark.parametrize("seqs", [[0], [3], [1, 2, 3], [0, 0], [2**53, 7], list(range(100))])
def test_cursor_round_trip(seqs: list[int]) -> None:
    cursor = encode_cursor(seqs)
    assert cursor.startswith("c1.")
    assert decode_cursor(cursor, len(seqs)) == seqs


def test_cursor_text_is_documented_shape() -> None:
    assert encode_cursor([3, 0, 12]) == "c1.3.0.12"


def test_cursor_with_wrong_task_count_is_invalid() -> None:
    with pytest.raises(InvalidCursor, match="covers 2 tasks but the stream has 3") as info:
        decode_cursor("c1.1.2", 3)
    assert info.value.field == "cursor"
    with pytest.raises(InvalidCursor, match="covers 3 tasks but the stream has 2"):
        decode_cursor("c1.1.2.3", 2)


@pytest.mark.parametrize("raw", ["", "1.2", "c2.1.2", "C1.1.2", "c1", " c1.1.2", "42"])
def test_cursor_with_wrong_prefix_is_invalid(raw: str) -> None:
    with pytest.raises(InvalidCursor, match="not one this gateway issued") as info:
        decode_cursor(raw, 2)
    assert info.value.field == "cursor"


@pytest.mark.parametrize(
    "raw", ["c1.1.", "c1..1", "c1.a.1", "c1.-1.2", "c1.1.+2", "c1.1.٣", "c1.1. 2", "c1.1.2e3"]
)
def test_cursor_with_garbage_parts_is_invalid(raw: str) -> None:
    with pytest.raises(InvalidCursor, match="is not a seq"):
        decode_cursor(raw, 2)


def test_cursor_part_longer_than_16_digits_is_invalid() -> None:
    assert decode_cursor("c1." + "1" * 16, 1) == [int("1" * 16)]
    with pytest.raises(InvalidCursor, match="is not a seq"):
        decode_cursor("c1." + "1" * 17, 1)


def test_oversized_cursor_is_invalid_before_splitting() -> None:
    with pytest.raises(InvalidCursor, match="not one this gateway issued"):
        decode_cursor("c1." + "1." * 100_000 + "1", 2)
    with pytest.raises(InvalidCursor, match="not one this gateway issued"):
        decode_cursor("c1." + "9" * 10_000, 1)


def test_garbage_part_is_clipped_in_the_message() -> None:
    with pytest.raises(InvalidCursor) as info:
        decode_cursor("c1.1." + "x" * 30, 2)
    assert "x" * 20 in info.value.message
    assert "x" * 21 not in info.value.message


# --- properties ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.from_regex(r"\A[0-9]{1,22}\Z")))
def test_parse_last_event_id_returns_a_seq_or_raises_invalid_cursor(raw: str) -> None:
    try:
        value = parse_last_event_id(raw)
    except InvalidCursor:
        return
    assert value is None or 0 <= value <= 2**53
    assert value is None or str(value) == raw.lstrip("0").rjust(1, "0")


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=1, max_value=5))
def test_decode_cursor_returns_seqs_or_raises_invalid_cursor(raw: str, n_tasks: int) -> None:
    try:
        seqs = decode_cursor(raw, n_tasks)
    except InvalidCursor:
        return
    assert len(seqs) == n_tasks
    assert all(s >= 0 for s in seqs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**53), min_size=1, max_size=50))
def test_any_issued_cursor_decodes_back(seqs: list[int]) -> None:
    assert decode_cursor(encode_cursor(seqs), len(seqs)) == seqs


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"\Ac1\.[0-9.]{0,40}\Z"), st.integers(min_value=1, max_value=5))
def test_cursor_like_text_never_raises_anything_else(raw: str, n_tasks: int) -> None:
    try:
        seqs = decode_cursor(raw, n_tasks)
    except InvalidCursor:
        return
    assert encode_cursor(seqs) == "c1." + ".".join(str(int(p)) for p in raw[3:].split("."))
