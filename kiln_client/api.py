"""A small client of the REST API. Errors carry the API's own message."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """The API refused the request (its message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.extra = extra or {}
        """The error's ``extra`` (an existing object's ``id``, ``fields``...)."""


class UsageError(Exception):
    """The command line itself is wrong (exit status 2, as argparse's own errors)."""


class Client:
    """Bearer-token client; ``KILN_URL`` and ``KILN_TOKEN`` come from the environment by default."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("KILN_URL") or "http://127.0.0.1:8000").rstrip("/")
        token = token or os.environ.get("KILN_TOKEN") or _token_from_file()
        if not token:
            raise ApiError("no API token: set KILN_TOKEN (create one with `manage.py create_api_token USER`)")
        self.http = httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500] or response.reason_phrase}
        if response.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else None
            extra = body.get("extra") if isinstance(body, dict) else None
            raise ApiError(
                message or f"HTTP {response.status_code}",
                response.status_code,
                extra if isinstance(extra, dict) else None,
            )
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload(
        self,
        model: str,
        path: Path,
        fields: dict[str, Any],
        progress: Callable[[int, int], None],
        external_data: Path | None = None,
    ) -> Any:
        """Upload a version as multipart (with an ONNX model's external data file), reporting bytes sent."""
        parts = [("file", path)] + ([] if external_data is None else [("external_data", external_data)])
        total = sum(p.stat().st_size for _, p in parts)
        data = {
            k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items() if v is not None
        }
        sent = dict.fromkeys((field for field, _ in parts), 0)

        def counted(field: str) -> Callable[[int, int], None]:
            def report(done: int, _size: int) -> None:
                sent[field] = done
                progress(sum(sent.values()), total)

            return report

        with contextlib.ExitStack() as stack:
            files = {
                field: (
                    p.name,
                    _ProgressReader(stack.enter_context(p.open("rb")), 0, counted(field)),
                    _BINARY,
                )
                for field, p in parts
            }
            return self.request("POST", f"/models/{model}/versions/", data=data, files=files, timeout=None)


_BINARY = "application/octet-stream"


class _ProgressReader:
    """A file wrapper that counts what httpx reads from it."""

    def __init__(self, handle: Any, size: int, progress: Callable[[int, int], None]) -> None:
        self.handle, self.size, self.progress, self.sent = handle, size, progress, 0

    def read(self, n: int = -1) -> bytes:
        chunk: bytes = self.handle.read(n)
        self.sent += len(chunk)
        self.progress(self.sent, self.size)
        return chunk

    # httpx sizes the multipart body from these, so the upload is not sent chunked.
    def fileno(self) -> int:
        return int(self.handle.fileno())

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.handle.seek(offset, whence))

    def tell(self) -> int:
        return int(self.handle.tell())

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk


def _token_from_file() -> str | None:
    name = os.environ.get("KILN_TOKEN_FILE")
    return Path(name).read_text().strip() if name else None
