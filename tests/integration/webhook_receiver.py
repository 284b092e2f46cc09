"""A real webhook receiver for tests: an HTTP server on a free port, in a thread.

It records every request it gets and answers the first ``fail_first`` with
``fail_status`` (or a redirect, or silence past the sender's timeout), then
``204`` (each after ``answer_after_s``, if set; ``401`` if ``verify`` says
the signature is wrong). It listens on ``host``
(any 127.0.0.0/8 address on Linux) and a free port, or the ``port`` given.
Signatures are checked here with ``hmac`` directly — not with the gateway's
own signing code — so a test would catch a wrong signature.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["Received", "Receiver", "standard_signature"]


def standard_signature(key: bytes, headers: dict[str, str], body: bytes) -> str:
    """What ``webhook-signature`` must be (standardwebhooks.com, "Signature scheme")."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    answered: int
    at: float  # time.monotonic()

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(
        self,
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        redirect_to: str | None = None,
        stall_s: float = 0.0,
        answer_after_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        verify: Callable[[dict[str, str], bytes], bool] | None = None,
    ) -> None:
        self.verify = verify
        self.fail_first = fail_first
        self.answer_after_s = answer_after_s
        self.host = host
        self.fail_status = fail_status
        self.redirect_to = redirect_to
        self.stall_s = stall_s
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    failing = len(receiver.requests) < receiver.fail_first
                    status = 204
                    if failing:
                        status = 307 if receiver.redirect_to else receiver.fail_status
                    elif receiver.verify is not None and not receiver.verify(headers, body):
                        status = 401
                    receiver.requests.append(
                        Received(
                            path=self.path,
                            headers=headers,
                            body=body,
                            answered=status,
                            at=time.monotonic(),
                        )
                    )
                if failing and receiver.stall_s:
                    time.sleep(receiver.stall_s)
                if receiver.answer_after_s:
                    time.sleep(receiver.answer_after_s)
                self.send_response(status)
                if status == 307 and receiver.redirect_to:
                    self.send_header("Location", receiver.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks/pollcast"

    @property
    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    async def wait_for(
        self, *, requests: int = 0, accepted: int = 0, timeout_s: float = 15.0
    ) -> None:
        """Until at least ``requests`` arrived and ``accepted`` were answered 2xx."""
        deadline = time.monotonic() + timeout_s
        while len(self.snapshot()) < requests or len(self.accepted) < accepted:
            if time.monotonic() > deadline:
                got = [(r.headers.get("webhook-id"), r.answered) for r in self.snapshot()]
                raise TimeoutError(f"receiver saw {got}")
            await asyncio.sleep(0.02)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
