"""What a user would assemble around Nchan or Pushpin: a minimal poller, and a GRIP backend.

``python -m tests.bench.feeder feed ...`` polls one simulated videoproc task
once per interval (fixed rate, one request at a time, keep-alive) and, whenever its
status, progress or message changes, publishes an event shaped like
pollcast's (same fields, ``observed_at`` = when the reply was read) into the
peer: ``POST /pub/<channel>`` for Nchan, ``POST /publish/`` for Pushpin.
It stops by itself after ``--duration``.

``python -m tests.bench.feeder grip-backend --port P`` answers every request
the way a Pushpin origin does to hold an SSE stream open: ``Grip-Hold:
stream`` on the channel named by the last path segment.

Both speak plain HTTP/1.1 over asyncio streams on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Any

HOST = "127.0.0.1"


def _iso_ms(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class Connection:
    """One keep-alive HTTP/1.1 connection that reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.streams is None:
                self.streams = await asyncio.open_connection(HOST, self.port)
            try:
                status, body, keep = await _exchange(*self.streams, request)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
                continue
            if not keep:
                self.close()
            return status, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes, bool]:
    """Status, body, and whether the connection may be reused."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length: int | None = None
    chunked = False
    keep = not head.startswith(b"HTTP/1.0")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection":
            keep = b"close" not in value.lower()
    if not chunked:
        if length is None:
            return status, await reader.read(), False
        return status, await reader.readexactly(length), keep
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body, keep
        body += chunk[:-2]


async def feed(args: argparse.Namespace) -> None:
    sim = Connection(args.sim_port)
    peer = Connection(args.publish_port)
    poll = f"GET /videoproc/api/status/{args.task_id} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    task = f"videoproc:{args.task_id}"
    last: tuple[Any, ...] | None = None
    seq = 0
    published = 0
    polls = 0
    stop_at = time.monotonic() + args.duration
    next_at = time.monotonic()
    while time.monotonic() < stop_at:
        status, body = await sim.exchange(poll)
        polls += 1
        if status == 200:
            reply = json.loads(body)
            now = time.time()
            current = (reply.get("status"), reply.get("progress"), reply.get("message"))
            if current != last:
                seq += 1
                event = {
                    "event": "progress" if last is not None and last[0] == current[0] else "state",
                    "task": task,
                    "seq": seq,
                    "state": "running",
                    "terminal": False,
                    "progress": reply.get("progress"),
                    "position": None,
                    "message": reply.get("message"),
                    "result": None,
                    "error": None,
                    "upstream": {"status": reply.get("status"), "progress": reply.get("progress")},
                    "updated_at": _iso_ms(now),
                    "observed_at": _iso_ms(now),
                }
                last = current
                data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
                await _publish(args, peer, data, seq, event["event"])
                published += 1
        # Fixed rate: the next poll is due one interval after the previous
        # one started, so a slow publish (the peer fanning out) does not
        # lower the offered load below the peer's capacity.
        next_at = max(next_at + args.interval, time.monotonic())
        await asyncio.sleep(next_at - time.monotonic())
    print(json.dumps({"polls": polls, "published": published}), flush=True)
    sim.close()
    peer.close()


async def _publish(
    args: argparse.Namespace,
    peer: Connection,
    data: str,
    seq: int,
    kind: str,
) -> None:
    if args.peer == "nchan":
        body = data.encode()
        head = (
            f"POST /pub/{args.channel} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"X-EventSource-Event: {kind}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
    else:
        content = f"id: {seq}\nevent: {kind}\ndata: {data}\n\n"
        item = {"channel": args.channel, "formats": {"http-stream": {"content": content}}}
        body = json.dumps({"items": [item]}).encode()
        head = (
            f"POST /publish/ HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
    status, reply = await peer.exchange(head.encode() + body)
    if status >= 300:
        print(f"publish failed: {status} {reply[:200]!r}", flush=True)


async def grip_backend(args: argparse.Namespace) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                channel = path.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Grip-Hold: stream\r\nGrip-Channel: " + channel.encode() + b"\r\n"
                    b"Cache-Control: no-cache\r\nContent-Length: 0\r\n\r\n"
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, args.port, backlog=4096)
    async with server:
        await asyncio.sleep(args.duration)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.feeder")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("feed")
    p.add_argument("--peer", choices=["nchan", "pushpin"], required=True)
    p.add_argument("--sim-port", type=int, required=True)
    p.add_argument("--task-id", required=True)
    p.add_argument("--publish-port", type=int, required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--duration", type=float, default=60.0)
    p = sub.add_parser("grip-backend")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--duration", type=float, default=3600.0)
    args = parser.parse_args()
    runner = feed if args.mode == "feed" else grip_backend
    try:
        import uvloop
    except ImportError:
        asyncio.run(runner(args))
    else:
        uvloop.run(runner(args))


if __name__ == "__main__":
    main()
