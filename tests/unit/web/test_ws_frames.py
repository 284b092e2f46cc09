"""The WebSocket text frame an event is encoded into once and written to every
WebSocket subscriber: checked with the ``websockets`` library's own frame parser."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import msgspec
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.core.model import Event, EventKind, State
from gateway.core.sse import Encoded, ws_text_frame


def event(message: str | None, kind: EventKind = EventKind.PROGRESS) -> Event:
    return Event(
        event=kind,
        task="videoproc:a",
        seq=7,
        state=State.RUNNING,
        terminal=False,
        progress=40,
        position=None,
        message=message,
        result=None,
        error=None,
        upstream={"status": "running"},
        updated_at="2026-11-21T10:00:00.000Z",
        observed_at="2026-11-21T10:00:00.000Z",
    )


def parse(data: bytes) -> tuple[Frame, bytes]:
    """One frame as a WebSocket client reads it (client side: frames must not be masked)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser: Generator[Any, None, Frame] = Frame.parse(
        reader.read_exact, mask=False, max_size=None, extensions=None
    )
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:  # pragma: no cover - the parser wanted more bytes than the frame holds
        pytest.fail("incomplete frame")
    rest = bytes(reader.buffer)
    return frame, rest


# Payload lengths at each edge of RFC 6455's three length encodings (7-bit, 16-bit, 64-bit).
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_a_text_frame_of_any_length_parses_back_to_its_payload(size: int) -> None:
    payload = b"x" * size
    frame, rest = parse(ws_text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)  # not compressed, no extension bits
    assert frame.data == payload and rest == b""


@pytest.mark.parametrize("message", [None, "é ü ✓ " * 3, "m" * 200, "n" * 70_000])
def test_an_events_frame_carries_exactly_its_json_and_is_built_once(message: str | None) -> None:
    enc = Encoded(event(message))
    frame, rest = parse(enc.ws_frame)
    assert rest == b""
    assert frame.data == enc.json and frame.data.decode() == enc.text
    assert msgspec.json.decode(frame.data)["message"] == message
    # One object for every subscriber: the same bytes, not an equal copy.
    assert enc.ws_frame is enc.ws_frame


def test_a_notices_frame_is_its_json_too() -> None:
    enc = Encoded(event("server draining", EventKind.NOTICE))
    frame, _ = parse(enc.ws_frame)
    assert frame.data == enc.json
