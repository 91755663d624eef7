"""The shell and Python examples of the README and docs/, read as a reader meets them.

A block runs unless the line right before its opening fence is ``<!-- norun: reason -->``;
blocks in other languages (yaml, text, plain ``` drawings) are not programs and are listed
apart. Indented fences (examples inside list items) count, their indentation removed.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

RUNNABLE = {"sh": "sh", "bash": "sh", "shell": "sh", "console": "sh", "python": "python", "py": "python"}
NORUN = re.compile(r"^\s*<!--\s*norun:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")


@dataclass(frozen=True)
class Block:
    """One fenced example: where it is, its language, its code, and why it does not run (if it does not)."""

    path: Path
    line: int
    lang: str
    code: str
    norun: str | None

    @property
    def kind(self) -> str | None:
        """``sh`` or ``python`` for an example to run; None for a block that is not a program."""
        return RUNNABLE.get(self.lang)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def documents() -> list[Path]:
    """The README first, then docs/ in name order: the order a reader follows."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = NORUN.match(previous)
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence[0] * len(fence)):
            end += 1
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        found.append(
            Block(
                path=path,
                line=index + 1,
                lang=opening["lang"].lower(),
                code=textwrap.dedent("\n".join(body)) + "\n",
                norun=marker["reason"] if marker else None,
            )
        )
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks_of(path)]
