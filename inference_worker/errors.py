"""Errors of the data plane, and the one table that maps them to wire status codes.

Every refusal the worker makes is a ``WorkerError`` carrying a ``code``; the
transports never invent their own status: HTTP looks the code up in
``HTTP_STATUS``, gRPC in ``GRPC_STATUS`` (as Triton's ``HttpCodeFromError`` and
``CodeToStatus`` sit side by side)::

    WorkerError(code, message)
    ├── InvalidRequest        invalid_argument    400  INVALID_ARGUMENT
    ├── UnsupportedMediaType  unsupported_media   415  INVALID_ARGUMENT
    ├── PayloadTooLarge       payload_too_large   413  RESOURCE_EXHAUSTED
    ├── ModelNotFound         not_found           404  NOT_FOUND
    ├── QueueFull             overloaded          503  RESOURCE_EXHAUSTED
    ├── RequestTimeout        timeout             504  DEADLINE_EXCEEDED
    ├── Unavailable           unavailable         503  UNAVAILABLE
    └── ModelFailure          internal            500  INTERNAL

Only ``ModelFailure`` (the model itself raised, or returned outputs that do not
match the batch) is a 500: nothing a client sends can produce it.
"""

from __future__ import annotations

from typing import ClassVar, Final

import grpc

from inference_worker.contracts.report import SUCCESS


class WorkerError(Exception):
    """A refusal with a machine-readable ``code`` and a message for humans."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(WorkerError):
    """Malformed body, unknown or missing tensor, wrong datatype or shape, or a value the model refuses
    (ONNX Runtime's INVALID_ARGUMENT: an index past a table)."""

    code = "invalid_argument"


class UnsupportedMediaType(WorkerError):
    """A body encoding the worker does not read."""

    code = "unsupported_media"


class PayloadTooLarge(WorkerError):
    """A body, tensor or header past its configured limit."""

    code = "payload_too_large"


class ModelNotFound(WorkerError):
    """The request names a model or version this worker does not serve."""

    code = "not_found"


class QueueFull(WorkerError):
    """The batcher's bounded queue is full: the request was refused at once."""

    code = "overloaded"

    def __init__(self, message: str = "server overloaded: the request queue is full, retry later") -> None:
        super().__init__(message)


class RequestTimeout(WorkerError):
    """The request waited past its timeout and was not run."""

    code = "timeout"

    def __init__(self, message: str = "request timed out in the queue before it could run") -> None:
        super().__init__(message)


class Unavailable(WorkerError):
    """The worker is loading or draining and takes no new inference."""

    code = "unavailable"


class ModelFailure(WorkerError):
    """The model failed on a valid request: a server-side fault."""

    code = "internal"


HTTP_STATUS: Final[dict[str, int]] = {
    "invalid_argument": 400,
    "unsupported_media": 415,
    "payload_too_large": 413,
    "not_found": 404,
    "overloaded": 503,
    "timeout": 504,
    "unavailable": 503,
    "internal": 500,
}

GRPC_STATUS: Final[dict[str, grpc.StatusCode]] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_media": grpc.StatusCode.INVALID_ARGUMENT,
    "payload_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}

OUTCOMES: Final[tuple[str, ...]] = (SUCCESS, *HTTP_STATUS, "cancelled")
"""Every value of the ``outcome`` label of the request counters ("cancelled": the client left)."""
