"""The v2 and v1 HTTP protocol against real workers and direct ONNX Runtime results."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from inference_worker.config import Limits
from tests.support.onnx_models import image_classifier, logarithm, reference
from tests.support.workers import RunningWorker, make_config, running, v2_body

RNG = np.random.default_rng(11)


def binary_request(
    inputs: dict[str, np.ndarray], datatypes: dict[str, str], **extra: object
) -> tuple[bytes, dict[str, str]]:
    tensors = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": datatypes[n],
            "parameters": {"binary_data_size": a.nbytes},
        }
        for n, a in inputs.items()
    ]
    header = orjson.dumps({"inputs": tensors, **extra})
    body = header + b"".join(a.tobytes() for a in inputs.values())
    return body, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def split_binary(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    size = int(response.headers["Inference-Header-Content-Length"])
    return orjson.loads(response.content[:size]), response.content[size:]


def test_json_inference_matches_onnx_runtime(mlp_worker: RunningWorker, models: SimpleNamespace) -> None:
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    response = httpx.post(mlp_worker.url + INFER, json=v2_body({"x": x}, id="req-1"))
    assert response.status_code == 200
    body = response.json()
    (output,) = body["outputs"]
    assert (body["model_name"], body["model_version"], body["id"]) == ("mlp", "1", "req-1")
    assert (output["name"], output["datatype"], output["shape"]) == ("y", "FP32", [3, 3])
    expected = reference(models.mlp, {"x": x})[0]
    np.testing.assert_allclose(np.asarray(output["data"], np.float32).reshape(3, 3), expected, rtol=1e-5)


def test_binary_inference_matches_onnx_runtime(mlp_worker: RunningWorker, models: SimpleNamespace) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    body, headers = binary_request(
        {"x": x}, {"x": "FP32"}, outputs=[{"name": "y", "parameters": {"binary_data": True}}]
    )
    response = httpx.post(mlp_worker.url + "/v2/models/mlp/versions/1/infer", content=body, headers=headers)
    assert response.status_code == 200
    header, raw = split_binary(response)
    (output,) = header["outputs"]
    assert output["parameters"]["binary_data_size"] == len(raw) == 5 * 3 * 4
    np.testing.assert_allclose(
        np.frombuffer(raw, np.float32).reshape(5, 3), reference(models.mlp, {"x": x})[0], rtol=1e-5
    )


def test_binary_input_with_json_output_and_binary_data_output_default(mlp_worker: RunningWorker) -> None:
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    body, headers = binary_request({"x": x}, {"x": "FP32"})
    as_json = httpx.post(mlp_worker.url + INFER, content=body, headers=headers)
    assert as_json.headers["content-type"] == "application/json"
    assert len(as_json.json()["outputs"][0]["data"]) == 3
    body, headers = binary_request({"x": x}, {"x": "FP32"}, parameters={"binary_data_output": True})
    as_binary = httpx.post(mlp_worker.url + INFER, content=body, headers=headers)
    _header, raw = split_binary(as_binary)
    np.testing.assert_array_equal(
        np.frombuffer(raw, np.float32), np.asarray(as_json.json()["outputs"][0]["data"], np.float32)
    )


def test_non_finite_outputs_are_null_in_strict_json_and_exact_in_binary(tmp_path: Path) -> None:
    x = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    with running(make_config(logarithm(tmp_path / "log.onnx"), "log")) as worker:
        url = f"{worker.url}/v2/models/log/infer"
        as_json = httpx.post(url, json=v2_body({"x": x}))
        body, headers = binary_request({"x": x}, {"x": "FP32"}, parameters={"binary_data_output": True})
        as_binary = httpx.post(url, content=body, headers=headers)

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    strict = json.loads(as_json.text, parse_constant=refuse)  # no NaN nor Infinity literal
    assert strict["outputs"][0]["data"] == [None, None, 0.0]
    _header, raw = split_binary(as_binary)
    values = np.frombuffer(raw, np.float32)
    np.testing.assert_array_equal(values, np.array([np.nan, -np.inf, 0.0], np.float32))


def test_kserve_v1_predict_matches_onnx_runtime(mlp_worker: RunningWorker, models: SimpleNamespace) -> None:
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    response = httpx.post(mlp_worker.url + "/v1/models/mlp:predict", json={"instances": x.tolist()})
    assert response.status_code == 200
    predictions = np.asarray(response.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(predictions, reference(models.mlp, {"x": x})[0], rtol=1e-5)
    assert httpx.get(mlp_worker.url + "/v1/models/mlp").json() == {"name": "mlp", "ready": True}


def test_health_and_metadata_describe_the_server_and_model(mlp_worker: RunningWorker) -> None:
    url = mlp_worker.url
    assert httpx.get(url + "/v2/health/live").status_code == 200
    assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}
    assert httpx.get(url + "/v2/models/mlp/ready").status_code == 200
    assert httpx.get(url + "/v2/models/mlp/versions/1/ready").status_code == 200
    server = httpx.get(url + "/v2").json()
    assert server["name"] == "kiln-inference-worker"
    assert "binary_tensor_data" in server["extensions"]
    assert httpx.get(url + "/v2/models/mlp").json() == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }


def test_several_inputs_and_a_subset_of_outputs(models: SimpleNamespace) -> None:
    a = RNG.standard_normal((2, 2)).astype(np.float32)
    b = np.array([[1, 2], [3, 4]], dtype=np.int64)
    with running(make_config(models.two_inputs, "pair")) as worker:
        body = v2_body({"a": a, "b": b}, outputs=[{"name": "neg"}])
        response = httpx.post(worker.url + "/v2/models/pair/infer", json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["name"] == "neg"
        np.testing.assert_allclose(np.asarray(output["data"]).reshape(2, 2), -a, rtol=1e-6)
        response = httpx.post(worker.url + "/v2/models/pair/infer", json=v2_body({"a": a, "b": b}))
        names = [output["name"] for output in response.json()["outputs"]]
        assert names == ["sum", "neg"]


def test_a_model_without_a_batch_dimension_is_served_with_batching_off(models: SimpleNamespace) -> None:
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    with running(make_config(models.static, "static")) as worker:
        assert httpx.get(worker.url + "/v2/models/static").json()["inputs"][0]["shape"] == [2, 3]
        response = httpx.post(worker.url + "/v2/models/static/infer", json=v2_body({"x": x}))
        assert response.status_code == 200
        np.testing.assert_allclose(np.asarray(response.json()["outputs"][0]["data"]).reshape(2, 3), x * 2)


def test_bytes_tensors_travel_as_json_strings_and_as_binary(models: SimpleNamespace) -> None:
    with running(make_config(models.strings, "echo")) as worker:
        body = {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["héllo", "world"]}]}
        response = httpx.post(worker.url + "/v2/models/echo/infer", json=body)
        assert response.json()["outputs"][0]["data"] == ["héllo", "world"]
        raw = b"".join(len(v).to_bytes(4, "little") + v for v in (b"ab", b"", b"xyz"))
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "s",
                        "shape": [3],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        )
        response = httpx.post(
            worker.url + "/v2/models/echo/infer",
            content=header + raw,
            headers={HLEN: str(len(header))},
        )
        assert split_binary(response)[1] == raw


def test_a_model_that_breaks_its_batch_answers_500_with_the_reason(models: SimpleNamespace) -> None:
    with running(make_config(models.doubling, "broken")) as worker:
        x = np.ones((2, 2), dtype=np.float32)
        response = httpx.post(worker.url + "/v2/models/broken/infer", json=v2_body({"x": x}))
        assert response.status_code == 500
        assert response.json() == {"error": "the model returned 4 rows for a batch of 2"}


INFER = "/v2/models/mlp/infer"
HLEN = "Inference-Header-Content-Length"


def _x(rows: int = 1, cols: int = 4) -> dict[str, Any]:
    return {"name": "x", "shape": [rows, cols], "datatype": "FP32", "data": [0.5] * (rows * cols)}


def _binary(size: int) -> dict[str, Any]:
    return {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}


BAD_REQUESTS = [
    # name, path, body, headers, status, message fragment
    ("unknown model", "/v2/models/nope/infer", {"inputs": [_x()]}, {}, 404, "unknown model 'nope'"),
    ("unknown version", "/v2/models/mlp/versions/9/infer", {"inputs": [_x()]}, {}, 404, "no version '9'"),
    ("wrong input name", INFER, {"inputs": [{**_x(), "name": "z"}]}, {}, 400, "unknown input 'z'"),
    ("more inputs than the model", INFER, {"inputs": [_x(), {**_x(), "name": "q"}]}, {}, 400, "takes 1"),
    ("a thousand inputs", INFER, {"inputs": [{"name": str(i)} for i in range(1000)]}, {}, 400, "1000 inputs"),
    ("wrong datatype", INFER, {"inputs": [{**_x(), "datatype": "FP64"}]}, {}, 400, "datatype FP64"),
    ("BYTES for FP32", INFER, {"inputs": [{**_x(), "datatype": "BYTES", "data": [1, 2, 3, 4]}]}, {}, 400,
     "input 'x' has datatype BYTES; the model takes FP32"),
    ("INT64 for FP32 in binary", INFER, {"inputs": [{**_binary(32), "datatype": "INT64"}]}, {HLEN: "LEN"},
     400, "input 'x' has datatype INT64; the model takes FP32"),
    ("wrong shape", INFER, {"inputs": [_x(1, 5)]}, {}, 400, "shape [1, 5]"),
    ("wrong rank", INFER, {"inputs": [{**_x(), "shape": [4]}]}, {}, 400, "shape [4]"),
    ("data too short", INFER, {"inputs": [{**_x(), "data": [1.0]}]}, {}, 400, "needs 4 elements"),
    ("data not numbers", INFER, {"inputs": [{**_x(), "data": ["a"] * 4}]}, {}, 400, "must hold numbers"),
    ("null in data", INFER, {"inputs": [{**_x(), "data": [0.5, None, 0.5, 0.5]}]}, {}, 400, "it holds null"),
    ("v1 null in an instance", "/v1/models/mlp:predict", {"instances": [[0.5, 0.5, None, 0.5]]}, {}, 400,
     "it holds null"),
    ("binary_data not a boolean", INFER, {"inputs": [_x()], "outputs": [{"name": "y", "parameters":
     {"binary_data": "yes"}}]}, {}, 400, "output parameter 'binary_data' must be true or false"),
    ("binary_data_output a string", INFER, {"inputs": [_x()], "parameters": {"binary_data_output": "false"}},
     {}, 400, "request parameter 'binary_data_output' must be true or false"),
    ("unknown datatype", INFER, {"inputs": [{**_x(), "datatype": "FP8"}]}, {}, 400, "'FP8'"),
    ("negative dimension", INFER, {"inputs": [{**_x(), "shape": [-1, 4]}]}, {}, 400, "non-negative"),
    ("huge shape", INFER, {"inputs": [{**_x(), "shape": [10**9, 4]}]}, {}, 413, "exceed the limit"),
    ("deep rank", INFER, {"inputs": [{**_x(), "shape": [1] * 20}]}, {}, 400, "rank 20"),
    ("batch above max", INFER, {"inputs": [_x(40)]}, {}, 400, "max batch size 32"),
    ("no inputs", INFER, {"inputs": []}, {}, 400, "non-empty list"),
    ("unknown output", INFER, {"inputs": [_x()], "outputs": [{"name": "w"}]}, {}, 400, "'w'"),
    ("bad timeout", INFER, {"inputs": [_x()], "parameters": {"timeout": "soon"}}, {}, 400, "timeout"),
    ("nested parameters", INFER, {"inputs": [_x()], "parameters": {"p": [1]}}, {}, 400, "'p'"),
    ("malformed JSON", INFER, b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not an object", INFER, b"[1, 2]", {}, 400, "JSON object"),
    ("too deep JSON", INFER, b"[" * 5000 + b"]" * 5000, {}, 400, "malformed JSON"),
    ("header past body", INFER, {"inputs": [_x()]}, {HLEN: "9999"}, 400, "Inference-Header-Content-Length"),
    ("header length not a number", INFER, {"inputs": [_x()]}, {HLEN: "ten"}, 400, "must be an integer"),
    ("binary size past end", INFER, {"inputs": [_binary(16)]}, {HLEN: "LEN"}, 400, "runs past the end"),
    ("binary size mismatch", INFER, {"inputs": [_binary(0)]}, {HLEN: "LEN"}, 400, "needs 16 bytes"),
    ("v1 bad instances", "/v1/models/mlp:predict", {"instances": [[1.0, 2.0]]}, {}, 400, "shape [1, 2]"),
    ("v1 no instances", "/v1/models/mlp:predict", {"rows": []}, {}, 400, "'instances'"),
    ("unsupported encoding", INFER, {"inputs": [_x()]}, {"Content-Encoding": "br"}, 415, "'br'"),
    ("corrupt gzip", INFER, {"inputs": [_x()]}, {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_a_bad_request_gets_a_4xx_naming_the_problem(
    mlp_worker: RunningWorker, path: str, body: object, headers: dict[str, str], status: int, message: str
) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    if headers.get("Inference-Header-Content-Length") == "LEN":
        headers = {HLEN: str(len(content))}
    response = httpx.post(mlp_worker.url + path, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_gzip_bodies_are_read_and_bounded(models: SimpleNamespace) -> None:
    with running(make_config(models.mlp, limits=Limits(max_body_bytes=4096))) as worker:
        body = orjson.dumps(v2_body({"x": np.ones((1, 4), np.float32)}))
        ok = httpx.post(
            worker.url + INFER,
            content=gzip.compress(body),
            headers={"Content-Encoding": "gzip"},
        )
        assert ok.status_code == 200
        bomb = gzip.compress(b" " * 1_000_000)
        assert len(bomb) < 4096
        refused = httpx.post(worker.url + INFER, content=bomb, headers={"Content-Encoding": "gzip"})
        assert refused.status_code == 413
        assert "decompressed body exceeds" in refused.json()["error"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(models: SimpleNamespace) -> None:
    with running(make_config(models.mlp, limits=Limits(max_body_bytes=4096))) as worker:
        response = httpx.post(worker.url + INFER, content=b"x" * 5000)
        assert response.status_code == 413
        assert "exceeds the limit of 4096 bytes" in response.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused while arriving
            for _ in range(10):
                yield b"x" * 1000

        response = httpx.post(worker.url + INFER, content=chunks())
        assert response.status_code == 413


def test_oversized_headers_and_garbage_are_refused(mlp_worker: RunningWorker) -> None:
    response = httpx.get(mlp_worker.url + "/v2", headers={"X-Big": "a" * 70_000})
    assert response.status_code == 431
    with socket.create_connection(("127.0.0.1", mlp_worker.worker.http_port), timeout=10) as sock:
        sock.sendall(b"BLAH / HTTP/1.1\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")


def test_wrong_methods_and_unknown_paths(mlp_worker: RunningWorker) -> None:
    assert httpx.get(mlp_worker.url + INFER).status_code == 405
    assert httpx.post(mlp_worker.url + "/v2/health/ready").status_code == 405
    assert httpx.get(mlp_worker.url + "/v3/anything").status_code == 404
    assert httpx.get(mlp_worker.url + "/v2/models/nope").status_code == 404


def test_pipelined_requests_are_answered_in_order(mlp_worker: RunningWorker) -> None:
    bodies = [
        orjson.dumps(v2_body({"x": np.full((1, 4), float(i), np.float32)}, id=str(i))) for i in range(3)
    ]
    raw = b"".join(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
        for b in bodies
    )
    raw += b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", mlp_worker.worker.http_port), timeout=10) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    ids = [part.split(b'"id":"')[1][:1] for part in received.split(b"HTTP/1.1 200 OK")[1:4]]
    assert ids == [b"0", b"1", b"2"]
    assert received.count(b"HTTP/1.1 200 OK") == 4
    assert received.endswith(b'{"live":true}')


def test_expect_100_continue_is_honoured(mlp_worker: RunningWorker) -> None:
    body = orjson.dumps(v2_body({"x": np.ones((1, 4), np.float32)}))
    with socket.create_connection(("127.0.0.1", mlp_worker.worker.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_a_large_json_tensor_decodes_as_its_binary_twin_and_hostile_spellings_keep_the_old_answer(
    tmp_path: Path,
) -> None:
    """A CNN-sized JSON body takes ``json_body``'s simdjson path; the answer is the binary one's."""
    x = RNG.standard_normal((2, 3, 64, 64)).astype(np.float32)
    with running(make_config(image_classifier(tmp_path / "cnn.onnx"), "cnn")) as worker:
        url = worker.url + "/v2/models/cnn/infer"
        json_answer = httpx.post(url, content=orjson.dumps(v2_body({"input": x}))).json()
        body, headers = binary_request({"input": x}, {"input": "FP32"})
        binary_answer = httpx.post(url, content=body, headers=headers).json()
        assert json_answer["outputs"] == binary_answer["outputs"]
        nested = {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]
        }
        assert httpx.post(url, content=orjson.dumps(nested)).json()["outputs"] == json_answer["outputs"]
        (probabilities,) = json_answer["outputs"]
        v1 = httpx.post(
            worker.url + "/v1/models/cnn:predict", content=orjson.dumps({"instances": x.tolist()})
        )
        assert np.asarray(v1.json()["predictions"]).reshape(-1).tolist() == probabilities["data"]
        later = {"signature_name": "serving_default", "instances": x.tolist()}  # not first: orjson's path
        assert (
            httpx.post(worker.url + "/v1/models/cnn:predict", content=orjson.dumps(later)).json() == v1.json()
        )
        data = orjson.dumps(x.reshape(-1).tolist())
        head = b'{"inputs": [{"name": "input", "shape": [2, 3, 64, 64], "datatype": "FP32", '
        # the last of two keys wins, as orjson has it, even when the other spells "data" escaped
        twice = head + b'"data": ' + orjson.dumps([0.0] * x.size) + b', "d\\u0061ta": ' + data + b"}]}"
        assert httpx.post(url, content=twice).json()["outputs"] == json_answer["outputs"]
        overflow = head + b'"data": ' + data[:-1] + b", 1e400]}]}"
        response = httpx.post(url, content=overflow)
        assert response.status_code == 400
        assert response.json()["error"].startswith("malformed JSON: ")
