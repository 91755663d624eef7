"""Content-addressed artifact storage under ``KILN_ARTIFACT_ROOT``.

Files are stored as ``sha256/<first two hex digits>/<digest>`` and written through
a temp file in the same filesystem, fsynced, then hard-linked into place: a path
is never derived from user input and a half-written file is never visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from django.conf import settings

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


def root() -> Path:
    return Path(settings.KILN_ARTIFACT_ROOT)


def temp_dir() -> Path:
    path = root() / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def relative_path_for(digest: str) -> str:
    """The storage-relative path of a digest; refuses anything that is not a hex digest."""
    if not _DIGEST.match(digest):
        msg = f"not a sha256 digest: {digest!r}"
        raise ValueError(msg)
    return f"sha256/{digest[:2]}/{digest}"


def resolve(relative: str) -> Path:
    """The absolute path of a stored artifact; refuses anything outside the root."""
    base = root().resolve()
    path = (base / relative).resolve()
    if base not in path.parents:
        msg = f"artifact path escapes the storage root: {relative!r}"
        raise ValueError(msg)
    return path


def sha256_file(path: Path) -> tuple[str, int]:
    """Digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def store_file(source: Path, digest: str) -> tuple[str, bool]:
    """Link ``source`` (already fsynced, in the same filesystem) into its content address.

    Returns the relative path and whether a new file was created (False when the
    same content was stored before). The caller removes ``source`` itself.
    """
    relative = relative_path_for(digest)
    target = resolve(relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        return relative, False
    except OSError:
        # Filesystems without hard links: copy through a temp name, then rename atomically.
        with tempfile.NamedTemporaryFile(dir=temp_dir(), delete=False) as tmp, source.open("rb") as src:
            while chunk := src.read(CHUNK):
                tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        if target.exists():
            Path(tmp.name).unlink()
            return relative, False
        Path(tmp.name).replace(target)
    _fsync_dir(target.parent)
    return relative, True


@contextlib.contextmanager
def new_temp_file(suffix: str = "") -> Iterator[Path]:
    """A temp path inside the storage root that is removed when the block ends."""
    handle, name = tempfile.mkstemp(dir=temp_dir(), suffix=suffix)
    os.close(handle)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def store_path(path: Path) -> tuple[str, str, int, bool]:
    """fsync a finished temp file and store it: (relative path, sha256, size, created)."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
    digest, size = sha256_file(path)
    relative, created = store_file(path, digest)
    return relative, digest, size, created


def remove_if_unreferenced(relative: str, *, referenced: bool) -> None:
    """Delete a stored file that no row points at (after a failed registration)."""
    if not referenced:
        resolve(relative).unlink(missing_ok=True)


def remove_unreferenced(relative: str, referenced: Callable[[], bool]) -> bool:
    """Delete a stored file once no row points at it (its last version was deleted); whether it went.

    Stored files are shared by every version with the same bytes, and an upload of those bytes may
    be between finding the file and committing its row. So the file is first renamed aside, then
    ``referenced()`` is asked again: a row that committed meanwhile gets its file back, and a row
    that commits later finds it gone and stores it again (``ensure_stored``).
    """
    target = resolve(relative)
    if referenced():
        return False
    aside = temp_dir() / f"deleting-{target.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        target.rename(aside)
    except FileNotFoundError:
        return False
    if referenced():
        os.replace(aside, target)  # back: the same bytes as any an upload stored again meanwhile
        return False
    aside.unlink()
    return True


def ensure_stored(relative: str, source: Path, digest: str) -> None:
    """After the row pointing at ``relative`` committed: store ``source`` again if a deletion of the
    last other version with these bytes removed the file meanwhile (``remove_unreferenced``)."""
    if not resolve(relative).exists():
        store_file(source, digest)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
