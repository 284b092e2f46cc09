"""Log formatters: no line is lost to a context value, and no credential is written."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.logs import JsonFormatter, TextFormatter
from gateway.redaction import REDACTED, Redactor


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def record(msg: str = "polled %s", *args: Any, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("pollcast.test", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


CONTEXT: dict[str, Any] = {
    "obj": Opaque(),
    "raw": b"\x00bytes",
    "tags": {"b"},
    "when": datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
    "nested": {"inner": Opaque(), "n": 1, "ok": [1, "two", None]},
}


def test_json_line_keeps_every_context_value_as_repr_when_not_plain_json() -> None:
    line = JsonFormatter().format(record("polled %s", "ailab:1", **CONTEXT))
    entry = json.loads(line)
    assert entry["msg"] == "polled ailab:1" and entry["level"] == "warning"
    assert entry["obj"] == "<Opaque thing>"
    assert entry["raw"] == repr(b"\x00bytes")
    assert entry["tags"] == "{'b'}"
    assert entry["when"] == repr(CONTEXT["when"])
    assert entry["nested"] == {"inner": "<Opaque thing>", "n": 1, "ok": [1, "two", None]}


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_formatters_never_raise(formatter: logging.Formatter) -> None:
    for rec in (
        record("%d tasks", "not a number"),  # arguments that do not fit the format
        record("x", broken=BrokenRepr()),
        record("x", cyclic=(lambda d: d.update(me=d) or d)({})),
        record("x", odd_keys={(1, 2): "tuple key", 3: "int key"}),
    ):
        line = formatter.format(rec)
        assert line
    if isinstance(formatter, JsonFormatter):
        parsed = json.loads(formatter.format(record("%d tasks", "nan")))
        assert "%d tasks" in parsed["msg"] and "nan" in parsed["msg"]
        keys = json.loads(formatter.format(record("x", odd_keys={(1, 2): "a", 3: "b"})))
        assert keys["odd_keys"] == {"(1, 2)": "a", "3": "b"}


SECRET = "Tr0ub4dor&3-horse"


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
def test_every_line_is_redacted(formatter: type[JsonFormatter] | type[TextFormatter]) -> None:
    fmt = formatter(Redactor([SECRET]))
    try:
        raise ValueError(f"upstream said {SECRET}")
    except ValueError:
        exc_info = sys.exc_info()
    rec = record(
        "GET /x?key=%s failed",
        "Tr0ub4dor%263-horse",
        detail={"echo": [SECRET]},
        obj=Opaque(),
    )
    rec.exc_info = exc_info
    line = fmt.format(rec)
    assert SECRET not in line and "Tr0ub4dor%263-horse" not in line
    assert "Tr0ub4dor" not in line and line.count(REDACTED) >= 3
    if formatter is JsonFormatter:
        assert json.loads(line)["detail"] == {"echo": [REDACTED]}
