"""Field paths: the grammar, quoting rules, and walking decoded JSON."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.providers.fieldpath import MISSING, PathSyntaxError, parse_path

REPLY: dict[str, Any] = {
    "c": "0",
    "d": [
        {"taskId": "A", "status": 3, "result": {"plyPath": "/a.ply"}},
        {"taskId": "B", "status": 2, "result": None},
    ],
    "error_detail": {"code": "", "message": "fine"},
    "files": {"video": "/v.mp4", "audio": "/a.mp3"},
    "odd keys": {"a.b": 1, "0": "zero", 'quote"d': 2, "back\\slash": 3},
    "empty": [],
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("c", ["0"]),
        ("$", [REPLY]),
        ("$.c", ["0"]),
        ("error_detail.message", ["fine"]),
        ("d[0].taskId", ["A"]),
        ("d[-1].taskId", ["B"]),
        ("d[*].taskId", ["A", "B"]),
        ("$.d[*].status", [3, 2]),
        ("d[*].result.plyPath", ["/a.ply"]),  # a null result matches nothing further
        ("d[1].result", [None]),  # null itself is a value
        ("files[*]", ["/v.mp4", "/a.mp3"]),  # [*] over an object: its values in order
        ('["odd keys"]["a.b"]', [1]),
        ("[\"odd keys\"]['0']", ["zero"]),
        ('["odd keys"]["quote\\"d"]', [2]),
        ("[\"odd keys\"]['back\\\\slash']", [3]),
        ("empty[*]", []),
        ("missing.deeper", []),
        ("d[5]", []),
        ("c[0]", []),  # an index asked of a string
        ("d.taskId", []),  # a key asked of a list
        ("error_detail[0]", []),
    ],
)
def test_paths_find_what_the_reply_holds(path: str, expected: list[Any]) -> None:
    assert parse_path(path).find(REPLY) == expected


def test_first_distinguishes_missing_from_null() -> None:
    assert parse_path("d[1].result").first(REPLY) is None
    assert parse_path("d[1].nope").first(REPLY) is MISSING
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert parse_path("d[*].taskId").first(REPLY) == "A"


def test_only_paths_with_a_wildcard_fan_out() -> None:
    assert parse_path("d[*].taskId").fans_out
    assert not parse_path("d[0].taskId").fans_out
    assert str(parse_path("a.b")) == "a.b"


@pytest.mark.parametrize(
    ("path", "position", "fragment"),
    [
        ("", 0, "cannot be empty"),
        ("a..b", 2, "expected a key name"),
        ("a.", 2, "expected a key name"),
        ("a.0", 2, "quote other keys"),
        ("0abc", 0, "expected a key name or '['"),
        ("a[", 1, "unclosed '['"),
        ("a[x]", 2, "expected *, an integer or a quoted key"),
        ("a[1", 3, "expected ']'"),
        ("a[*", 3, "expected ']'"),
        ('a["b]', 2, "unclosed quote"),
        ('a["b\\x"]', 4, "backslash may only escape"),
        ("a b", 1, "unexpected ' '"),
        ("$x", 1, "after '$'"),
        ("a]", 1, "unexpected ']'"),
    ],
)
def test_syntax_errors_say_what_and_where(path: str, position: int, fragment: str) -> None:
    with pytest.raises(PathSyntaxError) as info:
        parse_path(path)
    assert info.value.position == position
    assert fragment in str(info.value)
