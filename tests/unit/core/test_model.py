"""The normalized model: task keys, states, timestamps and the event's wire shape."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from gateway.core.model import (
    TERMINAL_STATES,
    ErrorInfo,
    Event,
    EventKind,
    Result,
    State,
    TaskKey,
    format_timestamp,
)
from gateway.exceptions import InputError, InvalidTaskKey

# --- TaskKey ---------------------------------------------------------------


@pytest.mark.parametrize("provider", ["a", "ailab", "my-prov_2", "a" + "b" * 31])
def test_of_accepts_valid_provider_names(provider: str) -> None:
    key = TaskKey.of(provider, "t1")
    assert (key.provider, key.task_id) == (provider, "t1")
    assert str(key) == f"{provider}:t1"


@pytest.mark.parametrize(
    "provider",
    [
        "",
        "Ailab",  # upper case
        "1abc",  # must start with a letter
        "-abc",
        "ai lab",
        "ai.lab",
        "a" + "b" * 32,  # 33 characters: one over the limit
        "ailab\n",  # "$" must not let a trailing newline through
        "ailab\r",
        "äilab",
    ],
)
def test_of_rejects_invalid_provider_names(provider: str) -> None:
    with pytest.raises(InvalidTaskKey) as info:
        TaskKey.of(provider, "t1")
    assert info.value.field == "provider"
    assert "^[a-z][a-z0-9_-]{0,31}$" in info.value.message


def test_invalid_task_key_is_an_input_error_with_422() -> None:
    with pytest.raises(InputError) as info:
        TaskKey.of("ailab", "")
    assert info.value.status == 422
    assert info.value.code == "invalid_task"


def test_empty_task_id_is_rejected() -> None:
    with pytest.raises(InvalidTaskKey, match="empty") as info:
        TaskKey.of("ailab", "")
    assert info.value.field == "task_id"


def test_task_id_of_256_characters_is_accepted_and_257_rejected() -> None:
    assert TaskKey.of("ailab", "x" * 256).task_id == "x" * 256
    with pytest.raises(InvalidTaskKey, match="257 characters long; the limit is 256"):
        TaskKey.of("ailab", "x" * 257)


@pytest.mark.parametrize(
    "task_id",
    ["a b", " a", "a ", "a\tb", "a\nb", "a\rb", "a\x00b", "a\x7fb", "a\u00a0b", "a\u2028b", "\x1b"],
)
def test_task_id_with_whitespace_or_control_characters_is_rejected(task_id: str) -> None:
    with pytest.raises(InvalidTaskKey, match="whitespace or control") as info:
        TaskKey.of("ailab", task_id)
    assert info.value.field == "task_id"


@pytest.mark.parametrize("task_id", ["7f3c9e", "123e4567-e89b-12d3", "a/b?c=d#e", "任务1", "x:y:z"])
def test_printable_task_ids_are_accepted(task_id: str) -> None:
    assert TaskKey.of("ailab", task_id).task_id == task_id


def test_parse_splits_at_the_first_colon_so_ids_may_contain_colons() -> None:
    key = TaskKey.parse("genpic:urn:task:42")
    assert key == TaskKey("genpic", "urn:task:42")
    assert str(key) == "genpic:urn:task:42"


def test_parse_round_trips_str() -> None:
    key = TaskKey.of("ailab", "7f3c9e")
    assert TaskKey.parse(str(key)) == key


def test_parse_without_colon_names_the_task_field() -> None:
    with pytest.raises(InvalidTaskKey, match="provider:task_id") as info:
        TaskKey.parse("ailab7f3c9e")
    assert info.value.field == "task"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (":abc", "provider"),
        ("ailab:", "task_id"),
        ("Ailab:x", "provider"),
        ("ailab:a b", "task_id"),
    ],
)
def test_parse_validates_both_parts(text: str, field: str) -> None:
    with pytest.raises(InvalidTaskKey) as info:
        TaskKey.parse(text)
    assert info.value.field == field


def test_error_message_clips_a_long_provider_name() -> None:
    with pytest.raises(InvalidTaskKey) as info:
        TaskKey.of("X" * 1000, "t")
    assert "X" * 40 + "…" in info.value.message
    assert "X" * 41 not in info.value.message


def test_task_keys_order_by_provider_then_id() -> None:
    keys = [TaskKey("b", "1"), TaskKey("a", "2"), TaskKey("a", "10")]
    assert sorted(keys) == [TaskKey("a", "10"), TaskKey("a", "2"), TaskKey("b", "1")]


# --- State -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "terminal"),
    [
        (State.QUEUED, False),
        (State.RUNNING, False),
        (State.UNKNOWN, False),
        (State.SUCCEEDED, True),
        (State.FAILED, True),
        (State.CANCELLED, True),
        (State.EXPIRED, True),
        (State.REJECTED, True),
    ],
)
def test_state_terminal(state: State, terminal: bool) -> None:
    assert state.terminal is terminal
    assert (state in TERMINAL_STATES) is terminal


def test_state_values_are_the_wire_names() -> None:
    assert [s.value for s in State] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "expired",
        "rejected",
        "unknown",
    ]


# --- format_timestamp ------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (0.12, "1970-01-01T00:00:00.120Z"),
        (1.001, "1970-01-01T00:00:01.001Z"),
        (59.9999, "1970-01-01T00:00:59.999Z"),  # truncated to the millisecond, not rounded up
        (1763719205.12, "2025-11-21T10:00:05.120Z"),
    ],
)
def test_format_timestamp_is_rfc3339_utc_with_milliseconds(epoch: float, text: str) -> None:
    assert format_timestamp(epoch) == text


def test_format_timestamp_matches_datetime_across_seconds_in_any_order() -> None:
    # The date and time of day are formatted once per second: going back and
    # forth between seconds, and a fraction that rounds up into the next
    # second, must still give what datetime itself gives.
    def reference(epoch: float) -> str:
        moment = datetime.fromtimestamp(epoch, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    epochs = [10.5, 11.9999996, 10.2, 1763719205.9999995, 1763719205.0004, 86399.9999999, 3.0]
    for epoch in epochs + epochs[::-1]:
        assert format_timestamp(epoch) == reference(epoch), epoch
    assert format_timestamp(11.9999996) == "1970-01-01T00:00:12.000Z"


# --- Event wire shape ------------------------------------------------------


def _event(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "event": EventKind.STATE,
        "task": "ailab:7f3c9e",
        "seq": 3,
        "state": State.SUCCEEDED,
        "terminal": True,
        "progress": None,
        "position": None,
        "message": None,
        "result": None,
        "error": None,
        "upstream": None,
        "updated_at": "2026-11-21T10:00:05.120Z",
        "observed_at": None,
    }
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


def test_event_encodes_every_field_without_default_including_nulls() -> None:
    decoded = msgspec.json.decode(msgspec.json.encode(_event()))
    assert decoded == {
        "event": "state",
        "task": "ailab:7f3c9e",
        "seq": 3,
        "state": "succeeded",
        "terminal": True,
        "progress": None,
        "position": None,
        "message": None,
        "result": None,
        "error": None,
        "upstream": None,
        "updated_at": "2026-11-21T10:00:05.120Z",
        "observed_at": None,
        "eta_s": None,
    }


def test_event_encodes_in_the_documented_field_order() -> None:
    raw = msgspec.json.encode(_event())
    assert raw.startswith(b'{"event":"state","task":"ailab:7f3c9e","seq":3,"state":"succeeded"')
    assert raw.endswith(b'"updated_at":"2026-11-21T10:00:05.120Z","observed_at":null,"eta_s":null}')


def test_eta_is_encoded_when_known() -> None:
    decoded = msgspec.json.decode(msgspec.json.encode(_event(eta_s=12.5)))
    assert decoded["eta_s"] == 12.5


def test_an_event_stored_before_eta_existed_decodes_with_a_null_eta() -> None:
    old = msgspec.json.encode(_event()).replace(b',"eta_s":null', b"")
    assert b"eta_s" not in old
    event = msgspec.json.decode(old, type=Event)
    assert event.eta_s is None
    assert msgspec.json.encode(event).endswith(b'"observed_at":null,"eta_s":null}')


def test_event_with_result_and_error_encodes_nested_objects() -> None:
    event = _event(
        result=Result(urls=("https://x/1.jpg",), files={"video": "https://x/v.mp4"}),
        error=ErrorInfo("boom", "it broke"),
        upstream={"status": 2},
    )
    decoded = msgspec.json.decode(msgspec.json.encode(event))
    assert decoded["result"] == {
        "urls": ["https://x/1.jpg"],
        "files": {"video": "https://x/v.mp4"},
        "meta": {},
    }
    assert decoded["error"] == {"code": "boom", "message": "it broke"}
    assert decoded["upstream"] == {"status": 2}


def test_code_is_omitted_unless_set() -> None:
    assert b'"code"' not in msgspec.json.encode(_event())
    notice = _event(event=EventKind.NOTICE, code="upstream_degraded")
    decoded = msgspec.json.decode(msgspec.json.encode(notice))
    assert decoded["code"] == "upstream_degraded"
    assert decoded["event"] == "notice"
