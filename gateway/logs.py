"""Logging: JSON lines for production, readable lines for the demo.

Context travels in ``extra={...}``; both formats print it. Nothing logged
per SSE event: logs are for failures and lifecycle.

A formatter never raises and never drops a line: a context value that is
not plain JSON is written as its ``repr``, a message whose ``%`` arguments
do not fit is written as the raw message and arguments. Every line passes
through the gateway's :class:`~gateway.redaction.Redactor` on the way out.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.redaction import Redactor

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "plain"]

#: Nesting kept in a context value; deeper levels are written as their ``repr``.
MAX_CONTEXT_DEPTH = 8

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not cost the line
        return f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data: str, int, float, bool, None, lists and
    str-keyed dicts; anything else (bytes, sets, datetimes, objects) as its ``repr``."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if depth >= MAX_CONTEXT_DEPTH:
        return _safe_repr(value)
    if type(value) is dict:
        return {
            (k if type(k) is str else _safe_repr(k)): plain(v, depth + 1) for k, v in value.items()
        }
    if type(value) in (list, tuple):
        return [plain(v, depth + 1) for v in value]
    return _safe_repr(value)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:
        # The arguments do not fit the format: keep both, raw.
        return f"{_safe_repr(record.msg)} % {_safe_repr(record.args)}"


class _Formatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        try:
            line = self.render(record)
        except Exception as exc:  # never lose a line to its formatting
            line = (
                f"{record.levelname.lower()} {record.name}: {_safe_repr(record.msg)} "
                f"(log line could not be formatted: {type(exc).__name__})"
            )
        return self.redactor.text(line)

    def render(self, record: logging.LogRecord) -> str:
        raise NotImplementedError

    def exception_text(self, record: logging.LogRecord) -> str | None:
        if not record.exc_info:
            return None
        try:
            return self.formatException(record.exc_info)
        except Exception as exc:
            return f"(traceback could not be formatted: {type(exc).__name__})"


class JsonFormatter(_Formatter):
    """One JSON object per line; every string in it redacted."""

    _encoder = msgspec.json.Encoder()

    def render(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        entry.update(plain(_context(record)))
        exc = self.exception_text(record)
        if exc is not None:
            entry["exc"] = exc
        # Redacted before encoding, so the replacement never splits a JSON escape.
        return self._encoder.encode(self.redactor.value(entry)).decode()


class TextFormatter(_Formatter):
    """``12:00:01 warning pollcast.x: message  key=value``."""

    def render(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        context = " ".join(
            f"{k}={v if type(v) is str else _safe_repr(v)}" for k, v in _context(record).items()
        )
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {_message(record)}"
        if context:
            line += f"  {context}"
        exc = self.exception_text(record)
        if exc is not None:
            line += "\n" + exc
        return line


def configure_logging(
    fmt: str = "text", level: int = logging.INFO, *, redactor: Redactor | None = None
) -> None:
    """Log to stderr as ``fmt`` ("json" or "text"); ``redactor`` scrubs every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request URL at INFO, and some upstreams sign requests in
    # the query string: those lines must never be written. aiohttp's client
    # loggers say nothing of URLs above DEBUG; they are held at WARNING so that
    # a root level of DEBUG cannot change that.
    for name in ("httpx", "httpcore", "aiohttp.client", "aiohttp.internal"):
        logging.getLogger(name).setLevel(logging.WARNING)
