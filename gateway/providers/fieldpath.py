"""Field paths: where a value sits inside a decoded JSON reply.

A small, closed syntax — parsed once, walked many times, never evaluated as
code. Grammar::

    path     := "$" | "$" step+ | first step*
    first    := name | bracket
    step     := "." name | bracket
    name     := [A-Za-z_][A-Za-z0-9_-]*
    bracket  := "[" ( "*" | integer | quoted ) "]"
    integer  := "-"? [0-9]+                 (negative counts from the end)
    quoted   := '"' char* '"' | "'" char* "'"

Examples: ``task_status``, ``error_detail.code``, ``d[*].taskId``,
``result[0]``, ``files["video.mp4"]``, ``$`` (the whole reply).

Rules:

* ``name`` and ``["name"]`` read a key of an object; any other key (one with
  dots, spaces, starting with a digit…) must be quoted. Inside quotes a
  backslash escapes the quote character and the backslash itself.
* ``[0]`` reads an element of a list (``[-1]`` the last one).
* ``[*]`` fans out over every element of a list, or every value of an
  object in document order. A path with ``[*]`` can match many values.
* A step that does not apply (a missing key, an index out of range, a key
  asked of a list…) matches nothing: paths never raise while walking.
  JSON ``null`` is a value like any other and is matched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MISSING", "FieldPath", "PathSyntaxError", "parse_path"]


class _Missing:
    """The value of a path that matched nothing (distinct from JSON ``null``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class PathSyntaxError(ValueError):
    """A path that breaks the grammar; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        self.position = position
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class _Key:
    name: str


@dataclass(frozen=True, slots=True)
class _Index:
    index: int


@dataclass(frozen=True, slots=True)
class _Each:
    pass


_Step = _Key | _Index | _Each

_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INDEX_RE: Final = re.compile(r"-?[0-9]+")


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A parsed path. ``text`` is what the configuration said, for messages."""

    text: str
    steps: tuple[_Step, ...]

    @property
    def fans_out(self) -> bool:
        """Whether the path contains ``[*]`` (and so may match many values)."""
        return any(isinstance(step, _Each) for step in self.steps)

    def find(self, document: Any) -> list[Any]:
        """Every value the path matches, in document order (``[]`` if none)."""
        return list(_walk(document, self.steps))

    def first(self, document: Any) -> Any:
        """The first value the path matches, or :data:`MISSING`."""
        return next(_walk(document, self.steps), MISSING)

    def __str__(self) -> str:
        return self.text


def _walk(value: Any, steps: tuple[_Step, ...]) -> Iterator[Any]:
    if not steps:
        yield value
        return
    step, rest = steps[0], steps[1:]
    if isinstance(step, _Key):
        if isinstance(value, dict) and step.name in value:
            yield from _walk(value[step.name], rest)
    elif isinstance(step, _Index):
        if isinstance(value, list) and -len(value) <= step.index < len(value):
            yield from _walk(value[step.index], rest)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, rest)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item, rest)


def parse_path(text: str) -> FieldPath:
    """Parse ``text`` by the grammar in this module's docstring.

    Raises:
        PathSyntaxError: saying what was expected and where.
    """
    if not text:
        raise PathSyntaxError("a path cannot be empty (use $ for the whole reply)", 0)
    steps: list[_Step] = []
    pos = 0
    if text.startswith("$"):
        pos = 1
        if pos < len(text) and text[pos] not in ".[":
            raise PathSyntaxError(f"expected '.' or '[' after '$' at position {pos}", pos)
    else:
        pos = _name_or_bracket(text, pos, steps)
    while pos < len(text):
        char = text[pos]
        if char == ".":
            match = _NAME_RE.match(text, pos + 1)
            if match is None:
                raise PathSyntaxError(
                    f"expected a key name after '.' at position {pos + 1} "
                    '(quote other keys: ["my key"])',
                    pos + 1,
                )
            steps.append(_Key(match.group()))
            pos = match.end()
        elif char == "[":
            pos = _bracket(text, pos, steps)
        else:
            raise PathSyntaxError(f"unexpected {char!r} at position {pos}", pos)
    return FieldPath(text, tuple(steps))


def _name_or_bracket(text: str, pos: int, steps: list[_Step]) -> int:
    if text[pos] == "[":
        return _bracket(text, pos, steps)
    match = _NAME_RE.match(text, pos)
    if match is None:
        raise PathSyntaxError(
            f"expected a key name or '[' at position {pos} (quote other keys: [\"my key\"])", pos
        )
    steps.append(_Key(match.group()))
    return match.end()


def _bracket(text: str, pos: int, steps: list[_Step]) -> int:
    """Parse ``[...]`` starting at ``text[pos] == "["``; the position after ``]``."""
    inner = pos + 1
    if inner >= len(text):
        raise PathSyntaxError(f"unclosed '[' at position {pos}", pos)
    char = text[inner]
    if char == "*":
        steps.append(_Each())
        end = inner + 1
    elif char in "\"'":
        name, end = _quoted(text, inner)
        steps.append(_Key(name))
    else:
        match = _INDEX_RE.match(text, inner)
        if match is None:
            raise PathSyntaxError(
                f"expected *, an integer or a quoted key after '[' at position {inner}", inner
            )
        steps.append(_Index(int(match.group())))
        end = match.end()
    if end >= len(text) or text[end] != "]":
        raise PathSyntaxError(f"expected ']' at position {end}", end)
    return end + 1


def _quoted(text: str, start: int) -> tuple[str, int]:
    """A quoted key starting at ``text[start]`` (the quote); (key, position after it)."""
    quote = text[start]
    chars: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            if pos + 1 >= len(text) or text[pos + 1] not in (quote, "\\"):
                raise PathSyntaxError(
                    f"a backslash may only escape {quote} or \\ (position {pos})", pos
                )
            chars.append(text[pos + 1])
            pos += 2
        elif char == quote:
            return "".join(chars), pos + 1
        else:
            chars.append(char)
            pos += 1
    raise PathSyntaxError(f"unclosed quote starting at position {start}", start)
