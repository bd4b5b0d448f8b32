"""Reading docs/protocol.md for the tests that hold it to the code: its
sections, its tables and its fenced code blocks."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "protocol.md"


def text() -> str:
    return PAGE.read_text(encoding="utf-8")


def headings(page: str) -> list[str]:
    """The numbers of the page's numbered headings: ``"1"``, ``"6.2"``, ..."""
    return re.findall(r"^#{2,3} §(\d+(?:\.\d+)?) ", page, re.M)


def section(page: str, number: str) -> str:
    """The text of section ``number`` (``"4"``, ``"6.2"``), up to the next
    heading of the same or a higher level."""
    level = "##" if "." not in number else "###"
    start = re.search(rf"^{level} §{re.escape(number)} .*$", page, re.M)
    if start is None:
        raise AssertionError(f"docs/protocol.md has no section {number}")
    rest = page[start.end():]
    end = re.search(rf"^#{{2,{len(level)}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def subsection(page: str, title: str) -> str:
    """The text under the unnumbered ``### <title>`` heading."""
    start = re.search(rf"^### {re.escape(title)}$", page, re.M)
    if start is None:
        raise AssertionError(f"docs/protocol.md has no subsection {title!r}")
    rest = page[start.end():]
    end = re.search(r"^#{2,3} ", rest, re.M)
    return rest[: end.start()] if end else rest


def table(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text``, cells stripped of
    spaces and backticks (an escaped ``\\|`` stays inside its cell)."""
    rows: list[list[str]] = []
    lines = [line for line in text.splitlines() if line.startswith("|")]
    for line in lines[2:]:  # after the header row and the --- row
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([c.strip().strip("`").strip() for c in cells])
    return rows


def fenced(text: str, language: str = "") -> list[str]:
    """The fenced code blocks of ``text`` whose opening fence names ``language``."""
    blocks: list[str] = []
    lines: list[str] = []
    opened: str | None = None  # the language of the block being read
    for line in text.splitlines():
        if opened is None:
            if line.startswith("```"):
                opened, lines = line[3:].strip(), []
        elif line.startswith("```"):
            if opened == language:
                blocks.append("\n".join(lines) + "\n")
            opened = None
        else:
            lines.append(line)
    return blocks
