"""The head meter and the plain path's body framing, fed bytes (no sockets)."""

from __future__ import annotations

import pytest

from gateway.web.guard import HeadLimits, HeadMeter, Refusal, body_length

LIMITS = HeadLimits(max_line=100, max_head=300, max_fields=4, timeout_s=1.0)


def feed(head: bytes, step: int, limits: HeadLimits = LIMITS) -> tuple[HeadMeter, Refusal | None]:
    meter = HeadMeter(limits)
    for i in range(0, len(head), step):
        refusal = meter.feed(head[i : i + step])
        if refusal is not None:
            return meter, refusal
    return meter, None


STEPS = [1, 2, 3, 5, 1000]


@pytest.mark.parametrize("step", STEPS)
def test_a_head_is_measured_alike_however_it_is_split(step: int) -> None:
    head = b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n\r\n"
    meter, refusal = feed(head + b"body bytes, not head\r\n\r\n", step)
    assert refusal is None and meter.done
    assert meter.size == len(head)
    assert meter.line == len(b"GET /a HTTP/1.1")


@pytest.mark.parametrize("step", STEPS)
def test_a_long_request_line_is_414_before_its_end_arrives(step: int) -> None:
    meter, refusal = feed(b"GET /" + b"a" * 200, step)
    assert refusal is not None and refusal.status == 414
    assert refusal.code == "request_line_too_long" and "100 bytes" in refusal.detail
    assert meter.line < 0  # refused with no end of line in sight
    # A line exactly at the limit passes.
    line = b"GET /" + b"a" * 86 + b" HTTP/1.1"
    assert len(line) == 100
    assert feed(line + b"\r\n\r\n", step)[1] is None


@pytest.mark.parametrize("step", STEPS)
def test_too_large_and_too_many_fields_are_431(step: int) -> None:
    big = b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
    refusal = feed(big, step)[1]
    assert refusal is not None and (refusal.status, refusal.code) == (431, "header_too_large")
    four = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(4)) + b"\r\n"
    assert feed(four, step)[1] is None
    five = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n"
    refusal = feed(five, step)[1]
    assert refusal is not None and refusal.status == 431 and "4 header fields" in refusal.detail


def test_the_limits_come_from_the_server_config() -> None:
    from gateway.config import ServerConfig

    limits = HeadLimits.of(ServerConfig(max_header_bytes=4096, handshake_timeout_s=2.5))
    assert (limits.max_line, limits.max_head, limits.timeout_s) == (4096, 4096, 2.5)
    assert limits.too_slow().status == 408 and "2.5 s" in limits.too_slow().detail


def test_the_body_after_a_head() -> None:
    assert body_length(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n") == 0
    assert body_length(b"POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n") == 12
    assert body_length(b"POST / HTTP/1.1\r\nContent-Length:7 \r\n\r\n") == 7
    # Nothing to count on: the guard stops metering that connection.
    assert body_length(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") is None
    assert body_length(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n") is None
    assert body_length(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") is None
    assert body_length(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n") is None
