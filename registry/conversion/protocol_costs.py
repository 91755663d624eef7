"""What each wire protocol costs per request on this hardware. Pure: runs in the conversion child.

For one sample (a request of batch 1, which is what online clients send), times the
whole encode/decode round of each protocol with the worker's own codec: the client
encoding the request, the worker decoding it and encoding the answer, the client
decoding the answer. Network transfer is not included (it depends on where the
client runs); the serving advice says so.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson

from inference_worker.config import Limits
from inference_worker.tensor_codec import (
    DATATYPES,
    datatype_of,
    decode_grpc_inputs,
    decode_json_inputs,
    decode_raw,
    json_data,
    raw_bytes,
)

Feeds = Mapping[str, np.ndarray]
PROTOCOLS = ("http_json", "http_binary", "grpc")


def _median_ms(run: Callable[[], object], runs: int) -> float:
    run()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 4)


def _http_json(inputs: Feeds, outputs: Feeds, limits: Limits) -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": k, "datatype": datatype_of(v), "shape": list(v.shape), "data": json_data(v)}
                for k, v in inputs.items()
            ]
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    decode_json_inputs(orjson.loads(body)["inputs"], None, limits)
    answer = orjson.dumps(
        {
            "outputs": [
                {"name": k, "datatype": datatype_of(v), "shape": list(v.shape), "data": json_data(v)}
                for k, v in outputs.items()
            ]
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    for item in orjson.loads(answer)["outputs"]:
        np.asarray(item["data"]).reshape(item["shape"])


def _binary_body(key: str, feeds: Feeds) -> tuple[bytes, bytes]:
    """The JSON header of a binary-extension body (each tensor's name, datatype, shape and size)
    and the tensors' bytes after it."""
    raws = {k: raw_bytes(v) for k, v in feeds.items()}
    described = [
        {
            "name": k,
            "datatype": datatype_of(v),
            "shape": list(v.shape),
            "parameters": {"binary_data_size": len(raws[k])},
        }
        for k, v in feeds.items()
    ]
    return orjson.dumps({key: described}), b"".join(raws.values())


def _read_raw(name: str, array: np.ndarray, raw: bytes | memoryview) -> np.ndarray:
    """The client's decoding of one output's raw bytes."""
    return decode_raw(name, DATATYPES[datatype_of(array)], array.shape, array.size, raw)


def _http_binary(inputs: Feeds, outputs: Feeds, limits: Limits) -> None:
    header, tensors = _binary_body("inputs", inputs)
    body = header + tensors
    decode_json_inputs(orjson.loads(body[: len(header)])["inputs"], memoryview(body)[len(header) :], limits)
    out_header, out_tensors = _binary_body("outputs", outputs)
    answer = out_header + out_tensors
    offset = len(out_header)
    for item in orjson.loads(answer[:offset])["outputs"]:
        size = item["parameters"]["binary_data_size"]
        _read_raw(item["name"], outputs[item["name"]], memoryview(answer)[offset : offset + size])
        offset += size


def _grpc(inputs: Feeds, outputs: Feeds, limits: Limits, pb2: Any) -> None:
    request = pb2.ModelInferRequest(model_name="m")
    for name, value in inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatype_of(value))
        tensor.shape.extend(value.shape)
        request.raw_input_contents.append(raw_bytes(value))
    parsed = pb2.ModelInferRequest.FromString(request.SerializeToString())
    decode_grpc_inputs(parsed.inputs, parsed.raw_input_contents, limits)
    response = pb2.ModelInferResponse(model_name="m")
    for name, value in outputs.items():
        tensor = response.outputs.add(name=name, datatype=datatype_of(value))
        tensor.shape.extend(value.shape)
        response.raw_output_contents.append(raw_bytes(value))
    answer = pb2.ModelInferResponse.FromString(response.SerializeToString())
    for tensor, raw in zip(answer.outputs, answer.raw_output_contents, strict=True):
        _read_raw(tensor.name, outputs[tensor.name], raw)


def _grpc_messages() -> Any:
    from inference_worker.build_protos import load

    return load()[0]


def protocol_costs(inputs: Feeds, outputs: Feeds, *, runs: int = 50) -> dict[str, Any]:
    """Median milliseconds per request of each protocol's codec work, for these tensors."""
    limits = Limits()
    costs = {
        "http_json": _median_ms(lambda: _http_json(inputs, outputs, limits), runs),
        "http_binary": _median_ms(lambda: _http_binary(inputs, outputs, limits), runs),
    }
    notes = []
    try:
        pb2 = _grpc_messages()
    except Exception as exc:  # gRPC code cannot be generated here: say so, keep the others
        notes.append(f"gRPC codec not measured: {exc}")
    else:
        costs["grpc"] = _median_ms(lambda: _grpc(inputs, outputs, limits, pb2), runs)
    request_bytes = sum(len(raw_bytes(v)) for v in inputs.values())
    return {"per_request_ms": costs, "request_tensor_bytes": request_bytes, "batch_size": 1, "notes": notes}
