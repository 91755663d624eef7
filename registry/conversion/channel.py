"""What code running in the sandboxed child uses to talk to its parent. Pure: no Django."""

from __future__ import annotations

import sys
from typing import Any


class ChildError(Exception):
    """A failure with a message for the user, a code, and extra JSON for the report."""

    def __init__(self, message: str, code: str = "failed", extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.extra = extra or {}


def progress(text: str) -> None:
    """Report progress to the parent (shown on the version page)."""
    sys.stdout.write(f"PROGRESS {text}\n")
    sys.stdout.flush()
