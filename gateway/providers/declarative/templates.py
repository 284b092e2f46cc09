"""The template language of a declarative provider: placeholders in text and in JSON bodies.

A template is literal text with placeholders (``{base}``, ``{task_id}``,
``{secrets.NAME}``…); a JSON body template is a JSON tree whose string leaves
are templates, with two whole-leaf forms (``"{task_ids}"``, ``"{task_id:int}"``).
Parsing checks every placeholder against those allowed where it stands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.exceptions import ConfigError

__all__ = [
    "IDS",
    "INT_ID_RE",
    "LONG_MAX",
    "MIN_SIGNED_LITERAL",
    "NOT_CREDENTIAL_HEADERS",
    "SECRET",
    "SECRET_NAME_RE",
    "IntId",
    "Template",
    "parse_json_template",
    "parse_template",
    "render_json",
    "uses_int_id",
]

_PLACEHOLDERS: Final = ("base", "task_id", "task_ids", "now_ms", "request_id")
SECRET: Final = "secrets."  # {secrets.NAME}: a value of the provider's secrets table
_INT_ID: Final = "task_id:int"  # a whole json leaf: the id as a JSON integer
LONG_MAX: Final = 2**63 - 1
INT_ID_RE: Final = re.compile(r"[0-9]{1,19}")
MIN_SIGNED_LITERAL: Final = 8
SECRET_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_TOKEN_RE: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
NOT_CREDENTIAL_HEADERS: Final = frozenset(
    {"content-type", "accept", "accept-encoding", "accept-language", "cache-control", "user-agent"}
)


@dataclass(frozen=True, slots=True)
class Template:
    """Literal text and placeholder names, alternating as parsed."""

    parts: tuple[tuple[bool, str], ...]  # (is_placeholder, text or name)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(text for placeholder, text in self.parts if placeholder)

    @property
    def has_literal_text(self) -> bool:
        return any(text for placeholder, text in self.parts if not placeholder)

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(values[text] if placeholder else text for placeholder, text in self.parts)

    def literal(self) -> str:
        """The literal text alone, every placeholder left out."""
        return "".join(text for placeholder, text in self.parts if not placeholder)


def parse_template(text: str, key: str, allowed: Sequence[str]) -> Template:
    """Parse a template.

    Raises:
        ConfigError: for an unknown or misplaced placeholder or a lone brace (at ``key``).
    """
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN_RE.finditer(text):
        literal.append(text[pos : match.start()])
        pos = match.end()
        token = match.group()
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        name = match.group(1)
        if name is None:
            raise ConfigError(
                f"lone {token!r} at position {match.start()} (write {token * 2!r} for a literal)",
                path=key,
            )
        if name not in _PLACEHOLDERS and not name.startswith(SECRET):
            if name == _INT_ID:
                raise ConfigError(
                    "{task_id:int} may only be a whole json value (the id as a JSON integer)",
                    path=key,
                )
            known = ", ".join("{" + p + "}" for p in allowed)
            raise ConfigError(f"unknown placeholder {{{name}}}; use {known}", path=key)
        if name not in allowed:
            raise ConfigError(_misplaced(name, allowed), path=key)
        parts.append((False, "".join(literal)))
        literal = []
        parts.append((True, name))
    literal.append(text[pos:])
    parts.append((False, "".join(literal)))
    return Template(tuple((p, t) for p, t in parts if p or t))


def _misplaced(name: str, allowed: Sequence[str]) -> str:
    if name.startswith(SECRET):
        declared = sorted(p for p in allowed if p.startswith(SECRET))
        if not declared:
            return (
                f"{{{name}}}: secrets may go into headers, query parameters, the body and "
                "the signature, not here"
            )
        known = ", ".join("{" + p + "}" for p in declared)
        return f"{{{name}}} names no entry of the provider's secrets table; it has {known}"
    if name == "task_ids":
        return "{task_ids} may only be a whole json value of a batch request (request.batch)"
    if name == "task_id":
        return "{task_id} names one task; a batch request sends {task_ids} (request.json)"
    return f"{{{name}}} is not allowed here"


class _Ids:
    """The ``"{task_ids}"`` leaf of a JSON body template."""


IDS: Final = _Ids()


class IntId:
    """The ``"{task_id:int}"`` leaf of a JSON body template."""


_INT: Final = IntId()


def render_json(template: Any, values: Mapping[str, str], task_ids: Sequence[str]) -> Any:
    if isinstance(template, Template):
        return template.render(values)
    if template is IDS:
        return list(task_ids)
    if template is _INT:
        return int(values["task_id"])
    if isinstance(template, dict):
        return {k: render_json(v, values, task_ids) for k, v in template.items()}
    if isinstance(template, list):
        return [render_json(v, values, task_ids) for v in template]
    return template


def parse_json_template(value: Any, key: str, allowed: Sequence[str], found: list[str]) -> Any:
    if isinstance(value, str):
        if value == "{task_ids}" and "task_ids" in allowed:
            found.append(key)
            return IDS
        if value == "{" + _INT_ID + "}" and "task_id" in allowed:
            return _INT
        return parse_template(value, key, [p for p in allowed if p != "task_ids"])
    if isinstance(value, dict):
        return {k: parse_json_template(v, f"{key}.{k}", allowed, found) for k, v in value.items()}
    if isinstance(value, list):
        return [parse_json_template(v, f"{key}[{i}]", allowed, found) for i, v in enumerate(value)]
    return value


def uses_int_id(template: Any) -> bool:
    if template is _INT:
        return True
    if isinstance(template, dict):
        return any(uses_int_id(v) for v in template.values())
    if isinstance(template, list):
        return any(uses_int_id(v) for v in template)
    return False
