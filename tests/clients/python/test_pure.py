"""The client's pure parts: SSE decoding, reconnection policy, de-duplication, rendering."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace
from pollcast_client.events import (
    ErrorFrame,
    Notice,
    Pong,
    ProgressUpdate,
    Result,
    Snapshot,
    State,
    StateChanged,
    Subscribe,
    Subscribed,
    decode_event,
    decode_frame,
    encode,
)
from pollcast_client.resume import Reconnect, SeqTracker
from pollcast_client.sse import ServerSentEvent, SSEDecoder
from pollcast_client.watch_cli import (
    EtaCountdown,
    WatchedTask,
    columns,
    exit_code,
    format_duration,
    printable,
    render_line,
    render_results,
)

WIRE_EVENT = (
    b'{"event":"state","task":"ailab:7f3c9e","seq":3,"state":"succeeded","terminal":true,'
    b'"progress":100,"position":null,"message":null,'
    b'"result":{"urls":["https://x.test/1.jpg"],"files":{}},"error":null,'
    b'"upstream":{"status":2},"updated_at":"2026-11-21T10:00:05.120Z",'
    b'"observed_at":"2026-11-21T10:00:05.118Z"}'
)


def event(kind: type[Snapshot | StateChanged | ProgressUpdate | Notice], **fields: Any) -> Any:
    base: dict[str, Any] = {
        "task": "ailab:1",
        "seq": 1,
        "state": State.RUNNING,
        "terminal": False,
        "progress": None,
        "position": None,
        "message": None,
        "result": None,
        "error": None,
        "upstream": None,
        "updated_at": datetime(2026, 11, 21, 10, 0, tzinfo=UTC),
        "observed_at": None,
    }
    return kind(**{**base, **fields})


# -- events ----------------------------------------------------------------------------


def test_the_design_example_decodes_to_a_typed_state_event() -> None:
    decoded = decode_event(WIRE_EVENT)
    assert isinstance(decoded, StateChanged)
    assert decoded.event == "state" and decoded.state is State.SUCCEEDED and decoded.terminal
    assert decoded.result is not None and decoded.result.urls == ("https://x.test/1.jpg",)
    assert decoded.updated_at == datetime(2026, 11, 21, 10, 0, 5, 120000, tzinfo=UTC)
    again = msgspec.json.decode(encode(decoded))
    assert again["event"] == "state" and "code" not in again
    assert set(again) == set(msgspec.json.decode(WIRE_EVENT))


def test_frames_are_one_tagged_union() -> None:
    assert decode_frame(b'{"event":"subscribed","tasks":["a:1"]}') == Subscribed(tasks=["a:1"])
    assert decode_frame(b'{"event":"pong"}') == Pong()
    assert decode_frame(b'{"event":"error","code":"bad_frame","message":"m"}') == ErrorFrame(
        code="bad_frame", message="m"
    )
    assert isinstance(decode_frame(WIRE_EVENT), StateChanged)
    with pytest.raises(msgspec.ValidationError):
        decode_frame(b'{"event":"telepathy"}')
    assert msgspec.json.decode(encode(Subscribe(tasks=["a:1"], since={"a:1": 2}))) == {
        "op": "subscribe",
        "tasks": ["a:1"],
        "since": {"a:1": 2},
    }


# -- SSE decoder (WHATWG "Interpreting an event stream") ---------------------------------


def feed_bytes(decoder: SSEDecoder, data: bytes, step: int) -> list[ServerSentEvent]:
    out: list[ServerSentEvent] = []
    for i in range(0, len(data), step):
        out.extend(decoder.feed(data[i : i + step]))
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_decoder_is_independent_of_chunk_boundaries(step: int) -> None:
    stream = (
        "\ufeffretry: 2500\r\n\r\n"
        ": ping\r\n\r\n"
        'id: 1\r\nevent: snapshot\r\ndata: {"a": "é"}\r\n\r\n'
        "event: notice\rdata: first\rdata: second\r\r"
        "id: 2\ndata:no-space\n\n"
        "data: unterminated"
    ).encode()
    decoder = SSEDecoder()
    events = feed_bytes(decoder, stream, step)
    assert events == [
        ServerSentEvent(data='{"a": "é"}', event="snapshot", id="1"),
        ServerSentEvent(data="first\nsecond", event="notice", id="1"),
        ServerSentEvent(data="no-space", event="message", id="2"),
    ]
    assert decoder.retry_ms == 2500
    assert decoder.last_event_id == "2"


def test_decoder_ignores_what_the_spec_says_to_ignore() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(
        b"retry: soon\n\nid: bad\x00id\ndata: x\n\nevent: e\n\nfoo: bar\ndata\n\n"
    )
    # A NUL in id is ignored; an event with no data dispatches nothing; "data"
    # alone is a data line with an empty value.
    assert events == [ServerSentEvent(data="x"), ServerSentEvent(data="")]
    assert decoder.retry_ms is None and decoder.last_event_id == ""


# -- reconnection policy and de-duplication -----------------------------------------------


def test_reconnect_delay_follows_the_server_then_backs_off_with_full_jitter() -> None:
    policy = Reconnect(cap_s=5.0, max_failures=3)
    assert policy.delay(0, 0.3) == 0.3  # a stream that ended normally: the server's retry
    assert policy.delay(0, None) == 1.0
    assert policy.delay(1, 0.5, lambda: 0.999) == pytest.approx(0.999)
    assert policy.delay(3, 0.5, lambda: 0.5) == pytest.approx(2.0)
    assert policy.delay(40, 0.5, lambda: 0.999) == pytest.approx(4.995)  # capped
    assert policy.delay(2, 0.5, lambda: 0.0) == 0.0
    assert Reconnect(base_s=0.1).delay(1, 9.0, lambda: 0.5) == pytest.approx(0.1)
    assert not policy.gives_up(2) and policy.gives_up(3)
    assert not Reconnect(max_failures=None).gives_up(10**6)


def test_seq_tracker_drops_replays_and_accepts_a_resync() -> None:
    seqs = SeqTracker({"ailab:1": 2})
    assert not seqs.admit(event(ProgressUpdate, seq=2))
    assert seqs.admit(event(ProgressUpdate, seq=3))
    assert not seqs.admit(event(Snapshot, seq=3))  # the same state again
    assert seqs.admit(event(Notice, seq=3, code="upstream_degraded"))
    assert seqs.since("ailab:1") == 3
    # The server no longer knows seq 3 and starts over from its snapshot.
    assert seqs.admit(event(Snapshot, seq=1))
    assert seqs.since("ailab:1") == 1
    assert seqs.admit(event(StateChanged, seq=2, state=State.FAILED, terminal=True))
    assert seqs.finished == {"ailab:1"}


# -- the terminal watcher's rendering ---------------------------------------------------


def test_eta_is_the_gateways_counted_down_locally() -> None:
    eta = EtaCountdown()
    assert eta.remaining_s(5.0) is None  # the gateway gave none
    eta.observe(30.0, age_s=0.0, seen_s=6.0)
    assert eta.remaining_s(6.0) == pytest.approx(30.0)
    assert eta.remaining_s(16.0) == pytest.approx(20.0)  # counts down locally
    assert eta.remaining_s(100.0) == 0.0
    eta.observe(30.0, age_s=12.0, seen_s=7.0)  # a snapshot of a state 12 s old
    assert eta.remaining_s(7.0) == pytest.approx(18.0)
    eta.observe(30.0, age_s=-50.0, seen_s=8.0)  # a local clock behind the server's
    assert eta.remaining_s(8.0) == pytest.approx(30.0)
    eta.observe(None, age_s=0.0, seen_s=9.0)  # the gateway no longer knows
    assert eta.remaining_s(9.0) is None


def test_a_view_shows_the_eta_of_its_latest_event_not_its_own_guess() -> None:
    view = WatchedTask("videoproc:1", started_s=0.0)
    observed = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
    first = event(Snapshot, task="videoproc:1", state=State.RUNNING, progress=20)
    view.apply(replace(first, observed_at=observed), 1.0, observed.timestamp())
    later = replace(first, progress=40, observed_at=observed, eta_s=42.0)
    assert view.eta.remaining_s(1.0) is None  # progress alone: no estimate of our own
    view.apply(later, 2.0, observed.timestamp() + 2.0)
    assert view.eta.remaining_s(2.0) == pytest.approx(40.0)
    line = render_line(view, 12.0, task_width=12, width=200, color=False, unicode=False)
    assert "ETA 0:30" in line
    done = replace(later, state=State.SUCCEEDED, terminal=True, eta_s=None)
    view.apply(done, 3.0, observed.timestamp() + 3.0)
    assert view.eta.remaining_s(3.0) is None


def test_a_status_line_shows_state_bar_queue_time_and_fits_the_width() -> None:
    view = WatchedTask("tryon:42", started_s=0.0)
    view.apply(event(Snapshot, task="tryon:42", state=State.QUEUED, position=3), 1.0)
    line = render_line(view, 65.0, task_width=10, width=200, color=False, unicode=False)
    assert line.startswith("tryon:42    queued")
    assert "#3 in queue" in line and "1:05" in line and "--" in line
    view.apply(event(ProgressUpdate, task="tryon:42", progress=50), 70.0)
    line = render_line(view, 70.0, task_width=10, width=200, color=False, unicode=False)
    assert "running" in line and "[##########----------]  50%" in line
    assert len(render_line(view, 70.0, task_width=10, width=30, color=True, unicode=True)) > 30
    assert len(render_line(view, 70.0, task_width=10, width=30, color=False, unicode=True)) == 30


def test_results_and_exit_status() -> None:
    ok, bad = WatchedTask("a:1", 0.0), WatchedTask("b:2", 0.0)
    done = {"state": State.SUCCEEDED, "terminal": True, "seq": 2}
    ok.apply(
        event(StateChanged, task="a:1", **done, result=Result(urls=("https://x.test/a.png",))), 3
    )
    assert exit_code([ok]) == 0
    assert render_results([ok], color=False) == ["a:1  succeeded", "  https://x.test/a.png"]
    bad.apply(event(StateChanged, task="b:2", seq=2, state=State.EXPIRED, terminal=True), 4)
    assert exit_code([ok, bad]) == 1
    bad.fail(RuntimeError("unreachable"), 5)
    assert exit_code([ok, bad]) == 2
    assert format_duration(3725) == "1:02:05"


def test_wide_characters_and_control_characters_cannot_break_the_layout() -> None:
    view = WatchedTask("videoproc:1", 0.0)
    message = "正在下载视频\n\x1b[2Jdone"  # CJK takes two cells; ESC must not reach the tty
    view.apply(event(ProgressUpdate, task="videoproc:1", progress=10, message=message), 1.0)
    line = render_line(view, 1.0, task_width=11, width=60, color=False, unicode=True)
    assert "\x1b" not in line and "\n" not in line
    assert sum(columns(c) for c in line) <= 60 < sum(columns(c) for c in line) + 2
    assert printable("a\tb\x07c") == "a b c"
