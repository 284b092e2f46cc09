"""Just enough of Docker's file formats to check deploy/Dockerfile and .dockerignore.

* :func:`parse_dockerfile` — stages and instructions (line continuations,
  comments and parser directives handled as the Dockerfile reference says).
* :class:`DockerIgnore` — the build-context filter: Go ``filepath.Match``
  patterns plus ``**``, ``!`` exceptions, last match wins, and a pattern that
  matches a directory excludes everything below it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DockerIgnore",
    "Instruction",
    "Stage",
    "copy_sources",
    "exec_form",
    "healthcheck_command",
    "parse_dockerfile",
    "split_flags",
]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined with a space


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with ``\\`` continuations joined; comments dropped.

    A comment line inside a continued instruction is removed, not ended on
    (Dockerfile reference, "Format").
    """
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        yield " ".join(p for p in pending if p)
        pending = []
    if pending:
        yield " ".join(p for p in pending if p)


def parse_dockerfile(text: str) -> list[Stage]:
    """The build stages, in order. Instructions before the first FROM are refused."""
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            _flags, rest = split_flags(args)
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            raise ValueError(f"{keyword} before the first FROM")
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return stages


def split_flags(args: str) -> tuple[dict[str, list[str]], str]:
    """Leading ``--name=value`` flags (repeatable, e.g. ``--mount``) and the rest."""
    flags: dict[str, list[str]] = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags.setdefault(name, []).append(value)
        rest = rest.lstrip()
    return flags, rest


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list; shell form is refused.

    Exec form runs the program directly as PID 1, so it receives SIGTERM itself
    (shell form would wrap it in ``/bin/sh -c``, which does not forward it).
    """
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not an exec-form list of strings: {args}")
    return value


def healthcheck_command(instruction: Instruction) -> tuple[dict[str, list[str]], list[str]]:
    """The options and the command of ``HEALTHCHECK [OPTIONS] CMD [...]``."""
    flags, rest = split_flags(instruction.args)
    word, _, command = rest.partition(" ")
    if word.upper() != "CMD":
        raise ValueError(f"HEALTHCHECK without CMD: {instruction.args}")
    command = command.strip()
    return flags, exec_form(command) if command.startswith("[") else ["/bin/sh", "-c", command]


def copy_sources(instruction: Instruction) -> tuple[dict[str, list[str]], list[str], str]:
    """``COPY [flags] src... dest`` → (flags, sources, dest)."""
    flags, rest = split_flags(instruction.args)
    words = exec_form(rest) if rest.startswith("[") else shlex.split(rest)
    return flags, words[:-1], words[-1]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go ``filepath.Match`` syntax plus ``**`` (any number of directories)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            if body.startswith("^"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


class DockerIgnore:
    """A parsed ``.dockerignore``: which context paths a build can see."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((negated, pattern, _pattern_regex(pattern)))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative, ``/``-separated) is left out of the context."""
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negated, _pattern, regex in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                result = not negated
        return result

    def may_include_below(self, directory: str) -> bool:
        """Whether an exception pattern could re-include something under ``directory``."""
        return any(
            negated and pattern.startswith(directory + "/") for negated, pattern, _ in self.rules
        )

    def context(self, root: Path) -> set[str]:
        """Every file of the build context rooted at ``root`` (relative paths)."""
        found: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            dirnames[:] = [
                d
                for d in dirnames
                if not self.excluded(rel_dir + d) or self.may_include_below(rel_dir + d)
            ]
            found.update(rel_dir + f for f in filenames if not self.excluded(rel_dir + f))
        return found
