"""Bad usage of `kiln` exits 2 with one line, before any request (the platform here is unreachable)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update({"KILN_URL": "http://127.0.0.1:9", "KILN_TOKEN": "kiln_unused"})
    return subprocess.run(
        [sys.executable, "-m", "kiln_client", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("upload", "digits", "/nonexistent/model.pt"), "kiln: /nonexistent/model.pt: no such file"),
        (("upload", "digits", "/"), "kiln: /: a directory, not a model file"),
        (("traffic", "fraud", "a90"), "kiln: 'a90': write splits as variant=weight, e.g. a=90 b=10"),
        (("alias", "digits", "production"), "kiln: give the version to point the alias at, or --delete"),
        (("rollout", "start", "fraud"), "kiln: rollout start: --candidate is required"),
        (
            ("rollout", "start", "fraud", "--candidate", "b", "--steps", "5,half"),
            "kiln: --steps: write percentages as 5,25,50,100, not '5,half'",
        ),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    result = kiln(*args)

    assert (result.returncode, result.stderr.strip()) == (2, message)


def test_a_hugging_face_folder_is_refused_with_how_to_export_the_model(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")

    result = kiln("upload", "bert", str(tmp_path))

    assert result.returncode == 2
    assert "a Hugging Face save_pretrained() folder holds weights, not the model's code" in result.stderr
    assert "torch.export.save() (.pt2)" in result.stderr


def test_a_bad_signature_argument_is_bad_usage(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the signature is checked first")
    result = kiln("upload", "digits", str(model), "--signature", "{not json")

    assert result.returncode == 2
    assert result.stderr.startswith("kiln: --signature: not valid JSON")


def test_argparse_errors_exit_2_as_well() -> None:
    assert kiln("upload").returncode == 2


def _save_with_external_data(path: Path, locations: list[str]) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.full(4, i, np.float32), f"w{i}") for i in range(len(locations))]
    nodes = [
        helper.make_node("Add", ["x" if i == 0 else f"t{i}", f"w{i}"], [f"t{i + 1}"])
        for i in range(len(weights))
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info(f"t{len(weights)}", TensorProto.FLOAT, [None, 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for tensor, location in zip(model.graph.initializer, locations, strict=True):
        onnx.external_data_helper.set_external_data(tensor, location, offset=0, length=16)
        (path.parent / location).write_bytes(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("locations", "found"),
    [
        (["model.onnx.data"], "model.onnx.data"),  # torch.onnx.export's name
        (["model.onnx_data"], "model.onnx_data"),  # optimum's
        (["weights.bin", "weights.bin"], "weights.bin"),  # onnx.save_model(..., location=...)
        (["a.bin", "b.bin"], None),  # two files: sent alone, and the platform says why
        ([], None),
    ],
)
def test_upload_finds_the_external_data_file_the_model_names(
    tmp_path: Path, locations: list[str], found: str | None
) -> None:
    from kiln_client.onnx_files import external_data_for

    path = tmp_path / "model.onnx"
    _save_with_external_data(path, locations)
    (tmp_path / "model.onnx.data").touch(exist_ok=True)  # beside it, named or not

    got = external_data_for(path, None)

    assert (got.name if got else None) == found
