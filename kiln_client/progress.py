"""Progress lines on a terminal or in a CI log."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A one-line progress bar on a terminal; plain lines otherwise (CI logs)."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def bar(self, label: str, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        if self.tty:
            filled = int(fraction * 30)
            self.stream.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}")
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
        elif done >= total:
            self.line(f"{label}: {total} bytes")

    def line(self, text: str) -> None:
        if text != self.last:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last = text
