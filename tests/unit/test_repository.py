"""The repository stands alone: what its code and documents cite is in it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEARCHED = ("gateway", "clients", "tests", "docs", "deploy", "scripts", "README.md", "Makefile")
SKIPPED_DIRS = {"node_modules", "__pycache__", ".venv"}
TEXT = {".py", ".md", ".js", ".mjs", ".ts", ".toml", ".sh", ".yaml", ".yml", ".html", ".conf"}
# Documents that live outside the repository and that nothing here may point at.
OUTSIDE = re.compile(r"DESIGN\.md|upstream-docs|\.\./shared\b")
# (docs/protocol.md, "Section"): a citation of one section of one of our documents.
CITED = re.compile(r"(docs/[\w/.-]+\.md), \"([^\"]+)\"")


def texts() -> Iterator[tuple[Path, str]]:
    """Every text file we write (this one aside: it names what it looks for)."""
    me = Path(__file__).resolve()
    for name in SEARCHED:
        top = ROOT / name
        paths = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in paths:
            if SKIPPED_DIRS & set(path.relative_to(ROOT).parts) or not path.is_file():
                continue
            if path.resolve() == me:
                continue
            if path.suffix in TEXT or path.name == "Makefile":
                yield path, path.read_text(errors="replace")


def test_nothing_points_at_documents_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for path, text in texts()
        for m in OUTSIDE.finditer(text)
    ]
    assert found == []


def test_every_cited_section_of_our_documents_exists() -> None:
    headings: dict[str, set[str]] = {}
    cited = 0
    for path, text in texts():
        for m in CITED.finditer(text):
            doc, section = m.group(1), m.group(2)
            if doc not in headings:
                target = ROOT / doc
                assert target.is_file(), f"{path.relative_to(ROOT)} cites {doc}, which is missing"
                lines = target.read_text().splitlines()
                headings[doc] = {line.lstrip("#").strip() for line in lines if line.startswith("#")}
            assert section in headings[doc], f"{path.relative_to(ROOT)}: {doc} has no {section!r}"
            cited += 1
    assert cited >= 5  # the docstrings that cite docs/protocol.md by section
