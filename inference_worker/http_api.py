"""HTTP routes of the Open Inference Protocol (KServe v2) and KServe v1 ``:predict``.

Thin: each route parses its wire format, calls the dataplane, and answers
through ``reply`` (at once, or from the batcher's callback, so no task is
created per request). The binary tensor extension splits the body at
``Inference-Header-Content-Length``: JSON header first, then raw tensors.
Errors become ``{"error": message}`` with the status of ``errors.HTTP_STATUS``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

import orjson

from inference_worker import classification, json_body, kserve_v1
from inference_worker.batcher import Outputs
from inference_worker.config import Limits
from inference_worker.contracts.report import SUCCESS
from inference_worker.dataplane import DataPlane, InferRequest
from inference_worker.errors import (
    HTTP_STATUS,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    WorkerError,
)
from inference_worker.shm import PREFIX, Window
from inference_worker.shm_api import http_route, output_parameters
from inference_worker.tensor_codec import decode_json_inputs, json_data, raw_bytes

JSON = b"application/json"
OCTETS = b"application/octet-stream"
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class Request:
    """What the server read: only the headers the routes use."""

    method: bytes
    path: bytes
    body: bytes
    header_length: int | None = None
    content_encoding: bytes | None = None


@dataclass(slots=True)
class Response:
    """Status, body parts (written without joining) and the extra headers."""

    status: int
    parts: list[bytes]
    content_type: bytes = JSON
    header_length: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Reply = Callable[[Response], None]
Encode = Callable[[Outputs], Response]
Selection = list[tuple[int, str, str, bool, int]]
"""Outputs to return: (index in signature order, name, datatype, as binary, classes: the top classes
asked for with ``classification``, 0 for the tensor itself)."""


log = logging.getLogger("inference_worker.http")


def json_response(status: int, payload: object) -> Response:
    return Response(status, [orjson.dumps(payload)])


def error_response(error: WorkerError) -> Response:
    return json_response(HTTP_STATUS[error.code], {"error": error.message})


_INTERNAL_ERROR = json_response(500, {"error": "internal error; the worker's log has the details"})


class HttpApi:
    """Routes a request to the dataplane and replies."""

    def __init__(self, dataplane: DataPlane, limits: Limits, render_metrics: Callable[[], bytes]) -> None:
        self._dp = dataplane
        self._limits = limits
        self._render_metrics = render_metrics
        self._get: dict[bytes, Callable[[], Response]] = {
            b"/v2/health/live": lambda: json_response(200, {"live": True}),
            b"/v2/health/ready": self._server_ready,
            b"/v2": lambda: json_response(200, self._dp.server_metadata()),
            b"/metrics": lambda: Response(200, [self._render_metrics()], METRICS_TYPE),
        }

    def handle(self, request: Request, reply: Reply) -> None:
        """Answer ``request`` through ``reply``, now or later; never raises."""
        try:
            self._route(request, reply)
        except WorkerError as error:
            reply(error_response(error))
        except Exception:  # a bug: logged, and the client still gets an answer
            log.exception("handling %s %r failed", request.method.decode("latin-1"), request.path[:200])
            reply(_INTERNAL_ERROR)

    def _route(self, request: Request, reply: Reply) -> None:
        path = request.path.split(b"?", 1)[0]
        if path.startswith(b"/v2/models/"):
            return self._model_route(request, path, reply)
        if path.startswith(b"/v1/models/"):
            return self._v1_route(request, path, reply)
        if path.startswith(PREFIX):
            body = inflate(request.body, request.content_encoding, self._limits.max_body_bytes)
            status, payload = http_route(self._dp.shared_memory, request.method, path, body)
            return reply(Response(status, [b""]) if payload is None else json_response(status, payload))
        simple = self._get.get(path)
        if simple is None:
            return reply(json_response(404, {"error": f"no route for {path.decode('latin-1')!r}"}))
        if request.method not in (b"GET", b"HEAD"):
            return reply(json_response(405, {"error": "method not allowed; use GET"}))
        return reply(simple())

    def _server_ready(self) -> Response:
        ready = self._dp.ready
        return json_response(200 if ready else 503, {"ready": ready})

    def _model_route(self, request: Request, path: bytes, reply: Reply) -> None:
        parts = [unquote(part.decode("latin-1")) for part in path[len(b"/v2/models/") :].split(b"/")]
        name, version, action = parts[0], "", parts[1:]
        if len(action) >= 2 and action[0] == "versions":
            version, action = action[1], action[2:]
        verb = action[0] if len(action) == 1 else ("" if not action else None)
        if verb == "infer":
            if request.method != b"POST":
                return reply(json_response(405, {"error": "method not allowed; use POST"}))
            return self._infer(request, name, version, reply)
        if verb not in ("", "ready"):
            return reply(json_response(404, {"error": f"no route for {path.decode('latin-1')!r}"}))
        if request.method not in (b"GET", b"HEAD"):
            return reply(json_response(405, {"error": "method not allowed; use GET"}))
        if verb == "ready":
            ready = self._dp.model_ready(name, version)
            return reply(json_response(200 if ready else 503, {"name": name, "ready": ready}))
        return reply(json_response(200, self._dp.model_metadata(name, version)))

    # -- inference ---------------------------------------------------------------------------
    def _admit(self, reply: Reply, prepare: Callable[[], tuple[InferRequest, Encode]]) -> None:
        """Count the request in flight, parse and submit it, answer once with its outcome."""
        dp = self._dp
        started = dp.begin()

        def answer(outcome: str, response: Response) -> None:
            dp.finish("http", outcome, started)
            reply(response)

        def done(result: Outputs | WorkerError) -> None:
            if isinstance(result, WorkerError):
                return answer(result.code, error_response(result))
            try:
                response = encode(result)
            except WorkerError as error:  # an output its shared memory region cannot hold
                return answer(error.code, error_response(error))
            except Exception:  # a bug, not the client's fault: log it, never leave the client hanging
                log.exception("encoding a response failed")
                return answer("internal", _INTERNAL_ERROR)
            return answer(SUCCESS, response)

        try:
            infer, encode = prepare()
            dp.submit(infer, done)
        except WorkerError as error:
            answer(error.code, error_response(error))
        except Exception:  # same: a bug must not leak an in-flight request
            log.exception("reading an inference request failed")
            answer("internal", _INTERNAL_ERROR)

    def _infer(self, request: Request, name: str, version: str, reply: Reply) -> None:
        def prepare() -> tuple[InferRequest, Encode]:
            header, binary = self._split_body(request)
            infer, selection = self._parse_v2(header, binary, name, version)
            return infer, lambda outputs: encode_v2_response(
                self._dp, infer.id, outputs, selection, infer.shared_outputs
            )

        self._admit(reply, prepare)

    def _split_body(self, request: Request) -> tuple[dict[str, object], memoryview | None]:
        body = inflate(request.body, request.content_encoding, self._limits.max_body_bytes)
        size = request.header_length
        if size is not None and not 0 <= size <= len(body):
            raise InvalidRequest(
                f"Inference-Header-Content-Length {size} is outside the body of {len(body)} bytes"
            )
        try:
            # json_body: large numeric data skips Python floats; the binary extension's header has none
            header = json_body.loads(body) if size is None else orjson.loads(memoryview(body)[:size])
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"malformed JSON: {exc}") from None
        if not isinstance(header, dict):
            raise InvalidRequest("the request body must be a JSON object")
        binary = memoryview(body)[size:] if size is not None else None
        return header, binary

    def _parse_v2(
        self, header: dict[str, object], binary: memoryview | None, name: str, version: str
    ) -> tuple[InferRequest, Selection]:
        self._dp.check_model(name, version)
        request_id = header.get("id", "")
        if not isinstance(request_id, str) or len(request_id) > self._limits.max_name_length:
            raise InvalidRequest("'id' must be a string of at most 256 characters")
        parameters = _parameters(header.get("parameters"), self._limits, "request")
        timeout = parameters.get("timeout")
        if timeout is not None and (type(timeout) is not int or timeout < 0):
            raise InvalidRequest("the 'timeout' parameter must be a non-negative integer (microseconds)")
        raw_inputs = header.get("inputs")
        if isinstance(raw_inputs, list):
            self._dp.check_input_count(len(raw_inputs))
        inputs = decode_json_inputs(
            raw_inputs, binary, self._limits, self._dp.input_datatypes, self._dp.shared_memory.json_input
        )
        names, selection, shared = self._selection(
            header.get("outputs"), parameters.get("binary_data_output") is True
        )
        infer = InferRequest(name, version, inputs, names, request_id, timeout, shared)
        return infer, selection

    def _selection(
        self, outputs: object, binary_default: bool
    ) -> tuple[tuple[str, ...] | None, Selection, dict[str, Window] | None]:
        """The outputs asked for, how to send each, and those to write into shared memory. None or
        an empty list asks for every output (the protocol's "all outputs", as over gRPC)."""
        signature = self._dp.signature
        assert signature is not None  # noqa: S101 - submit refuses before the model is attached
        if outputs is None or outputs == []:
            all_outputs = [
                (i, s.name, s.datatype, binary_default, 0) for i, s in enumerate(signature.outputs)
            ]
            return None, all_outputs, None
        if not isinstance(outputs, list) or len(outputs) > len(signature.outputs):
            raise InvalidRequest(
                f"'outputs' must be a list of at most {len(signature.outputs)} requested outputs"
            )
        selection: Selection = []
        shared: dict[str, Window] = {}
        for item in outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidRequest("each requested output must be an object with a 'name'")
            index = self._dp.output_index(item["name"])
            parameters = _parameters(item.get("parameters"), self._limits, "output")
            binary = parameters.get("binary_data", binary_default)
            datatype, classes = signature.outputs[index].datatype, 0
            if classification.PARAMETER in parameters:
                value = parameters[classification.PARAMETER]
                classes, datatype = classification.class_count(value, datatype, item["name"]), "BYTES"
            selection.append((index, item["name"], datatype, binary is True, classes))
            window = self._dp.shared_memory.window(f"output '{item['name']}'", parameters)
            if window is not None:
                shared[item["name"]] = window
        return tuple(name for _, name, *_ in selection), selection, shared or None

    # -- KServe v1 -----------------------------------------------------------------------------
    def _v1_route(self, request: Request, path: bytes, reply: Reply) -> None:
        target = unquote(path[len(b"/v1/models/") :].decode("latin-1"))
        if target.endswith(":predict"):
            if request.method != b"POST":
                return reply(json_response(405, {"error": "method not allowed; use POST"}))
            return self._predict(request, target[: -len(":predict")], reply)
        if request.method not in (b"GET", b"HEAD"):
            return reply(json_response(405, {"error": "method not allowed; use GET"}))
        return reply(json_response(200, {"name": target, "ready": self._dp.model_ready(target, "")}))

    def _predict(self, request: Request, name: str, reply: Reply) -> None:
        def prepare() -> tuple[InferRequest, Encode]:
            self._dp.check_model(name, "")
            header, _ = self._split_body(request)
            inputs = kserve_v1.inputs(header.get("instances"), self._dp.signature, self._limits)
            return InferRequest(name, "", inputs), self._v1_response

        self._admit(reply, prepare)

    def _v1_response(self, outputs: Outputs) -> Response:
        predictions = kserve_v1.predictions(outputs, self._dp.signature)
        return Response(200, [orjson.dumps({"predictions": predictions}, option=_NUMPY)])


def encode_v2_response(
    dp: DataPlane,
    request_id: str,
    outputs: Outputs,
    selection: Selection,
    shared: dict[str, Window] | None = None,
) -> Response:
    """The v2 response: JSON, or JSON header plus binary tensors when any output is binary.

    Outputs in ``shared`` are written into their shared memory region and carry no data.
    """
    items: list[dict[str, object]] = []
    chunks: list[bytes] = []
    for index, name, dtype, binary, classes in selection:
        array = outputs[index] if not classes else dp.classify(name, outputs[index], classes)
        item: dict[str, object] = {"name": name, "datatype": dtype, "shape": list(array.shape)}
        if shared is not None and name in shared:
            written = dp.shared_memory.write(name, shared[name], array)
            item["parameters"] = output_parameters(shared[name], written)
        elif binary:
            raw = raw_bytes(array)
            item["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            item["data"] = json_data(array)
        items.append(item)
    body: dict[str, object] = {
        "model_name": dp.model_name,
        "model_version": dp.model_version,
        "outputs": items,
    }
    if request_id:
        body["id"] = request_id
    header = orjson.dumps(body, option=_NUMPY)
    if not chunks:
        return Response(200, [header])
    return Response(200, [header, *chunks], OCTETS, header_length=len(header))


_SWITCHES: Final = frozenset({"binary_data", "binary_data_output"})
"""Parameters of the binary tensor extension, which take a boolean (a string "false" is no false)."""


def _parameters(value: object, limits: Limits, what: str) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > limits.max_parameters:
        raise InvalidRequest(
            f"{what} parameters must be an object of at most {limits.max_parameters} entries"
        )
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str) or (isinstance(item, str) and len(item) > 4096):
            raise InvalidRequest(f"{what} parameter '{key}' must be a boolean, number or short string")
        if key in _SWITCHES and type(item) is not bool:
            raise InvalidRequest(f"{what} parameter '{key}' must be true or false")
    return value


def inflate(body: bytes, encoding: bytes | None, limit: int) -> bytes:
    """The body without its Content-Encoding, never larger than ``limit``."""
    if encoding is None or encoding == b"identity":
        return body
    wbits = {b"gzip": 31, b"deflate": 15}.get(encoding.strip().lower())
    if wbits is None:
        raise UnsupportedMediaType(f"Content-Encoding {encoding.decode('latin-1')!r} is not supported")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the body is not valid {encoding.decode('latin-1')}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidRequest("the compressed body is truncated")
    return out
