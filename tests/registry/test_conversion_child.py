"""The conversion pipeline that runs inside the sandboxed child: export, check, parity, profile.

Most tests call ``convert()`` in-process (pure, no database); a few go through
``registry.sandbox.run_child`` to prove the child command, its error codes and the
time and memory limits.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from registry.conversion.channel import ChildError
from registry.conversion.convert import convert
from registry.conversion.onnx_export import explain_export_error
from registry.conversion.parity import ParityTally, compare_output
from registry.conversion.profiling import profile, profile_batch_sizes
from registry.sandbox import SandboxError, run_child
from tests.support import torch_models as model_factories

SaveModel = Callable[..., dict[str, Any]]
EXTENSIONS = {"torchscript": "pt", "torch_export": "pt2", "onnx": "onnx"}


def _request(tmp_path: Path, fmt: str, save: SaveModel, **overrides: Any) -> dict[str, Any]:
    source = tmp_path / f"model.{EXTENSIONS[fmt]}"
    signature = save(source)
    request: dict[str, Any] = {
        "format": fmt,
        "source_path": str(source),
        "output_path": str(tmp_path / "converted.onnx"),
        "signature": signature,
        "atol": 1e-4,
        "rtol": 1e-3,
        "parity_batch_sizes": [1, 3, 8],
        "profile_max_batch": 4,
        "profile_runs": 3,
        "threads": 1,
        "opset": None,
        "seed": 7,
    }
    request.update(overrides)
    return request


def _scripted(module: torch.nn.Module, **inputs: list[int]) -> SaveModel:
    """A ``save`` that writes ``module`` as TorchScript and declares float32 ``inputs`` (name=shape)."""

    def save(path: Path) -> dict[str, Any]:
        torch.jit.save(torch.jit.script(module), str(path))
        return {
            "inputs": [{"name": name, "dtype": "float32", "shape": shape} for name, shape in inputs.items()]
        }

    return save


def _failure(request: dict[str, Any]) -> ChildError:
    with pytest.raises(ChildError) as caught:
        convert(request)
    return caught.value


def _ort(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_torchscript_cnn_converts_with_parity_recorded_and_a_dynamic_batch(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_torchscript_cnn)

    result = convert(request)

    report = result["report"]
    assert result["signature"]["outputs"] == [{"name": "output_0", "dtype": "float32", "shape": [-1, 10]}]
    assert report["exporter"] == "torchscript"
    assert report["dynamic_batch"] is True
    assert report["opset"] >= 17
    assert report["onnx_size"] == Path(request["output_path"]).stat().st_size
    parity = report["parity"]
    assert parity["passed"] is True
    assert parity["batch_sizes"] == [1, 3, 8]
    assert 0 < parity["outputs"]["output_0"]["max_abs_error"] < 1e-4
    assert [b["batch_size"] for b in report["profile"]["batches"]] == [1, 2, 4]
    assert all(b["torch_ms"] > 0 and b["speedup"] > 0 for b in report["profile"]["batches"])
    assert set(report["durations_s"]) == {"export", "check", "parity", "warm-up", "profile"}
    json.dumps(report, allow_nan=False)  # storable as PostgreSQL jsonb
    image = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    (logits,) = _ort(request["output_path"]).run(None, {"image": image})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(request["source_path"])  # type: ignore[no-untyped-call]
    expected = module(torch.from_numpy(image)).detach().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)


def test_torchscript_model_with_an_int64_input_converts(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_two_input_torchscript)

    report = convert(request)["report"]

    assert report["parity"]["passed"] is True
    assert report["parity"]["input_int_range"] == [0, 100]
    assert set(report["parity"]["outputs"]) == {"scores"}
    session = _ort(request["output_path"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("tokens", "tensor(int64)"),
        ("features", "tensor(float)"),
    ]


def test_integer_inputs_are_drawn_from_a_range_the_model_accepts(tmp_path: Path) -> None:
    def save(path: Path) -> dict[str, Any]:
        return model_factories.save_two_input_torchscript(path, vocabulary=5)

    report = convert(_request(tmp_path, "torchscript", save))["report"]

    assert report["parity"]["passed"] is True
    assert report["parity"]["input_int_range"] == [0, 2]


def test_pt2_program_converts_with_the_torch_export_exporter_keeping_its_dynamic_batch(
    tmp_path: Path,
) -> None:
    request = _request(tmp_path, "torch_export", model_factories.save_pt2_cnn)

    result = convert(request)

    report = result["report"]
    assert report["exporter"] == "dynamo"
    assert report["dynamic_batch"] is True
    assert report["parity"]["passed"] is True
    assert result["signature"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": [-1, 3, 16, 16]}]
    image = np.zeros((5, 3, 16, 16), dtype=np.float32)
    (logits,) = _ort(request["output_path"]).run(None, {"image": image})
    assert logits.shape == (5, 10)


def test_pt2_program_exported_without_dynamic_shapes_keeps_its_fixed_batch_with_a_warning(
    tmp_path: Path,
) -> None:
    def save(path: Path) -> dict[str, Any]:
        return model_factories.save_pt2_cnn(path, dynamic_batch=False)

    report = convert(_request(tmp_path, "torch_export", save, profile_max_batch=16))["report"]

    assert report["dynamic_batch"] is False
    assert report["parity"]["batch_sizes"] == [2]
    assert [b["batch_size"] for b in report["profile"]["batches"]] == [2]
    assert any("fixed batch size of 2" in warning for warning in report["warnings"])


def test_onnx_upload_is_checked_and_compared_with_the_onnx_reference_evaluator(tmp_path: Path) -> None:
    request = _request(tmp_path, "onnx", model_factories.save_onnx_cnn)

    result = convert(request)

    report = result["report"]
    assert report["exporter"] == "none (uploaded ONNX)"
    assert report["parity"]["passed"] is True
    assert report["parity"]["reference"] == "onnx.reference"
    assert all(b["torch_ms"] is None and b["speedup"] is None for b in report["profile"]["batches"])
    assert Path(request["output_path"]).read_bytes() == Path(request["source_path"]).read_bytes()
    assert result["signature"]["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}]


def test_onnx_upload_that_onnx_reference_cannot_run_records_parity_as_not_applicable(tmp_path: Path) -> None:
    request = _request(tmp_path, "onnx", model_factories.save_onnx_with_contrib_op)

    report = convert(request)["report"]

    assert report["parity"]["passed"] is None
    assert report["parity"]["status"].startswith("not applicable: no PyTorch source")
    assert "com.microsoft" in report["parity"]["status"]
    assert report["profile"]["batches"]


def test_export_failure_names_the_unsupported_operator(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_unexportable_torchscript)

    error = _failure(request)

    assert error.code == "export_failed"
    assert model_factories.UNEXPORTABLE_OPERATOR in error.message
    assert "opset 20" in error.message
    assert "upload the model as a torch.export program (.pt2)" in error.message
    assert error.extra["report"]["exporter"] == "torchscript"
    assert "export" in error.extra["report"]["durations_s"]


def test_a_signature_the_model_cannot_take_fails_with_the_root_cause_not_torchscripts_header(
    tmp_path: Path,
) -> None:
    def save_with_one_channel(path: Path) -> dict[str, Any]:
        signature = model_factories.save_torchscript_cnn(path)  # the CNN takes 3 channels
        signature["inputs"][0]["shape"] = [-1, 1, 16, 16]
        return signature

    error = _failure(_request(tmp_path, "torchscript", save_with_one_channel))

    assert "to have 3 channels, but got 1 channels instead" in error.message
    assert "The following operation failed" not in error.message
    assert len(error.message) < 1200


def test_pt2_export_failure_names_the_operator_without_an_onnx_function(tmp_path: Path) -> None:
    request = _request(tmp_path, "torch_export", model_factories.save_unexportable_pt2)

    error = _failure(request)

    assert error.code == "export_failed"
    assert model_factories.UNEXPORTABLE_PT2_OPERATOR in error.message
    assert "torch.export-based" in error.message
    assert ".pt2" not in error.message


def test_parity_above_an_absurdly_low_tolerance_fails_with_the_numbers(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_torchscript_cnn, atol=1e-12, rtol=1e-12)

    error = _failure(request)

    assert error.code == "parity_failed"
    assert "output 'output_0' at batch size 1" in error.message
    assert "max abs error" in error.message
    assert "max rel error" in error.message
    assert "atol=1e-12" in error.message
    assert "rtol=1e-12" in error.message
    parity = error.extra["report"]["parity"]
    assert parity["passed"] is False
    assert parity["outputs"]["output_0"]["max_abs_error"] > 1e-12
    assert "profile" not in error.extra["report"]


def test_model_drawing_random_numbers_fails_parity_at_a_normal_tolerance(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_noisy_torchscript)

    error = _failure(request)

    assert error.code == "parity_failed"
    assert error.extra["report"]["parity"]["outputs"]["output_0"]["max_abs_error"] > 0.1


def test_fixed_batch_signature_checks_and_profiles_only_that_batch_size(tmp_path: Path) -> None:
    def save(path: Path) -> dict[str, Any]:
        signature = model_factories.save_torchscript_cnn(path)
        signature["inputs"][0]["shape"][0] = 2
        return signature

    result = convert(_request(tmp_path, "torchscript", save, profile_max_batch=16))

    assert result["report"]["dynamic_batch"] is False
    assert result["report"]["parity"]["batch_sizes"] == [2]
    assert [b["batch_size"] for b in result["report"]["profile"]["batches"]] == [2]
    assert result["signature"]["inputs"][0]["shape"] == [2, 3, 16, 16]
    assert (
        "the signature gives a fixed first dimension to 'image' [2, 3, 16, 16]: workers run each request "
        "alone; declare it -1" in " ".join(result["report"]["warnings"])
    )


def test_signature_declaring_the_wrong_number_of_outputs_is_refused(tmp_path: Path) -> None:
    def save(path: Path) -> dict[str, Any]:
        signature = model_factories.save_torchscript_cnn(path)
        signature["outputs"] = [{"name": n, "dtype": "float32", "shape": [-1, 10]} for n in ("a", "b")]
        return signature

    error = _failure(_request(tmp_path, "torchscript", save))

    assert error.code == "invalid_signature"
    assert "declares 2 output(s)" in error.message


@pytest.mark.parametrize("shape", [[-1, 5], [-1, 10, 1]])
def test_a_declared_output_shape_the_model_does_not_return_is_refused(
    tmp_path: Path, shape: list[int]
) -> None:
    def save(path: Path) -> dict[str, Any]:
        signature = model_factories.save_torchscript_cnn(path)  # returns [batch, 10]
        signature["outputs"] = [{"name": "digit", "dtype": "float32", "shape": shape}]
        return signature

    error = _failure(_request(tmp_path, "torchscript", save))

    assert error.code == "invalid_signature"
    assert error.message == (
        f"signature.outputs[0].shape: {shape} is declared, "
        "but the model returns 'digit' of shape ['batch', 10]"
    )


def test_parity_compares_with_numpy_allclose_semantics_and_scale_relative_error() -> None:
    expected = np.array([100.0, 1.0, 0.0], dtype=np.float32)
    actual = np.array([100.05, 1.0, 1e-6], dtype=np.float32)

    check = compare_output("y", expected, actual, atol=1e-5, rtol=1e-3, batch_size=3)

    assert check.passed
    assert math.isclose(check.max_abs_error, 0.05, rel_tol=1e-3)
    assert math.isclose(check.max_rel_error, 0.05 / 100.0, rel_tol=1e-3)
    failing = compare_output("y", expected, actual, atol=1e-7, rtol=1e-4, batch_size=3)
    assert not failing.passed
    assert failing.mismatched == 2


def test_a_float16_output_is_held_to_float16s_precision_not_float32s() -> None:
    expected = np.array([0.0317688, 1.0, -2.5], dtype=np.float16)
    actual = np.array([0.0319214, 1.0, -2.5], dtype=np.float16)  # one float16 step apart

    half = compare_output("y", expected, actual, atol=1e-4, rtol=1e-3, batch_size=3)
    single = compare_output(
        "y", expected.astype(np.float32), actual.astype(np.float32), atol=1e-4, rtol=1e-3, batch_size=3
    )

    assert half.passed
    assert (half.atol, half.rtol) == (1e-3, 1e-2)
    assert not single.passed
    assert (single.atol, single.rtol) == (1e-4, 1e-3)
    tally = ParityTally(atol=1e-4, rtol=1e-3, reference="PyTorch")
    tally.add(half)
    assert (tally.outputs["y"]["atol"], tally.outputs["y"]["rtol"]) == (1e-3, 1e-2)
    assert (
        compare_output("y", expected, actual, atol=0.1, rtol=0.2, batch_size=3).atol == 0.1
    )  # raised, never lowered


def test_an_onnx_upload_computing_in_float16_passes_parity(tmp_path: Path) -> None:
    def save(path: Path) -> dict[str, Any]:
        torch.manual_seed(0)
        cnn = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 30 * 30, 10)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                cnn.eval().half(),
                (torch.randn(2, 3, 32, 32).half(),),
                str(path),
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )
        return {"inputs": [{"name": "image", "dtype": "float16", "shape": [-1, 3, 32, 32]}]}

    report = convert(_request(tmp_path, "onnx", save))["report"]

    assert report["parity"]["passed"] is True
    assert report["parity"]["outputs"]["logits"]["dtype"] == "float16"
    assert (report["parity"]["outputs"]["logits"]["atol"], report["parity"]["outputs"]["logits"]["rtol"]) == (
        1e-3,
        1e-2,
    )


def test_integer_outputs_must_match_exactly() -> None:
    check = compare_output(
        "ids", np.array([1, 2, 3]), np.array([1, 2, 4]), atol=10.0, rtol=10.0, batch_size=1
    )

    tally = ParityTally(atol=10.0, rtol=10.0, reference="PyTorch")
    tally.add(check)
    assert not check.passed
    assert "differs in 1 of 3 elements" in tally.failure_message()
    assert "must match exactly" in tally.failure_message()


def test_a_nan_on_one_side_only_fails_and_is_stored_as_null() -> None:
    tally = ParityTally(atol=1e-4, rtol=1e-3, reference="PyTorch")
    tally.add(
        compare_output(
            "y", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), atol=1e-4, rtol=1e-3, batch_size=1
        )
    )
    assert tally.failure is None

    tally.add(
        compare_output("y", np.array([1.0, 1.0]), np.array([np.nan, 1.0]), atol=1e-4, rtol=1e-3, batch_size=3)
    )

    report = tally.report([1, 3])
    assert report["passed"] is False
    assert report["outputs"]["y"]["max_abs_error"] is None
    json.dumps(report, allow_nan=False)


def test_profile_batch_sizes_are_powers_of_two_up_to_the_maximum_or_the_fixed_size() -> None:
    assert profile_batch_sizes(16, None) == [1, 2, 4, 8, 16]
    assert profile_batch_sizes(12, None) == [1, 2, 4, 8, 12]
    assert profile_batch_sizes(1, None) == [1]
    assert profile_batch_sizes(64, 3) == [3]


def test_profile_stops_growing_the_batch_after_a_slow_run() -> None:
    def slow(feeds: dict[str, Any]) -> None:
        time.sleep(0.01)

    result, notes = profile(
        batch_sizes=[1, 2, 4, 8],
        draw=lambda b: {"x": np.zeros((b, 2), dtype=np.float32)},
        onnxruntime=slow,
        torch_run=None,
        runs=2,
        threads=1,
        slow_run_s=0.005,
    )

    assert [b["batch_size"] for b in result["batches"]] == [1]
    assert len(notes) == 1
    assert notes[0].startswith("profiling stopped after batch size 1: one run took 0.01")
    assert notes[0].endswith("(over 0.005 s); batch sizes [2, 4, 8] were not profiled")


def test_dynamo_exporter_errors_name_the_operator_of_the_failing_node() -> None:
    inner = ValueError("aten_histc with min == max (0.0) is not supported in this export path.")
    outer = RuntimeError(
        "Error when translating node %histc : [num_users=1] = "
        "call_function[target=torch.ops.aten.histc.default](args = (%x, 4), kwargs = {})."
    )
    outer.__cause__ = inner

    message = explain_export_error(outer, "torch.export-based")

    assert message.startswith(
        "the torch.export-based ONNX exporter failed on the operator aten.histc: ValueError"
    )


@pytest.mark.slow
def test_conversion_through_the_sandbox_reports_progress_and_the_same_result(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_torchscript_cnn)
    stages: list[str] = []

    result = run_child(
        "convert", request, timeout_s=120, memory_mb=3072, threads=1, on_progress=stages.append
    )

    assert result["ok"] is True
    assert result["report"]["parity"]["passed"] is True
    assert result["signature"]["outputs"][0]["shape"] == [-1, 10]
    assert "exporting with the TorchScript-based exporter" in stages
    assert "parity batch 3" in stages
    assert "profiling batch 4" in stages
    assert stages[-1] == "done"


@pytest.mark.slow
def test_export_failure_through_the_sandbox_keeps_its_code_and_partial_report(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_unexportable_torchscript)

    with pytest.raises(SandboxError) as caught:
        run_child("convert", request, timeout_s=120, memory_mb=3072, threads=1)

    assert caught.value.code == "export_failed"
    assert model_factories.UNEXPORTABLE_OPERATOR in caught.value.message
    assert caught.value.extra["report"]["exporter"] == "torchscript"


@pytest.mark.slow
def test_model_that_hangs_is_stopped_by_the_sandbox_time_limit(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_hanging_torchscript)
    stages: list[str] = []

    with pytest.raises(SandboxError) as caught:
        run_child("convert", request, timeout_s=10, memory_mb=3072, threads=1, on_progress=stages.append)

    assert caught.value.code == "timeout"
    assert stages[-1] == "running PyTorch on sample inputs"


@pytest.mark.slow
def test_model_that_allocates_too_much_fails_with_the_sandbox_memory_limit(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", model_factories.save_memory_hog_torchscript)

    with pytest.raises(SandboxError) as caught:
        run_child("convert", request, timeout_s=120, memory_mb=2048, threads=1)

    assert caught.value.code == "out_of_memory"
    assert "limit 2048 MB" in caught.value.message


class _HalfPrecisionHead(torch.nn.Module):
    """Runs in bfloat16 and answers in it, beside a float32 output."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = (x * 3).to(torch.bfloat16)
        return half, half.float().sum(dim=1)


def test_a_bfloat16_output_is_served_as_float32_with_parity_passed(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", _scripted(_HalfPrecisionHead().eval(), x=[-1, 4]))

    result = convert(request)

    assert result["report"]["parity"]["passed"] is True
    assert [o["dtype"] for o in result["signature"]["outputs"]] == ["float32", "float32"]
    assert any("bfloat16 in the model and served as float32" in w for w in result["report"]["warnings"])
    x = np.array([[1.1, 2.0, 3.0, 4.3]], dtype=np.float32)
    half, total = _ort(request["output_path"]).run(None, {"x": x})
    expected = torch.from_numpy(x * 3).to(torch.bfloat16)
    assert half.dtype == np.float32
    assert half.tolist() == expected.float().tolist()
    assert total.tolist() == pytest.approx(expected.float().sum(dim=1).tolist())


def _save_onnx_bfloat16_used_inside(path: Path) -> dict[str, Any]:
    """``h`` (bfloat16) is a graph output that a later node and an If branch (outer scope) use too."""
    import onnx
    from onnx import TensorProto, helper

    branch = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["b"])],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.BFLOAT16, [-1, 4])],
    )
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.BFLOAT16),
        helper.make_node("Cast", ["h"], ["back"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["back", "x"], ["sum"]),
        helper.make_node(
            "Constant", [], ["flag"], value=helper.make_tensor("f", TensorProto.BOOL, [], [True])
        ),
        helper.make_node("If", ["flag"], ["picked"], then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [
            helper.make_tensor_value_info("h", TensorProto.BFLOAT16, ["n", 4]),
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("picked", TensorProto.BFLOAT16, ["n", 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]}


def test_bfloat16_outputs_of_an_onnx_upload_are_cast_where_later_nodes_and_branches_still_read_them(
    tmp_path: Path,
) -> None:
    request = _request(tmp_path, "onnx", _save_onnx_bfloat16_used_inside)

    result = convert(request)

    assert result["report"]["parity"]["passed"] is True
    assert result["signature"]["outputs"] == [
        {"name": "h", "dtype": "float32", "shape": [-1, 4]},
        {"name": "sum", "dtype": "float32", "shape": [-1, 4]},
        {"name": "picked", "dtype": "float32", "shape": [-1, 4]},
    ]
    assert any("outputs 'h', 'picked' are bfloat16" in w for w in result["report"]["warnings"])
    x = np.array([[1.1, 2.0, 3.0, 4.3], [0.1, -7.7, 1e3, 0.0]], dtype=np.float32)
    h, total, picked = _ort(request["output_path"]).run(None, {"x": x})
    rounded = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert h.dtype == picked.dtype == np.float32
    assert h.tolist() == picked.tolist() == rounded.tolist()
    assert total.tolist() == (rounded + x).tolist()


class _Answers(torch.nn.Module):
    """Models the TorchScript-based exporter refuses as they are, though PyTorch runs them."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)


class _DictAnswer(_Answers):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(x)
        return {"probs": torch.softmax(logits, dim=1), "label": logits.argmax(dim=1)}


class _ListInTuple(_Answers):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        return self.linear(x), [x + 1, x * 2], 7


class _Defaults(_Answers):
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 2.0, clip: bool = True
    ) -> torch.Tensor:
        out: torch.Tensor = self.linear(x if mask is None else x * mask) * scale
        return out.clamp(-1, 1) if clip else out


@pytest.mark.parametrize(
    ("model", "names"),
    [
        (_DictAnswer, ["probs", "label"]),
        (_ListInTuple, ["output_0", "output_1", "output_2"]),
        (_Defaults, ["output_0"]),
    ],
)
def test_dict_and_list_answers_and_arguments_left_to_their_defaults_export_and_pass_parity(
    tmp_path: Path, model: type[_Answers], names: list[str]
) -> None:
    torch.manual_seed(0)
    module = model().eval()

    request = _request(tmp_path, "torchscript", _scripted(module, x=[-1, 4]))

    result = convert(request)

    assert result["report"]["parity"]["passed"] is True
    assert [o["name"] for o in result["signature"]["outputs"]] == names
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    session = _ort(request["output_path"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    answers = session.run(None, {"x": x})
    with torch.no_grad():
        expected = [
            t.numpy()
            for t in torch.utils._pytree.tree_leaves(module(torch.from_numpy(x)))
            if isinstance(t, torch.Tensor)
        ]
    assert len(answers) == len(expected) == len(names)
    for got, want in zip(answers, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_forward_whose_undeclared_arguments_have_no_usable_default_names_the_reason(tmp_path: Path) -> None:
    class TakesTwo(torch.nn.Module):
        def forward(self, x: torch.Tensor, steps: list[int]) -> torch.Tensor:
            return x * len(steps)

    failure = _failure(_request(tmp_path, "torchscript", _scripted(TakesTwo(), x=[-1, 4])))

    assert failure.code == "invalid_signature"
    assert "forward takes (x, steps)" in failure.message


class _ProgramDict(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(x)
        return {"probs": torch.softmax(logits, dim=1), "label": logits.argmax(dim=1)}


def test_a_pt2_program_answering_a_dict_names_its_outputs_by_the_keys(tmp_path: Path) -> None:
    from registry.conversion.inspection import inspect_torch_export

    def save(path: Path) -> dict[str, Any]:
        batch = torch.export.Dim("batch", min=1, max=1024)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                _ProgramDict().eval(), (torch.randn(2, 4),), dynamic_shapes=({0: batch},)
            )
            torch.export.save(program, str(path))
        signature: dict[str, Any] = inspect_torch_export(str(path))["signature"]
        return signature

    request = _request(tmp_path, "torch_export", save)

    assert [o["name"] for o in request["signature"]["outputs"]] == ["probs", "label"]
    result = convert(request)
    assert result["report"]["parity"]["passed"] is True
    assert [o["name"] for o in result["signature"]["outputs"]] == ["probs", "label"]
    assert [o.name for o in _ort(request["output_path"]).get_outputs()] == ["probs", "label"]


class _Flattens(torch.nn.Module):
    """An output whose first dimension is dynamic but not the batch: four rows per sample."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten() * 2, x.sum(dim=1)


def test_an_output_whose_first_dimension_is_not_the_batch_is_served_one_request_a_run(
    tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.support.workers import make_config, running, v2_body

    request = _request(tmp_path, "torchscript", _scripted(_Flattens(), x=[-1, 4]))

    report = convert(request)["report"]

    assert report["parity"]["passed"] is True
    assert report["dynamic_batch"] is False
    assert any("'output_0' has 12 rows for a batch of 3" in w for w in report["warnings"])
    samples = [np.full((1 + i % 2, 4), i, dtype=np.float32) for i in range(24)]
    with running(make_config(Path(request["output_path"]), "flat")) as handle:

        def infer(x: np.ndarray) -> dict[str, Any]:
            answer = httpx.post(f"{handle.url}/v2/models/flat/infer", json=v2_body({"x": x}), timeout=30)
            assert answer.status_code == 200, answer.text
            return {o["name"]: o["data"] for o in answer.json()["outputs"]}

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(infer, samples))
    for x, answer in zip(samples, answers, strict=True):
        assert answer["output_0"] == (x.flatten() * 2).tolist()
        assert answer["output_1"] == x.sum(axis=1).tolist()


class _Detects(torch.nn.Module):
    """A detector's shape of answer: as many rows as it finds, whatever the batch."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        found = torch.nonzero(x > 0.5)
        return found, x[found[:, 0], found[:, 1]]


def test_a_variable_count_of_rows_marks_the_model_as_not_batched(tmp_path: Path) -> None:
    import onnx

    from inference_worker.contracts.batch_dimension import batches

    request = _request(tmp_path, "torchscript", _scripted(_Detects(), x=[-1, 16]))

    report = convert(request)["report"]

    assert report["parity"]["passed"] is True
    assert report["dynamic_batch"] is False
    metadata = {p.key: p.value for p in onnx.load(request["output_path"]).metadata_props}
    assert not batches(metadata)


def test_a_model_whose_outputs_follow_the_batch_carries_no_such_mark(tmp_path: Path) -> None:
    import onnx

    request = _request(tmp_path, "torchscript", model_factories.save_torchscript_cnn)

    report = convert(request)["report"]

    assert report["dynamic_batch"] is True
    assert not [w for w in report["warnings"] if "first dimension is not the batch" in w]
    assert list(onnx.load(request["output_path"]).metadata_props) == []


class _IgnoresOne(torch.nn.Module):
    def forward(self, x: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_an_input_the_model_never_reads_is_left_out_with_a_note(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", _scripted(_IgnoresOne(), x=[-1, 4], unused=[-1, 4]))

    result = convert(request)

    assert result["report"]["parity"]["passed"] is True
    assert result["report"]["dynamic_batch"] is True
    assert [i["name"] for i in result["signature"]["inputs"]] == ["x"]
    assert any("input 'unused' is never read by the model" in w for w in result["report"]["warnings"])
    assert [i.name for i in _ort(request["output_path"]).get_inputs()] == ["x"]


class _AnswersUnderTheInputsName(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x * 2, "total": x.sum(dim=1)}


def test_dict_keys_that_repeat_an_inputs_name_give_way_to_numbered_outputs(tmp_path: Path) -> None:
    request = _request(tmp_path, "torchscript", _scripted(_AnswersUnderTheInputsName(), x=[-1, 4]))

    result = convert(request)

    assert result["report"]["parity"]["passed"] is True
    assert [o["name"] for o in result["signature"]["outputs"]] == ["output_0", "output_1"]
    assert [i.name for i in _ort(request["output_path"]).get_inputs()] == ["x"]


def test_onnx_runtimes_refusal_reads_without_its_source_location_or_the_sandboxs_path(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def save(path: Path) -> dict[str, Any]:
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 30)])  # not released
        model.ir_version = 9
        onnx.save(model, str(path))
        return {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]}

    failure = _failure(_request(tmp_path, "onnx", save))

    assert failure.code == "check_failed"
    assert failure.message.startswith("ONNX Runtime cannot load the model: ONNX Runtime only")
    assert "Opset 30" in failure.message
    assert "onnxruntime_src" not in failure.message
    assert str(tmp_path) not in failure.message


def test_a_pt2_program_with_a_narrow_batch_range_is_probed_only_within_it(tmp_path: Path) -> None:
    from registry.conversion.inspection import inspect_torch_export

    def save(path: Path) -> dict[str, Any]:
        batch = torch.export.Dim("batch", min=1, max=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
            torch.export.save(
                torch.export.export(module, (torch.randn(2, 4),), dynamic_shapes=({0: batch},)), str(path)
            )
        signature: dict[str, Any] = inspect_torch_export(str(path))["signature"]
        return signature

    report = convert(_request(tmp_path, "torch_export", save))["report"]

    assert report["parity"]["passed"] is True
    assert report["parity"]["batch_sizes"] == [1, 3]
    assert report["dynamic_batch"] is True


def test_string_outputs_are_compared_for_equality_bytes_and_text_alike() -> None:
    words = np.array([["a", "é"], ["", "b"]], dtype=object)
    same = compare_output(
        "label",
        words,
        np.array([[b"a", "é".encode()], [b"", b"b"]], dtype=object),
        atol=0.5,
        rtol=0.5,
        batch_size=2,
    )
    differs = compare_output(
        "label", words, np.array([["a", "é"], ["", "c"]], dtype=object), atol=0.5, rtol=0.5, batch_size=2
    )
    scalar = compare_output(
        "label", np.array("x", dtype=object), np.array("x", dtype=object), atol=0, rtol=0, batch_size=1
    )

    assert same.passed
    assert scalar.passed
    assert (same.dtype, same.mismatched, same.elements) == ("string", 0, 4)
    assert not differs.passed
    assert differs.worst == "worst at index (1, 1): expected 'b', got 'c'"
