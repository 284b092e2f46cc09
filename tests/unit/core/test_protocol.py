"""WebSocket client frames (decoded once, validated while parsing) and server frames."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.protocol import (
    BadFrame,
    ErrorFrame,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    decode_client_message,
    encode_frame,
)
from gateway.exceptions import InputError

# --- decoding --------------------------------------------------------------


def test_subscribe_with_since() -> None:
    msg = decode_client_message(
        b'{"op": "subscribe", "tasks": ["ailab:7f3c9e", "aholo:1"], "since": {"ailab:7f3c9e": 2}}'
    )
    assert msg == Subscribe(tasks=["ailab:7f3c9e", "aholo:1"], since={"ailab:7f3c9e": 2})


def test_subscribe_since_defaults_to_empty() -> None:
    msg = decode_client_message(b'{"op": "subscribe", "tasks": ["ailab:1"]}')
    assert isinstance(msg, Subscribe)
    assert msg.since == {}
    # The default is a fresh dict per message, never shared.
    other = decode_client_message(b'{"op": "subscribe", "tasks": []}')
    assert isinstance(other, Subscribe)
    assert other.since is not msg.since


def test_unsubscribe() -> None:
    msg = decode_client_message(b'{"tasks": ["ailab:1"], "op": "unsubscribe"}')
    assert msg == Unsubscribe(tasks=["ailab:1"])


def test_ping_from_bytes_and_from_text() -> None:
    assert decode_client_message(b'{"op": "ping"}') == Ping()
    assert decode_client_message('{"op":"ping"}') == Ping()


def test_text_frames_with_non_ascii_task_ids() -> None:
    msg = decode_client_message('{"op": "unsubscribe", "tasks": ["ailab:任务"]}')
    assert msg == Unsubscribe(tasks=["ailab:任务"])


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"op": "publish", "tasks": []}', "Invalid value 'publish' - at `$.op`"),
        (b'{"tasks": ["a:1"]}', "missing required field `op`"),
        (b'{"op": "ping", "extra": 1}', "unknown field `extra`"),
        (b'{"op": "subscribe", "tasks": ["a:1"], "sinse": {}}', "unknown field `sinse`"),
        (b'{"op": "unsubscribe", "tasks": [], "since": {}}', "unknown field `since`"),
        (b'{"op": "subscribe"}', "missing required field `tasks`"),
        (b'{"op": "subscribe", "tasks": "ailab:1"}', "Expected `array`, got `str` - at `$.tasks`"),
        (b'{"op": "subscribe", "tasks": [1]}', "Expected `str`, got `int` - at `$.tasks[0]`"),
        (
            b'{"op": "subscribe", "tasks": [], "since": {"a:1": "2"}}',
            "Expected `int`, got `str` - at `$.since[...]`",
        ),
        (b'{"op": "subscribe", "tasks": [], "since": []}', "Expected `object`, got `array`"),
        (b'{"op": 1}', "Expected `str` - at `$.op`"),
        (b'["ping"]', "Expected `object`, got `array`"),
        (b'"ping"', "Expected `object`, got `str`"),
        (b"null", "Expected `object`, got `null`"),
        (b"not json", "JSON is malformed"),
        (b'{"op": "ping"', "truncated"),
        (b"", "truncated"),
        (b"\xff\xfe{}", "JSON is malformed"),
        (b'{"op": "ping"} {"op": "ping"}', "trailing characters"),
    ],
)
def test_bad_frames_raise_bad_frame_with_the_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(BadFrame) as info:
        decode_client_message(frame)
    assert reason in info.value.message
    assert info.value.message.startswith("bad frame: ")
    assert info.value.code == "bad_frame"


def test_bad_frame_is_an_input_error_chained_from_msgspec() -> None:
    with pytest.raises(InputError) as info:
        decode_client_message(b"{")
    assert info.value.status == 400
    assert isinstance(info.value.__cause__, msgspec.DecodeError)


def test_deeply_nested_tasks_fail_at_the_first_unexpected_level() -> None:
    depth = 10_000
    frame = b'{"op": "subscribe", "tasks": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(BadFrame, match=r"Expected `str`, got `array` - at `\$.tasks\[0\]`"):
        decode_client_message(frame)


def test_deeply_nested_since_and_unclosed_arrays_are_bad_frames() -> None:
    depth = 10_000
    nested_since = b'{"op": "subscribe", "tasks": [], "since": {"a:1": ' + b"[" * depth + b"}"
    with pytest.raises(BadFrame, match=r"Expected `int`, got `array`"):
        decode_client_message(nested_since)
    with pytest.raises(BadFrame, match="Expected `object`, got `array`"):
        decode_client_message(b"[" * 100_000)


@pytest.mark.parametrize("depth", [1_000, 10_000])
def test_deep_nesting_before_the_op_tag_is_a_bad_frame(depth: int) -> None:
    # The tag is not first, so the decoder must skip "tasks" to find "op".
    # 1,000 levels is a 2 KB frame, far below the WebSocket frame limit.
    frame = b'{"tasks": ' + b"[" * depth + b"]" * depth + b', "op": "subscribe"}'
    with pytest.raises(BadFrame):
        decode_client_message(frame)


def test_deeply_nested_objects_are_a_bad_frame() -> None:
    with pytest.raises(BadFrame):
        decode_client_message(b'{"a": ' * 10_000)


def test_text_frame_with_a_lone_surrogate_is_a_bad_frame() -> None:
    # The signature accepts ``str``; a str that is not valid Unicode text must
    # still be reported as a bad frame, not escape as UnicodeEncodeError.
    with pytest.raises(BadFrame):
        decode_client_message('{"op": "ping", "\ud800": 1}')


# --- encoding --------------------------------------------------------------


def test_encode_server_frames() -> None:
    assert encode_frame(Subscribed(tasks=["ailab:1", "aholo:2"])) == (
        b'{"event":"subscribed","tasks":["ailab:1","aholo:2"]}'
    )
    assert encode_frame(Unsubscribed(tasks=[])) == b'{"event":"unsubscribed","tasks":[]}'
    assert encode_frame(Pong()) == b'{"event":"pong"}'


def test_error_frame_omits_task_when_none() -> None:
    assert encode_frame(ErrorFrame(code="bad_frame", message="bad frame: x")) == (
        b'{"event":"error","code":"bad_frame","message":"bad frame: x"}'
    )
    assert encode_frame(ErrorFrame(code="invalid_task", message="m", task="Bad:1")) == (
        b'{"event":"error","code":"invalid_task","message":"m","task":"Bad:1"}'
    )


# --- properties ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_to_a_message_or_bad_frame(data: bytes) -> None:
    try:
        msg = decode_client_message(data)
    except BadFrame as exc:
        assert exc.message.startswith("bad frame: ")
        return
    assert isinstance(msg, Subscribe | Unsubscribe | Ping)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_frame = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "pong", ""])},
    optional={"tasks": _json, "since": _json, "extra": _json},
)


@settings(max_examples=300, deadline=None)
@given(_frame)
def test_almost_valid_json_frames_decode_or_raise_bad_frame(frame: dict[str, object]) -> None:
    data = msgspec.json.encode(frame)
    try:
        msg = decode_client_message(data)
    except BadFrame:
        return
    assert isinstance(msg, Subscribe | Unsubscribe | Ping)
    assert frame["op"] in ("subscribe", "unsubscribe", "ping")
    assert "extra" not in frame
