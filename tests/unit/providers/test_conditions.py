"""Conditions: parsed, not evaluated as code; strict about types; errors with positions."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.providers.conditions import ConditionSyntaxError, parse_condition

AILAB_ERROR = {"error_code": 401, "error_msg": "Unauthorized", "error_detail": {"code": "E"}}
AILAB_OK = {"error_code": 0, "task_status": 1}
AHOLO_ERROR = {"c": "100101", "m": "sign error"}
AHOLO_OK = {"c": "0", "d": []}


@pytest.mark.parametrize(
    ("condition", "document", "holds"),
    [
        ("error_code != 0", AILAB_ERROR, True),
        ("error_code != 0", AILAB_OK, False),
        ('c != "0"', AHOLO_ERROR, True),
        ('c != "0"', AHOLO_OK, False),
        ("c != '0'", {"c": 0}, True),  # strict: the number 0 is not the text "0"
        ('c not in ["0", 0]', {"c": 0}, False),
        ("error_code in [401, 403]", AILAB_ERROR, True),
        ("error_code in [401, 403]", {"error_code": 429}, False),
        ("error_code not in [401, 403]", {"error_code": 429}, True),
        ("error_code >= 500", {"error_code": 503}, True),
        ("error_code < 500", {"error_code": 400}, True),
        ("error_code < 500", {"error_code": "400"}, False),  # ordering only between numbers
        ("error_code <= 400.0", {"error_code": 400}, True),  # ints and floats compare by value
        ("error_code > 1e2", {"error_code": 101}, True),
        ("ok == true", {"ok": True}, True),
        ("ok == 1", {"ok": True}, False),  # true is not 1
        ("missing == null", {}, True),  # a path that matches nothing compares as null
        ("missing != 0", {}, True),
        ("error_detail.code == 'E'", AILAB_ERROR, True),
        ("list[0] == -1", {"list": [-1]}, True),
        ('["odd key"] == "x y"', {"odd key": "x y"}, True),
        ("error_code != 0 and error_code < 500", {"error_code": 400}, True),
        ("error_code != 0 and error_code < 500", {"error_code": 503}, False),
        # "and" binds tighter than "or"
        ("a == 1 or b == 1 and c == 1", {"a": 1, "b": 0, "c": 0}, True),
        ("a == 1 or b == 1 and c == 1", {"a": 0, "b": 1, "c": 0}, False),
        ('m == "a and b"', {"m": "a and b"}, True),
        ('m == "say \\"hi\\""', {"m": 'say "hi"'}, True),
    ],
)
def test_conditions_hold_as_documented(condition: str, document: Any, holds: bool) -> None:
    assert parse_condition(condition).holds(document) is holds


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ("", "expected a field path"),
        ("error_code", "expected an operator"),
        ("error_code = 0", "expected an operator"),
        ("error_code == ", "expected a value"),
        ("error_code == [1]", "a list only follows 'in'"),
        ("error_code in 1", "needs a list literal"),
        ("error_code in []", "at least one value"),
        ("error_code in [1 2]", "expected ',' or ']'"),
        ("error_code > 'a'", "compares numbers"),
        ("error_code == 0 xor b == 1", "expected 'and', 'or' or the end"),
        ("error_code not 1", "expected 'in' after 'not'"),
        ("a == 'open", "unclosed string"),
        ("a == nope", "expected a string, a number"),
        ("d[*].status == 1", "uses [*]"),
        ("a..b == 1", "bad path"),
        ("__import__('os') == 1", "bad path"),
    ],
)
def test_bad_conditions_are_refused_with_a_reason(condition: str, fragment: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse_condition(condition)
    assert fragment in str(info.value)
    assert f"(position {info.value.position})" in str(info.value) or "bad path" in str(info.value)


def test_a_condition_keeps_its_text() -> None:
    assert str(parse_condition("error_code != 0")) == "error_code != 0"
