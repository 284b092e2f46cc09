"""``pollcast check-config --probe provider:task_id``: one live request, raw and normalized.

For writing a provider's mapping against the real upstream: the request the
adapter builds, the reply exactly as it came back, and the observation the
adapter makes of it, one after the other. Credentials never appear: every
value the adapter reports as a credential (:meth:`Adapter.secret_values`) is
replaced by ``[redacted]`` in every form it may take (percent-encoded in the
query string, base64, JSON-escaped: :mod:`gateway.redaction`) wherever it
would be printed, the reply included (an upstream may echo a key back).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable
from http import HTTPStatus
from typing import TextIO
from urllib.parse import urlencode

import msgspec

from gateway.config import Config
from gateway.core.model import Fault, Observation, TaskKey
from gateway.exceptions import ConfigError, InputError
from gateway.poller.exchange import send
from gateway.poller.upstream import AiohttpUpstreamClient
from gateway.providers.base import UpstreamRequest, fault_observations
from gateway.redaction import Redactor

__all__ = ["probe", "run_probe"]

# The reply headers worth seeing when writing a mapping; the rest is noise.
SHOWN_HEADERS = ("content-type", "content-length", "retry-after", "location", "www-authenticate")
MAX_BODY_CHARS = 20_000


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every form of every secret (longest first) replaced by ``[redacted]``."""
    return Redactor(groups=[tuple(secrets)]).text(text)


def _pretty(body: bytes) -> str:
    try:
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        text = body.decode("utf-8", errors="replace")
    if len(text) > MAX_BODY_CHARS:
        text = text[:MAX_BODY_CHARS] + f"\n… ({len(text) - MAX_BODY_CHARS} more characters)"
    return text


def _describe_request(request: UpstreamRequest) -> list[str]:
    url = request.url + ("?" + urlencode(request.params) if request.params else "")
    lines = [f"{request.method} {url}"]
    lines += [f"{name}: {value}" for name, value in request.headers]
    if request.body is not None:
        lines += ["", _pretty(request.body)]
    return lines


async def probe(config: Config, task: str, out: TextIO) -> list[Observation]:
    """Send one status request for ``task`` (``provider:task_id``) and print what happens.

    Raises:
        ConfigError: no such provider, or the task id is one it can never accept.
    """
    try:
        key = TaskKey.parse(task)
        runtime = config.runtimes().get(key.provider)
        if runtime is None:
            raise ConfigError(
                f"no provider named {key.provider!r} (configured: {', '.join(config.providers)})",
                path="--probe",
            )
        adapter = runtime.adapter
        adapter.check_task_id(key.task_id)
    except InputError as exc:
        raise ConfigError(exc.message, path="--probe") from exc
    redactor = Redactor(groups=[adapter.secret_values()])

    def show(title: str, lines: Iterable[str]) -> None:
        out.write(f"\n── {title} " + "─" * max(0, 60 - len(title)) + "\n")
        for line in lines:
            out.write(redactor.text(line) + "\n")

    request = adapter.build_request(
        [key.task_id], now_ms=int(time.time() * 1000), request_id=uuid.uuid4().hex
    )
    show(f"request ({runtime.name}, kind {adapter.kind})", _describe_request(request))
    started = time.monotonic()
    http = AiohttpUpstreamClient(runtime.http, concurrency=1)
    try:
        reply = await send(http, request, name=runtime.name, timeout_s=runtime.timeout_s)
    finally:
        await http.aclose()
    if isinstance(reply, Fault):
        observations = fault_observations(request.task_ids, reply)
        show("reply", [reply.message])
    else:
        elapsed_ms = (time.monotonic() - started) * 1000
        shown = [f"{n}: {reply.headers[n]}" for n in SHOWN_HEADERS if n in reply.headers]
        status = f"HTTP {reply.status_code} {_reason(reply.status_code)} ({elapsed_ms:.0f} ms)"
        show("reply", [status, *shown, "", _pretty(reply.body)])
        observations = adapter.parse(request, reply)
    normalized = json.dumps(msgspec.to_builtins(observations), indent=2, ensure_ascii=False)
    show("observation", normalized.splitlines())
    return observations


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def run_probe(config: Config, task: str, out: TextIO) -> int:
    """:func:`probe` for the command line: 0 if the poll taught something, 1 on a fault."""
    observations = asyncio.run(probe(config, task, out))
    return 1 if any(o.fault is not None for o in observations) else 0
