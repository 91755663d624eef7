"""Tiny ONNX models built in code (no downloads), and what ONNX Runtime says they compute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((4, 8)).astype(np.float32)
W2 = RNG.standard_normal((8, 3)).astype(np.float32)
B2 = RNG.standard_normal(3).astype(np.float32)


def _save(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    path: Path,
    inits: list[onnx.TensorProto] | None = None,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def mlp(path: Path) -> Path:
    """x FP32 [batch, 4] -> y FP32 [batch, 3]: relu(x @ W1) @ W2 + B2."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["m"]),
        helper.make_node("Add", ["m", "B2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(W1, "W1"),
        numpy_helper.from_array(W2, "W2"),
        numpy_helper.from_array(B2, "B2"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
    return _save(nodes, inputs, outputs, path, inits)


def image_classifier(path: Path) -> Path:
    """input FP32 [batch, 3, 64, 64] -> output FP32 [batch, 10]: channel means through a linear layer
    (the bench CNN's names and shapes, without torch)."""
    weights = RNG.standard_normal((3, 10)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["output"]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])]
    return _save(nodes, inputs, outputs, path, [numpy_helper.from_array(weights, "W")])


def two_inputs(path: Path) -> Path:
    """a FP32 [batch, 2], b INT64 [batch, 2] -> sum FP32 = a + b, neg FP32 = -a."""
    nodes = [
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "bf"], ["sum"]),
        helper.make_node("Neg", ["a"], ["neg"]),
    ]
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 2]),
    ]
    outputs = [
        helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info("neg", TensorProto.FLOAT, ["batch", 2]),
    ]
    return _save(nodes, inputs, outputs, path)


def logarithm(path: Path) -> Path:
    """x FP32 [batch, 3] -> y = log(x): NaN below 0, -inf at 0."""
    nodes = [helper.make_node("Log", ["x"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
    return _save(nodes, inputs, outputs, path)


LOOKUP_TABLE = RNG.standard_normal((10, 2)).astype(np.float32)


def lookup(path: Path) -> Path:
    """tokens INT64 [batch, 3] -> y FP32 [batch, 3, 2]: rows of a 10-row table (an embedding).

    A token past the table (10 or more, or below -10) makes ONNX Runtime refuse the run.
    """
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["y"], axis=0)]
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", 3])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 2])]
    return _save(nodes, inputs, outputs, path, [numpy_helper.from_array(LOOKUP_TABLE, "table")])


def static(path: Path) -> Path:
    """x FP32 [2, 3] (no batch dimension) -> y = x * 2."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
    return _save(nodes, inputs, outputs, path, [two])


SQUARE_MATMULS = 15
"""Enough that ``k = 1600`` keeps a fast core busy for a few hundred ms (3 took 60 ms on an EPYC)."""


def square(path: Path) -> Path:
    """a FP32 [batch, k, k] -> p = a^16 (15 chained MatMuls): as slow as the client makes k."""
    names = ["a", *(f"a{i}" for i in range(2, SQUARE_MATMULS + 1)), "p"]
    nodes = [helper.make_node("MatMul", [names[i], "a"], [names[i + 1]]) for i in range(SQUARE_MATMULS)]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "k", "k"])]
    outputs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", "k", "k"])]
    return _save(nodes, inputs, outputs, path)


def strings(path: Path) -> Path:
    """s STRING [batch] -> t = s (Identity): exercises BYTES tensors."""
    nodes = [helper.make_node("Identity", ["s"], ["t"])]
    inputs = [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch"])]
    outputs = [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch"])]
    return _save(nodes, inputs, outputs, path)


def doubling(path: Path) -> Path:
    """x FP32 [batch, 2] -> y = concat(x, x) on axis 0: returns twice the rows (a broken model)."""
    nodes = [helper.make_node("Concat", ["x", "x"], ["y"], axis=0)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 2])]
    return _save(nodes, inputs, outputs, path)


def gather_rows(path: Path) -> Path:
    """ids INT64 [batch, 4] (each below 100) -> y FP32 [batch, 4]: ``GatherElements`` of a [100, 4]
    table on its first axis (y[i, j] = table[ids[i, j], j]), as position embeddings gather."""
    table = numpy_helper.from_array(RNG.standard_normal((100, 4)).astype(np.float32), "table")
    nodes = [helper.make_node("GatherElements", ["table", "ids"], ["y"], axis=0)]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return _save(nodes, [ids], [y], path, [table])


def reference(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What ONNX Runtime computes directly, for comparison."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)  # type: ignore[no-any-return]


FEATURES = 4
CLASSES = ["setosa", "versicolor", "virginica"]


def save_classifier(path: Path, *, names: list[str] | None = CLASSES) -> None:
    """A logistic regression as skl2onnx writes one (the ``ai.onnx.ml`` LinearClassifier and
    ZipMap): ``label`` (the class names as strings, or int64 class numbers without ``names``) and
    ``output_probability``, a sequence of {class: probability} maps."""
    weights = np.random.default_rng(3).standard_normal(FEATURES * 3).round(3)
    classes: dict[str, Any] = {"classlabels_strings": names} if names else {"classlabels_ints": [0, 1, 2]}
    keys: dict[str, Any] = {"classlabels_strings": names} if names else {"classlabels_int64s": [0, 1, 2]}
    label_type = TensorProto.STRING if names else TensorProto.INT64
    nodes = [
        helper.make_node(
            "LinearClassifier",
            ["float_input"],
            ["label", "probabilities"],
            domain="ai.onnx.ml",
            coefficients=weights.tolist(),
            intercepts=[0.1, -0.2, 0.05],
            post_transform="SOFTMAX",
            **classes,
        ),
        helper.make_node("ZipMap", ["probabilities"], ["output_probability"], domain="ai.onnx.ml", **keys),
    ]
    maps = helper.make_sequence_type_proto(
        helper.make_map_type_proto(label_type, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    graph = helper.make_graph(
        nodes,
        "logistic_regression",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, [None, FEATURES])],
        [
            helper.make_tensor_value_info("label", label_type, [None]),
            helper.make_value_info("output_probability", maps),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save_model(model, str(path))


def convert_upload(source: Path, output: Path, *, seed: int = 5) -> dict[str, Any]:
    """``convert()`` of an ONNX upload in-process, as the platform asks for it (its signature read
    from the file; parity at batches 1, 3 and 8)."""
    from registry.conversion.convert import convert
    from registry.conversion.inspection import inspect_onnx

    request = {
        "format": "onnx",
        "source_path": str(source),
        "output_path": str(output),
        "signature": inspect_onnx(str(source))["signature"],
        "atol": 1e-4,
        "rtol": 1e-3,
        "parity_batch_sizes": [1, 3, 8],
        "profile_max_batch": 4,
        "profile_runs": 2,
        "threads": 1,
        "opset": None,
        "seed": seed,
    }
    result: dict[str, Any] = convert(request)
    return result
