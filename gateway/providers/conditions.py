"""Conditions on a decoded reply: ``error_code != 0``, ``c not in ["0", 0]``.

Parsed once into a small tree and evaluated by walking it — nothing is
``eval``'d. Grammar::

    condition  := clause ( "or" clause )*
    clause     := comparison ( "and" comparison )*
    comparison := path op literal
    op         := "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not in"
    literal    := string | number | "true" | "false" | "null" | list
    list       := "[" literal ( "," literal )* "]"        (only after in / not in)
    string     := '"' … '"' | "'" … "'"                   (backslash escapes the quote and itself)

``and`` binds tighter than ``or``; there are no parentheses. ``path`` is a
:mod:`~gateway.providers.fieldpath` path naming one value (no ``[*]``).

Semantics: a path that matches nothing compares as ``null``. Equality is
strict about types — ``"0" == 0`` is false — except that integers and floats
compare by value; ``true`` is not ``1``. ``<``, ``<=``, ``>``, ``>=`` hold only
between two numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from gateway.providers.fieldpath import MISSING, FieldPath, PathSyntaxError, parse_path

__all__ = ["Condition", "ConditionSyntaxError", "parse_condition"]

Scalar = str | int | float | bool | None
Operand = Scalar | tuple[Scalar, ...]


class ConditionSyntaxError(ValueError):
    """A condition that breaks the grammar; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        self.position = position
        super().__init__(message)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(left: object, right: object) -> bool:
    if _is_number(left) and _is_number(right):
        return left == right
    return type(left) is type(right) and left == right


def _ordered(test: Callable[[float, float], bool]) -> Callable[[object, Operand], bool]:
    def compare(value: object, literal: Operand) -> bool:
        if _is_number(value) and _is_number(literal):
            return test(value, literal)  # type: ignore[arg-type]
        return False

    return compare


def _in(value: object, literal: Operand) -> bool:
    assert isinstance(literal, tuple)
    return any(_equal(value, item) for item in literal)


_OPERATORS: Final[dict[str, Callable[[object, Operand], bool]]] = {
    "==": _equal,
    "!=": lambda value, literal: not _equal(value, literal),
    "<=": _ordered(lambda a, b: a <= b),
    ">=": _ordered(lambda a, b: a >= b),
    "<": _ordered(lambda a, b: a < b),
    ">": _ordered(lambda a, b: a > b),
    "not in": lambda value, literal: not _in(value, literal),
    "in": _in,
}


@dataclass(frozen=True, slots=True)
class _Comparison:
    path: FieldPath
    op: str
    literal: Operand

    def holds(self, document: Any) -> bool:
        value = self.path.first(document)
        return _OPERATORS[self.op](None if value is MISSING else value, self.literal)


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: any clause whose comparisons all hold makes it true."""

    text: str
    clauses: tuple[tuple[_Comparison, ...], ...]

    def holds(self, document: Any) -> bool:
        return any(all(c.holds(document) for c in clause) for clause in self.clauses)

    def __str__(self) -> str:
        return self.text


def parse_condition(text: str) -> Condition:
    """Parse ``text`` by the grammar in this module's docstring.

    Raises:
        ConditionSyntaxError: saying what was expected and where.
    """
    parser = _Parser(text)
    clauses = [parser.clause()]
    while parser.keyword("or"):
        clauses.append(parser.clause())
    parser.skip_space()
    if parser.pos < len(text):
        parser.fail(f"expected 'and', 'or' or the end, found {text[parser.pos :][:12]!r}")
    return Condition(text, tuple(clauses))


_NUMBER_RE: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_WORD_RE: Final = re.compile(r"[A-Za-z_]+")
_SYMBOLS: Final = ("==", "!=", "<=", ">=", "<", ">")
_PATH_STOP: Final = frozenset(" \t\r\n=!<>")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, position: int | None = None) -> NoReturn:
        where = self.pos if position is None else position
        raise ConditionSyntaxError(f"{message} (position {where})", where)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def keyword(self, word: str) -> bool:
        """Consume ``word`` if it comes next as a whole word."""
        self.skip_space()
        match = _WORD_RE.match(self.text, self.pos)
        if match is not None and match.group() == word:
            self.pos = match.end()
            return True
        return False

    def clause(self) -> tuple[_Comparison, ...]:
        comparisons = [self.comparison()]
        while self.keyword("and"):
            comparisons.append(self.comparison())
        return tuple(comparisons)

    def comparison(self) -> _Comparison:
        path = self.path()
        op = self.operator()
        literal = self.literal(allow_list=op in ("in", "not in"))
        if op in ("in", "not in") and not isinstance(literal, tuple):
            self.fail(f"'{op}' needs a list literal such as [401, 403]")
        if op in ("<", "<=", ">", ">=") and not _is_number(literal):
            self.fail(f"'{op}' compares numbers; {literal!r} is not a number")
        return _Comparison(path, op, literal)

    def path(self) -> FieldPath:
        self.skip_space()
        start = self.pos
        depth, quote = 0, ""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if quote:
                if char == "\\":
                    self.pos += 1
                elif char == quote:
                    quote = ""
            elif char in "\"'":
                quote = char
            elif char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
            elif depth == 0 and char in _PATH_STOP:
                break
            self.pos += 1
        raw = self.text[start : self.pos]
        if not raw:
            self.fail("expected a field path")
        try:
            path = parse_path(raw)
        except PathSyntaxError as exc:
            raise ConditionSyntaxError(f"bad path {raw!r}: {exc}", start + exc.position) from None
        if path.fans_out:
            self.fail(f"a condition compares one value; {raw!r} uses [*]", start)
        return path

    def operator(self) -> str:
        self.skip_space()
        for symbol in _SYMBOLS:
            if self.text.startswith(symbol, self.pos):
                self.pos += len(symbol)
                return symbol
        if self.keyword("in"):
            return "in"
        if self.keyword("not"):
            if self.keyword("in"):
                return "not in"
            self.fail("expected 'in' after 'not'")
        self.fail("expected an operator: == != < <= > >= in 'not in'")

    def literal(self, *, allow_list: bool) -> Operand:
        self.skip_space()
        if self.pos >= len(self.text):
            self.fail("expected a value")
        char = self.text[self.pos]
        if char == "[":
            if not allow_list:
                self.fail("a list only follows 'in' or 'not in'")
            return self.list_literal()
        return self.scalar()

    def list_literal(self) -> tuple[Scalar, ...]:
        self.pos += 1  # "["
        items: list[Scalar] = []
        self.skip_space()
        if self.text.startswith("]", self.pos):
            self.fail("a list needs at least one value")
        while True:
            items.append(self.scalar())
            self.skip_space()
            if self.text.startswith(",", self.pos):
                self.pos += 1
                continue
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return tuple(items)
            self.fail("expected ',' or ']' in the list")

    def scalar(self) -> Scalar:
        self.skip_space()
        text, start = self.text, self.pos
        if start >= len(text):
            self.fail("expected a value")
        if text[start] in "\"'":
            return self.string()
        number = _NUMBER_RE.match(text, start)
        if number is not None:
            self.pos = number.end()
            raw = number.group()
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.keyword(word):
                return value
        self.fail("expected a string, a number, true, false or null")

    def string(self) -> str:
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                following = self.text[self.pos + 1 : self.pos + 2]
                if following not in (quote, "\\"):
                    self.fail(f"a backslash may only escape {quote} or \\")
                chars.append(following)
                self.pos += 2
            elif char == quote:
                self.pos += 1
                return "".join(chars)
            else:
                chars.append(char)
                self.pos += 1
        self.fail("unclosed string", start)
