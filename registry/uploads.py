"""A Django upload handler that streams files to the artifact store's temp dir.

It hashes while writing, enforces ``KILN_MAX_UPLOAD_BYTES`` while the bytes
arrive (never after buffering them), and never uses the client's file name for
anything but display.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from registry import storage


class HashedTempUploadedFile(UploadedFile):  # type: ignore[type-arg]
    """An uploaded file on disk (deleted on close) with its sha256 and size known."""

    def __init__(self, name: str, content_type: str | None, charset: str | None) -> None:
        self.handle = tempfile.NamedTemporaryFile(dir=storage.temp_dir(), suffix=".upload")  # noqa: SIM115
        super().__init__(self.handle, name, content_type, 0, charset)
        self.sha256 = ""
        self._hasher = hashlib.sha256()

    def temporary_file_path(self) -> str:
        return str(self.handle.name)

    def write_chunk(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self._hasher.update(chunk)
        self.size = (self.size or 0) + len(chunk)

    def finish(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.seek(0)
        self.sha256 = self._hasher.hexdigest()

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.handle.close()


class BoundedHashingUploadHandler(FileUploadHandler):
    """Stream to a temp file; stop (and flag the request) once the size limit is passed."""

    def handle_raw_input(
        self,
        input_data: Any,
        META: dict[str, Any],
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        limit = settings.KILN_MAX_UPLOAD_BYTES
        if content_length and int(content_length) > limit + settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            self.request.upload_too_large = True  # type: ignore[union-attr]

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        if getattr(self.request, "upload_too_large", False):
            raise StopUpload(connection_reset=False)
        self.upload = HashedTempUploadedFile(str(self.file_name), self.content_type, self.charset)

    earlier_files = 0
    """Bytes of the request's files before this one: the limit holds for all of them together (a
    model and its external data)."""

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self.earlier_files + start + len(raw_data) > settings.KILN_MAX_UPLOAD_BYTES:
            self.request.upload_too_large = True  # type: ignore[union-attr]
            self.upload.close()
            raise StopUpload(connection_reset=False)
        self.upload.write_chunk(raw_data)

    def file_complete(self, file_size: int) -> HashedTempUploadedFile:
        self.upload.finish()
        self.earlier_files += self.upload.size or 0
        return self.upload

    def upload_interrupted(self) -> None:
        upload = getattr(self, "upload", None)
        if upload is not None:
            upload.close()
