"""Reading values out of a reply: the first present value of some paths, typed."""

from __future__ import annotations

from typing import Any

from gateway.providers._reply import MalformedReply
from gateway.providers.fieldpath import MISSING, FieldPath

__all__ = [
    "Paths",
    "first_of",
    "number_of",
    "raw_fields",
    "text_of",
    "type_name",
    "value_key",
]

Paths = tuple[FieldPath, ...]


def type_name(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a bool"
    return f"a {type(value).__name__}"


def first_of(paths: Paths, document: Any, *, skip_empty: bool = True) -> tuple[Any, str]:
    """The first present value among ``paths`` and the path that held it.

    Present means matched, not ``null`` and (with ``skip_empty``) not ``""``.
    """
    for path in paths:
        value = path.first(document)
        if value is MISSING or value is None or (skip_empty and value == ""):
            continue
        return value, path.text
    return None, paths[0].text if paths else ""


def number_of(paths: Paths, document: Any) -> float | None:
    value, at = first_of(paths, document)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedReply(f"field {at!r} is {type_name(value)}, expected a number")
    return float(value)


def text_of(paths: Paths, document: Any) -> str | None:
    value, at = first_of(paths, document)
    if value is None:
        return None
    if isinstance(value, dict | list):
        raise MalformedReply(f"field {at!r} is {type_name(value)}, expected text")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def value_key(value: object, at: str) -> str:
    """How an upstream scalar is looked up in a ``values`` table (whose keys are text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str | int | float):
        return str(value)
    raise MalformedReply(f"field {at!r} is {type_name(value)}, expected a status value")


def raw_fields(named: tuple[tuple[str, Paths], ...], document: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, paths in named:
        value, _ = first_of(paths, document, skip_empty=False)
        if value is not None:
            found[name] = value
    return found
