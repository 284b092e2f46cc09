"""The load generator: a separate, light process holding thousands of streaming clients.

Run as ``python -m tests.bench.loadgen``; the benchmark drives it with one
JSON command per stdin line and reads one JSON reply per stdout line, so
connections stay open across phases (open → wait → count → close).

It is deliberately cheap per message, so that it is not what is measured:
uvloop, one :class:`asyncio.Protocol` per connection (no reader task, no
stream buffering), SSE frames counted as ``\\n\\n`` terminators in the raw
bytes, WebSocket frames parsed by a minimal RFC 6455 reader. Only in latency
mode is a frame looked at further (its ``observed_at``). Every loop is
bounded in count and in time, and every connection goes to ``127.0.0.1``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

HOST = "127.0.0.1"
OBSERVED_KEY = b'"observed_at":"'
# The sources the clients connect from: all loopback, so that 10k+
# connections and churn never run out of ephemeral ports on one address.
SOURCE_ADDRESSES = [f"127.0.0.{n}" for n in range(2, 10)]


class Stats:
    """What every connection of this process adds to, since the last ``reset``."""

    def __init__(self) -> None:
        self.frames = 0
        self.latency_on = False
        self.match = b""  # latency only of messages containing this (all when empty)
        self.latencies_ms: list[float] = []
        self.closed_by_peer = 0
        self._stamp_cache: dict[bytes, float] = {}

    def reset(self, latency: bool, match: bytes = b"") -> None:
        self.frames = 0
        self.latency_on = latency
        self.match = match
        self.latencies_ms = []
        self.closed_by_peer = 0

    def observe(self, payload: bytes, received_s: float) -> None:
        """Record the latency of one message that carries ``observed_at``."""
        if self.match and self.match not in payload:
            return
        start = payload.find(OBSERVED_KEY)
        if start < 0:
            return
        start += len(OBSERVED_KEY)
        raw = payload[start : start + 24]
        observed = self._stamp_cache.get(raw)
        if observed is None:
            text = raw.split(b'"', 1)[0].decode()
            try:
                observed = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return
            if len(self._stamp_cache) > 100_000:
                self._stamp_cache.clear()
            self._stamp_cache[raw] = observed
        self.latencies_ms.append((received_s - observed) * 1000.0)


STATS = Stats()


def _is_snapshot(frame: bytes) -> bool:
    return b"event: snapshot" in frame or b'"event":"snapshot"' in frame


class SSEClient(asyncio.Protocol):
    """One SSE subscriber: a GET, then frames counted as they arrive."""

    def __init__(self, request: bytes, ready_frames: int, on_ready: Callable[[], None]) -> None:
        self.request = request
        self.ready_frames = ready_frames
        self.on_ready = on_ready
        self.transport: asyncio.Transport | None = None
        self.head_done = False
        self.head = b""
        self.frames = 0
        self.tail = b""  # unterminated frame (latency mode) or the last byte
        self.ready = False
        self.status = 0
        loop = asyncio.get_running_loop()
        self.became_ready = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.head_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_done = True
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            try:
                self.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            if self.status != 200:
                if self.transport is not None:
                    self.transport.close()
                return
            self._check_ready()
        if STATS.latency_on and self.ready:
            buffer = self.tail + data
            frames = buffer.split(b"\n\n")
            self.tail = frames.pop()
            now = time.time()
            for frame in frames:
                if not _is_snapshot(frame):
                    STATS.observe(frame, now)
            n = len(frames)
        else:
            n = data.count(b"\n\n")
            if self.tail == b"\n" and data[:1] == b"\n":
                n += 1
            self.tail = data[-1:]
        if n:
            self.frames += n
            if self.ready:
                STATS.frames += n
            else:
                self._check_ready()

    def _check_ready(self) -> None:
        if not self.ready and self.frames >= self.ready_frames:
            self.ready = True
            self.tail = b""
            self.became_ready.set_result(None)
            self.on_ready()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ready:
            STATS.closed_by_peer += 1
        if not self.lost.done():
            self.lost.set_result(None)


class WSClient(asyncio.Protocol):
    """One WebSocket subscriber: handshake, one subscribe frame, text frames counted."""

    def __init__(
        self,
        path: str,
        port: int,
        subscribe: bytes,
        ready_frames: int,
        on_ready: Callable[[], None],
    ) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.subscribe = subscribe
        self.ready_frames = ready_frames
        self.on_ready = on_ready
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buffer = b""
        self.frames = 0
        self.ready = False
        self.status = 0
        loop = asyncio.get_running_loop()
        self.became_ready = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)

    def _send(self, opcode: int, payload: bytes) -> None:
        # Client frames are masked (RFC 6455 §5.3).
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        if self.transport is not None:
            self.transport.write(header + mask + masked)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            try:
                self.status = int(buffer.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            if self.status != 101:
                if self.transport is not None:
                    self.transport.close()
                return
            self.upgraded = True
            buffer = buffer[end + 4 :]
            self._send(0x1, self.subscribe)
        count = 0
        now = 0.0
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            b0 = buffer[pos]
            n = buffer[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n = struct.unpack_from("!H", buffer, pos + 2)[0]
                start = pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = struct.unpack_from("!Q", buffer, pos + 2)[0]
                start = pos + 10
            if size < start + n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1:
                count += 1
                if STATS.latency_on and self.ready:
                    payload = buffer[start : start + n]
                    if not _is_snapshot(payload):
                        now = now or time.time()
                        STATS.observe(payload, now)
            elif opcode == 0x9:
                self._send(0xA, buffer[start : start + n])
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()
            pos = start + n
        self.buffer = buffer[pos:]
        if count:
            self.frames += count
            if self.ready:
                STATS.frames += count
            elif self.frames >= self.ready_frames:
                self.ready = True
                self.became_ready.set_result(None)
                self.on_ready()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ready:
            STATS.closed_by_peer += 1
        if not self.lost.done():
            self.lost.set_result(None)


def _source_socket(index: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((SOURCE_ADDRESSES[index % len(SOURCE_ADDRESSES)], 0))
    return sock


async def _connect(
    factory: Callable[[], asyncio.Protocol], port: int, index: int
) -> asyncio.Protocol:
    loop = asyncio.get_running_loop()
    sock = _source_socket(index)
    try:
        await loop.sock_connect(sock, (HOST, port))
    except BaseException:
        sock.close()
        raise
    _, protocol = await loop.create_connection(factory, sock=sock)
    return protocol


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Close with RST (SO_LINGER 0): no TIME_WAIT left behind on bulk teardown."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class LoadGen:
    def __init__(self) -> None:
        self.clients: list[SSEClient | WSClient] = []
        self.cpu_mark = 0.0
        self.wall_mark = time.monotonic()

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open ``count`` connections over ``paths`` (round robin); wait until all are ready."""
        port: int = cmd["port"]
        paths: list[str] = cmd["paths"]
        count: int = cmd["count"]
        kind: str = cmd.get("kind", "sse")
        ready_frames: int = cmd.get("ready_frames", 2)
        concurrency: int = cmd.get("concurrency", 200)
        timeout: float = cmd.get("timeout", 120.0)
        headers: str = cmd.get("headers", "")
        loop = asyncio.get_running_loop()
        all_ready = loop.create_future()
        retries: int = cmd.get("retries", 3)
        ready = 0
        failed = 0
        retried = 0
        last_status: dict[int, int] = {}

        def on_ready() -> None:
            nonlocal ready
            ready += 1
            if ready + failed >= count and not all_ready.done():
                all_ready.set_result(None)

        gate = asyncio.Semaphore(concurrency)
        base = len(self.clients)
        started = time.monotonic()

        def factory_for(i: int) -> Callable[[], asyncio.Protocol]:
            path = paths[i % len(paths)]
            if kind == "ws":
                task = cmd["tasks"][i % len(cmd["tasks"])]
                frame = json.dumps({"op": "subscribe", "tasks": [task]}).encode()
                return lambda: WSClient(path, port, frame, ready_frames, on_ready)
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Accept: text/event-stream\r\n{headers}\r\n"
            ).encode()
            return lambda: SSEClient(request, ready_frames, on_ready)

        async def one(i: int) -> None:
            nonlocal failed, retried
            async with gate:
                # A refused subscriber tries again, as EventSource would (a few
                # times, shortly); only the last attempt's outcome counts.
                for attempt in range(1 + retries):
                    if attempt:
                        retried += 1
                        await asyncio.sleep(0.1 * attempt)
                    try:
                        client = await asyncio.wait_for(
                            _connect(factory_for(i), port, base + i + attempt * count), 10
                        )
                    except (OSError, TimeoutError):
                        continue
                    assert isinstance(client, SSEClient | WSClient)
                    # Hold the slot until this one is ready (or gone), so the
                    # server's accept backlog is never flooded.
                    await asyncio.wait(
                        [client.became_ready, client.lost],
                        timeout=max(0.1, started + timeout - time.monotonic()),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if client.ready or not client.lost.done():
                        self.clients.append(client)
                        return
                    last_status[client.status] = last_status.get(client.status, 0) + 1
                failed += 1
                if ready + failed >= count and not all_ready.done():
                    all_ready.set_result(None)

        openers = [asyncio.create_task(one(i)) for i in range(count)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(all_ready), timeout)
        for task in openers:
            task.cancel()
        await asyncio.gather(*openers, return_exceptions=True)
        return {
            "ready": ready,
            "failed": failed,
            "retried": retried,
            "refusals": {str(k): v for k, v in last_status.items()},
            "open": sum(1 for c in self.clients if not c.lost.done()),
            "elapsed_s": time.monotonic() - started,
        }

    def reset(self, cmd: dict[str, Any]) -> dict[str, Any]:
        STATS.reset(bool(cmd.get("latency", False)), cmd.get("match", "").encode())
        self.cpu_mark = _cpu_s()
        self.wall_mark = time.monotonic()
        return {"ok": True}

    def stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wall = time.monotonic() - self.wall_mark
        lat = sorted(STATS.latencies_ms)
        out: dict[str, Any] = {
            "frames": STATS.frames,
            "elapsed_s": wall,
            "cpu_s": _cpu_s() - self.cpu_mark,
            "closed_by_peer": STATS.closed_by_peer,
            "open": sum(1 for c in self.clients if not c.lost.done()),
        }
        if lat:
            out["latency_ms"] = {
                "n": len(lat),
                "p50": _pct(lat, 0.50),
                "p90": _pct(lat, 0.90),
                "p99": _pct(lat, 0.99),
                "max": lat[-1],
                "min": lat[0],
            }
        return out

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        n = 0
        for client in self.clients:
            if not client.lost.done():
                n += 1
            _abort(client.transport)
        self.clients = []
        await asyncio.sleep(0.2)
        return {"closed": n}

    async def churn(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Connect, read the first ``ready_frames`` frames, disconnect; again, for ``duration_s``.

        The close is an ordinary FIN (what a closing browser tab sends), not
        a reset; sources rotate over several loopback addresses so TIME_WAIT
        never exhausts the ephemeral ports.
        """
        port: int = cmd["port"]
        path: str = cmd["path"]
        duration: float = cmd["duration_s"]
        concurrency: int = cmd.get("concurrency", 32)
        max_cycles: int = cmd.get("max_cycles", 1_000_000)
        ready_frames: int = cmd.get("ready_frames", 2)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        cycles = 0
        errors = 0
        started = time.monotonic()
        stop_at = started + duration
        counter = 0

        async def worker() -> None:
            nonlocal cycles, errors, counter
            while time.monotonic() < stop_at and cycles < max_cycles:
                loop = asyncio.get_running_loop()
                got = loop.create_future()

                def on_ready(got: asyncio.Future[None] = got) -> None:
                    if not got.done():
                        got.set_result(None)

                counter += 1
                try:
                    client = await asyncio.wait_for(
                        _connect(lambda: SSEClient(request, ready_frames, on_ready), port, counter),
                        5,
                    )
                    assert isinstance(client, SSEClient)
                    await asyncio.wait(
                        [got, client.lost], timeout=5, return_when=asyncio.FIRST_COMPLETED
                    )
                    ok = got.done()
                    if client.transport is not None:
                        client.transport.close()
                    await asyncio.wait_for(client.lost, 5)
                except (OSError, TimeoutError):
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                if ok:
                    cycles += 1
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"cycles": cycles, "errors": errors, "elapsed_s": time.monotonic() - started}

    async def naive(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The baseline without a gateway: ``clients`` pollers, each asking the upstream
        itself every ``interval_s`` (keep-alive HTTP/1.1 GET), for ``duration_s``."""
        port: int = cmd["port"]
        path: str = cmd["path"]
        clients: int = cmd["clients"]
        interval: float = cmd["interval_s"]
        duration: float = cmd["duration_s"]
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        answered = 0
        stop_at = time.monotonic() + duration

        async def poller(i: int) -> None:
            nonlocal answered
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                await asyncio.sleep(interval * i / clients)  # spread like real clients
                next_at = time.monotonic()
                while next_at < stop_at:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    await reader.readexactly(length)
                    answered += 1
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            finally:
                writer.close()

        started = time.monotonic()
        await asyncio.gather(*(poller(i) for i in range(clients)))
        return {"requests": answered, "elapsed_s": time.monotonic() - started}


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_nofile() -> int:
    """Raise the open-files limit as far as allowed; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (200_000, 100_000, 65_536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


async def serve() -> None:
    gen = LoadGen()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "open":
                reply = await gen.open(cmd)
            elif op == "reset":
                reply = gen.reset(cmd)
            elif op == "stats":
                reply = gen.stats(cmd)
            elif op == "close":
                reply = await gen.close(cmd)
            elif op == "churn":
                reply = await gen.churn(cmd)
            elif op == "naive":
                reply = await gen.naive(cmd)
            elif op == "quit":
                break
            else:
                reply = {"error": f"unknown op {op}"}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    await gen.close({})


def main() -> None:
    raise_nofile()
    try:
        import uvloop
    except ImportError:  # the report says which loop ran
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
