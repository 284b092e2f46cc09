"""WebSocket messages of ``/v1/ws`` (docs/protocol.md, "WebSocket"): a tagged union, decoded once.

Typed decoding validates while parsing, so a frame nested deeper than the
schema allows fails at its first unexpected level — there is no separate
JSON-depth pass to forget.
"""

from __future__ import annotations

import msgspec

from gateway.exceptions import InputError

__all__ = [
    "ClientMessage",
    "ErrorFrame",
    "Ping",
    "Pong",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "decode_client_message",
    "encode_frame",
]


class Subscribe(msgspec.Struct, tag_field="op", tag="subscribe", forbid_unknown_fields=True):
    tasks: list[str]
    since: dict[str, int] = msgspec.field(default_factory=dict)


class Unsubscribe(msgspec.Struct, tag_field="op", tag="unsubscribe", forbid_unknown_fields=True):
    tasks: list[str]


class Ping(msgspec.Struct, tag_field="op", tag="ping", forbid_unknown_fields=True):
    pass


ClientMessage = Subscribe | Unsubscribe | Ping

_decoder = msgspec.json.Decoder(ClientMessage)


class Subscribed(msgspec.Struct, tag_field="event", tag="subscribed"):
    tasks: list[str]


class Unsubscribed(msgspec.Struct, tag_field="event", tag="unsubscribed"):
    tasks: list[str]


class Pong(msgspec.Struct, tag_field="event", tag="pong"):
    pass


class ErrorFrame(msgspec.Struct, tag_field="event", tag="error", omit_defaults=True):
    code: str
    message: str
    task: str | None = None


_encoder = msgspec.json.Encoder()


def encode_frame(frame: Subscribed | Unsubscribed | Pong | ErrorFrame) -> bytes:
    return _encoder.encode(frame)


class BadFrame(InputError):
    code = "bad_frame"


def decode_client_message(data: bytes | str) -> Subscribe | Unsubscribe | Ping:
    """Decode one client frame.

    Raises:
        BadFrame: with msgspec's precise reason ("Expected `array`, got `str` - at `$.tasks`").
    """
    try:
        message: Subscribe | Unsubscribe | Ping = _decoder.decode(data)
        return message
    except msgspec.DecodeError as exc:
        raise BadFrame(f"bad frame: {exc}") from exc
    except RecursionError as exc:
        # msgspec recurses while skipping values that precede the "op" tag.
        raise BadFrame("bad frame: JSON nested too deeply") from exc
    except UnicodeError as exc:
        raise BadFrame("bad frame: not valid UTF-8") from exc
