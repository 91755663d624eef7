"""Cluster-wide singleton locks for beat jobs: PostgreSQL advisory locks.

On SQLite (the single-machine fallback) there is only one beat, so the lock is
always granted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(name: str, *, wait_s: float = 0.0) -> Iterator[bool]:
    """Try to take the lock ``name``, for up to ``wait_s`` seconds; yields whether it was taken."""
    if connection.vendor != "postgresql":
        yield True
        return
    key = _key(name)
    deadline = time.monotonic() + wait_s
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            taken = bool(cursor.fetchone()[0])
        if taken or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    try:
        yield taken
    finally:
        if taken:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
