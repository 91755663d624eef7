"""System shared memory (Triton's extension): regions a client registers, tensors passed by reference.

A client on the worker's host creates a POSIX shared memory object (``shm_open``;
tritonclient's ``utils.shared_memory``), registers a window of it under a name, and then
names that region in an input's or a requested output's parameters
(``shared_memory_region``, ``shared_memory_offset``, ``shared_memory_byte_size``) instead
of sending the bytes. Everything here runs on the event loop thread.

Clients are untrusted:

- a key is a POSIX name (``/`` then letters, digits, ``.``, ``_``, ``-``), opened relative
  to ``/dev/shm`` (no slash is left in it), never through a symbolic link
  (``O_NOFOLLOW``); it must be a regular file (a FIFO or a directory is refused) that the
  worker's own user owns (a worker run as root would otherwise write into any process's
  shared memory: PostgreSQL keeps its own there);
- registering checks the window against the object's size, and a worker holds at most
  ``--max-shm-regions`` regions and ``--max-shm-bytes`` bytes;
- tensors move with ``preadv``/``pwritev`` on the object's descriptor, not through a
  mapping: an object the client shrinks after registering gives a short read and a 400,
  where a mapping would kill the worker with SIGBUS. That costs one copy in (into the
  array ONNX Runtime runs on) and one copy out, a few microseconds for an image;
- a region's descriptor closes with its last reference (``weakref.finalize``): at
  unregistering, or when the last request in flight that names it is answered, so an
  unlinked object works until then and a descriptor number is never reused under a request.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from inference_worker.config import SharedMemoryConfig
from inference_worker.contracts.worker_options import MAX_BODY_BYTES
from inference_worker.errors import InvalidRequest, PayloadTooLarge, WorkerError
from inference_worker.tensor_codec import Datatype, decode_raw, raw_bytes

EXTENSION: Final = "system_shared_memory"
REGION: Final = "shared_memory_region"
OFFSET: Final = "shared_memory_offset"
BYTE_SIZE: Final = "shared_memory_byte_size"
PARAMETERS: Final = (REGION, OFFSET, BYTE_SIZE)
DIRECTORY: Final = "/dev/shm"  # noqa: S108 - where POSIX shared memory objects live, not a temp file
PREFIX: Final = b"/v2/systemsharedmemory"
"""Where the extension's HTTP routes start."""
MAX_NAME: Final = 256
_KEY = re.compile(r"/?([A-Za-z0-9_][A-Za-z0-9_.\-]{0,254})")
_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
OFF = (
    "system shared memory is off on this worker: it serves clients on its own host, "
    "and starts with --system-shared-memory on"
)


class UnknownRegion(WorkerError):
    """A status request names a region that is not registered (404 / ``NOT_FOUND``)."""

    code = "not_found"


class Region:
    """One registered window of a shared memory object; its descriptor closes with the last reference."""

    __slots__ = ("__weakref__", "byte_size", "fd", "key", "name", "offset")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int) -> None:
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self.fd = fd
        weakref.finalize(self, os.close, fd)


@dataclass(frozen=True, slots=True)
class Window:
    """The bytes of a region one tensor names: ``offset`` is relative to the region."""

    region: Region
    offset: int
    byte_size: int


class SharedMemory:
    """The worker's registered regions, and reading and writing tensors through them."""

    def __init__(
        self,
        config: SharedMemoryConfig | None = None,
        *,
        max_input_bytes: int = MAX_BODY_BYTES.default,
        directory: str = DIRECTORY,
    ) -> None:
        self.config = config or SharedMemoryConfig()
        self._max_input_bytes = max_input_bytes
        """One input read from a region is bounded like a body (``--max-body-bytes``): 413 beyond."""
        self._directory = directory
        self._regions: dict[str, Region] = {}

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def region_count(self) -> int:
        return len(self._regions)

    @property
    def registered_bytes(self) -> int:
        return sum(region.byte_size for region in self._regions.values())

    # -- the control API -------------------------------------------------------------------------
    def register(self, *, name: str, key: str, offset: int, byte_size: int) -> None:
        """Open ``key`` and keep the window ``[offset, offset + byte_size)`` of it as ``name``."""
        self._check_enabled()
        if not 0 < len(name) <= MAX_NAME or not name.isprintable():
            raise InvalidRequest(f"a region name is 1 to {MAX_NAME} printable characters")
        if name in self._regions:
            raise InvalidRequest(f"shared memory region '{name}' is already registered; unregister it first")
        found = _KEY.fullmatch(key)
        if found is None:
            raise InvalidRequest(
                f"key {key[:300]!r} is not a POSIX shared memory name: '/' then 1 to 255 letters, "
                "digits, '.', '_' or '-', not starting with '.'"
            )
        if offset < 0 or byte_size <= 0:
            raise InvalidRequest("a region needs an offset of 0 or more and a byte_size of 1 or more")
        if len(self._regions) >= self.config.max_regions:
            raise InvalidRequest(
                f"this worker already holds {len(self._regions)} shared memory regions, its limit "
                "(--max-shm-regions); unregister one first"
            )
        if self.registered_bytes + byte_size > self.config.max_bytes:
            raise InvalidRequest(
                f"registering {byte_size} more bytes would pass the worker's limit of "
                f"{self.config.max_bytes} bytes of shared memory (--max-shm-bytes)"
            )
        fd = _open(self._directory, key, found[1])
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidRequest(f"'{key}' is not a shared memory object")
            if info.st_uid != os.geteuid():  # a worker run as root must not write another user's memory
                raise InvalidRequest(
                    f"shared memory object '{key}' belongs to another user; the worker opens only "
                    "its own user's objects"
                )
            if offset + byte_size > info.st_size:
                raise InvalidRequest(
                    f"shared memory object '{key}' holds {info.st_size} bytes: offset {offset} "
                    f"+ byte_size {byte_size} runs past its end"
                )
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, fd)

    def unregister(self, name: str = "") -> None:
        """Forget ``name`` (every region when empty); an unknown name is no error, as in Triton."""
        self._check_enabled()
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def status(self, name: str = "") -> list[Region]:
        """The region ``name``, or every region when empty."""
        self._check_enabled()
        if not name:
            return list(self._regions.values())
        region = self._regions.get(name)
        if region is None:
            raise UnknownRegion(f"no shared memory region '{name}' is registered")
        return [region]

    def close(self) -> None:
        """The worker stops: forget every region (their descriptors close with the last request)."""
        self._regions.clear()

    def _check_enabled(self) -> None:
        if not self.config.enabled:
            raise InvalidRequest(OFF)

    # -- tensors -----------------------------------------------------------------------------------
    def window(self, what: str, parameters: Mapping[str, object]) -> Window | None:
        """The window a tensor's parameters name (None when they name none), checked against its region."""
        if REGION not in parameters and BYTE_SIZE not in parameters and OFFSET not in parameters:
            return None
        self._check_enabled()
        name, offset, size = (parameters.get(key) for key in PARAMETERS)
        if not isinstance(name, str) or size is None:
            raise InvalidRequest(f"{what}: {REGION} (a string) and {BYTE_SIZE} go together")
        offset = 0 if offset is None else offset
        if type(offset) is not int or type(size) is not int or offset < 0 or size < 0:
            raise InvalidRequest(f"{what}: {OFFSET} and {BYTE_SIZE} must be non-negative integers")
        region = self._regions.get(name)
        if region is None:
            raise InvalidRequest(f"{what}: no shared memory region '{name[:300]}' is registered")
        if offset + size > region.byte_size:
            raise InvalidRequest(
                f"{what}: {OFFSET} {offset} + {BYTE_SIZE} {size} runs past region '{name}' "
                f"({region.byte_size} bytes)"
            )
        return Window(region, offset, size)

    def read(self, name: str, window: Window, dt: Datatype, shape: tuple[int, ...], count: int) -> np.ndarray:
        """Input ``name`` from ``window``, after checking its size against the shape."""
        if window.byte_size > self._max_input_bytes:
            raise PayloadTooLarge(
                f"input '{name}': {window.byte_size} bytes of shared memory exceed the limit of "
                f"{self._max_input_bytes} bytes (--max-body-bytes)"
            )
        expected = count * dt.dtype.itemsize
        if dt.name != "BYTES" and window.byte_size != expected:
            raise InvalidRequest(
                f"input '{name}': {dt.name} shape {list(shape)} needs {expected} bytes; "
                f"{BYTE_SIZE} is {window.byte_size}"
            )
        buffer = np.empty(window.byte_size, np.uint8)
        done, start = 0, window.region.offset + window.offset
        try:
            while done < window.byte_size:
                got = os.preadv(window.region.fd, [buffer[done:].data], start + done)
                if got == 0:
                    raise InvalidRequest(
                        f"input '{name}': shared memory object '{window.region.key}' is shorter than "
                        f"region '{window.region.name}': it was truncated after registering"
                    )
                done += got
        except OSError as exc:
            raise InvalidRequest(f"input '{name}': cannot read shared memory: {exc.strerror}") from None
        if dt.name == "BYTES":
            return decode_raw(name, dt, shape, count, buffer.data)
        return buffer.view(dt.dtype).reshape(shape)

    def write(self, name: str, window: Window, array: np.ndarray) -> int:
        """Output ``name`` into ``window``; returns the bytes written."""
        if array.dtype.kind in "OUS":
            data = np.frombuffer(raw_bytes(array), np.uint8)
        else:
            data = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
        if data.size > window.byte_size:
            raise InvalidRequest(
                f"output '{name}' is {data.size} bytes; {BYTE_SIZE} {window.byte_size} cannot hold it"
            )
        done, start = 0, window.region.offset + window.offset
        try:
            while done < data.size:
                done += os.pwritev(window.region.fd, [data[done:].data], start + done)
        except OSError as exc:
            raise InvalidRequest(f"output '{name}': cannot write shared memory: {exc.strerror}") from None
        return int(data.size)

    # -- the protocols' parameters -----------------------------------------------------------------
    def json_input(
        self, name: str, dt: Datatype, shape: tuple[int, ...], count: int, parameters: object
    ) -> np.ndarray | None:
        """``tensor_codec``'s hook for a v2 JSON input: its array when it names a region, else None."""
        if not isinstance(parameters, dict):
            return None
        window = self.window(f"input '{name}'", parameters)
        return None if window is None else self.read(name, window, dt, shape, count)

    def grpc_input(
        self, name: str, dt: Datatype, shape: tuple[int, ...], count: int, parameters: Any
    ) -> np.ndarray | None:
        """The same for a gRPC input (``parameters``: its ``InferParameter`` map)."""
        if not any(key in parameters for key in PARAMETERS):
            return None
        return self.json_input(name, dt, shape, count, grpc_values(parameters))


def grpc_values(parameters: Any) -> dict[str, object]:
    """The shared memory entries of a gRPC ``InferParameter`` map, as plain values."""
    values: dict[str, object] = {}
    for key in PARAMETERS:
        if key in parameters:
            kind = parameters[key].WhichOneof("parameter_choice")
            values[key] = getattr(parameters[key], kind) if kind else None
    return values


def _open(directory: str, key: str, name: str) -> int:
    try:
        folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise InvalidRequest(f"this host has no {directory}: system shared memory is not available") from None
    try:
        return os.open(name, _OPEN, dir_fd=folder)
    except FileNotFoundError:
        raise InvalidRequest(
            f"no shared memory object '{key}' exists (the client creates it before registering)"
        ) from None
    except PermissionError:
        raise InvalidRequest(
            f"the worker may not open shared memory object '{key}' to read and write"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidRequest(f"'{key}' is a symbolic link, not a shared memory object") from None
        raise InvalidRequest(f"cannot open shared memory object '{key}': {exc.strerror}") from None
    finally:
        os.close(folder)
