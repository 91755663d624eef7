"""Worker log files on this machine: read their end, keep them bounded.

The process backend writes a worker's output there; the docker backend keeps a removed
container's last lines there; the reconcile loop trims them all.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path


def tail_file(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a file, read from its end."""
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 256 * 1024))
        tail = deque(handle.read().decode("utf-8", "replace").splitlines(), maxlen=lines)
    return "\n".join(tail)


def trim_log(path: Path, *, max_bytes: int) -> None:
    """Keep a worker log bounded: past ``max_bytes`` only its last half is kept."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size <= max_bytes:
        return
    with path.open("rb") as handle:
        handle.seek(size - max_bytes // 2)
        keep = handle.read()
    with path.open("r+b") as handle:
        handle.seek(0)
        handle.write(b"--- (older lines dropped)\n" + keep)
        handle.truncate()
