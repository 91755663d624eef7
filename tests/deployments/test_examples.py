"""The request the deployment page offers to copy: protocol datatype names, zeros of the right shape."""

from __future__ import annotations

import json
import shlex
import subprocess

import numpy as np

from deployments.examples import infer_curl, infer_request, protocol_datatype
from inference_worker.config import Limits
from inference_worker.tensor_codec import decode_json_inputs

SIGNATURE = {
    "inputs": [
        {"name": "image", "dtype": "float32", "shape": [-1, 1, 28, 28]},
        {"name": "mask", "dtype": "bool", "shape": [-1, 4]},
        {"name": "ids", "dtype": "int64", "shape": [-1, -1]},
        {"name": "text", "dtype": "string", "shape": [-1]},
    ]
}


def test_signature_dtypes_become_the_protocols_datatype_names() -> None:
    assert [
        protocol_datatype(d) for d in ("float32", "float16", "float64", "int64", "bool", "uint8", "string")
    ] == ["FP32", "FP16", "FP64", "INT64", "BOOL", "UINT8", "BYTES"]


def test_the_example_request_decodes_as_the_worker_reads_it() -> None:
    body, small = infer_request(SIGNATURE)
    tensors = decode_json_inputs(body["inputs"], None, Limits())

    assert not small
    assert {name: (a.shape, a.dtype) for name, a in tensors.items()} == {
        "image": ((1, 1, 28, 28), np.dtype("float32")),
        "mask": ((1, 4), np.dtype("bool")),
        "ids": ((1, 1), np.dtype("int64")),
        "text": ((1,), np.dtype("object")),
    }
    assert [type(item["data"][0]) for item in body["inputs"]] == [float, bool, int, str]


def test_a_small_input_is_written_out_in_the_curl_command() -> None:
    command = infer_curl(
        gateway="http://127.0.0.1:8100",
        deployment="demo",
        signature={"inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 16]}]},
    )
    words = shlex.split(command.replace("\\\n", " "))

    assert words[:3] == ["curl", "-s", "http://127.0.0.1:8100/v2/models/demo/infer"]
    body = json.loads(words[words.index("-d") + 1])
    assert body == {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]
    }


def test_a_large_input_is_generated_by_the_command_and_piped_into_curl() -> None:
    command = infer_curl(gateway="http://127.0.0.1:8100", deployment="digits", signature=SIGNATURE)
    generator = command.split("|")[0].replace("\\\n", " ")
    printed = subprocess.run(
        ["bash", "-c", generator], capture_output=True, text=True, check=True, timeout=30
    )

    assert "curl -s http://127.0.0.1:8100/v2/models/digits/infer" in command
    assert json.loads(printed.stdout) == infer_request(SIGNATURE)[0]
