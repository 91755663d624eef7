"""Hostile uploads: each gets a clear 4xx and leaves no file and no row behind."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from django.conf import settings
from rest_framework.test import APIClient

from registry.signature import parse_signature
from tests.support.torch_models import SmallCNN, save_onnx_cnn, save_torchscript_cnn
from tests.support.uploads import assert_nothing_left, create_model, stored_files, upload

pytestmark = pytest.mark.django_db


class RunsACommand:
    """Unpickling this would create a marker file: the test proves it never happens."""

    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def model(owner_api: APIClient) -> None:
    create_model(owner_api)


@pytest.mark.usefixtures("model")
def test_a_pickle_that_would_run_a_command_is_refused_and_never_runs(
    owner_api: APIClient, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    RunsACommand.marker = str(marker)
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(RunsACommand()))

    response = upload(
        owner_api, "cnn", path, signature={"inputs": [{"name": "x", "dtype": "float32", "shape": [1]}]}
    )

    assert response.status_code == 400
    assert "pickle" in response.json()["message"]
    assert "TorchScript" in response.json()["message"]
    assert not marker.exists()
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_a_torchscript_archive_whose_pickle_imports_os_system_is_refused(
    owner_api: APIClient, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    RunsACommand.marker = str(marker)
    good = tmp_path / "good.pt"
    signature = save_torchscript_cnn(good)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps(RunsACommand(), protocol=2)
            dst.writestr(info, data)

    response = upload(owner_api, "cnn", evil, signature=signature)

    assert response.status_code == 400
    assert "os.system" in response.json()["message"] or "posix.system" in response.json()["message"]
    assert not marker.exists()
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_torch_save_of_a_whole_model_is_refused_with_the_accepted_formats(
    owner_api: APIClient, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    torch.save(SmallCNN(), path)

    response = upload(
        owner_api,
        "cnn",
        path,
        signature={"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, 16, 16]}]},
    )

    assert response.status_code == 400
    body = response.json()
    assert "torch.save" in body["message"]
    assert "torch.jit.save" in body["message"]
    assert body["code"] == "pickle_refused"
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_a_legacy_torch_save_pickle_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(SmallCNN().state_dict(), path, _use_new_zipfile_serialization=False)

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400
    assert "pickle" in response.json()["message"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_a_truncated_torchscript_archive_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    response = upload(owner_api, "cnn", path, signature=signature)

    assert response.status_code == 400
    assert "corrupt or truncated" in response.json()["message"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_a_corrupted_onnx_file_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)
    data = bytearray(path.read_bytes())
    data[10:400] = os.urandom(390)
    path.write_bytes(bytes(data))

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400
    assert "ONNX" in response.json()["message"]
    assert_nothing_left()


def _safetensors(path: Path) -> None:
    """A file as safetensors' save_file writes one (``model.safetensors`` of save_pretrained()): a
    little-endian u64 header length, the JSON header, then the raw tensor bytes."""
    weight = np.arange(12, dtype=np.float32)
    header = json.dumps(
        {"linear.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
    ).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + weight.tobytes())


@pytest.mark.usefixtures("model")
@pytest.mark.parametrize(
    ("write", "what"),
    [
        (_safetensors, "a safetensors file (weights, as save_pretrained() writes them"),
        (lambda path: path.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64)), "a GGUF file"),
        (lambda path: path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64)), "an HDF5 file"),
    ],
    ids=["safetensors", "gguf", "hdf5"],
)
def test_weights_without_the_models_code_are_refused_with_how_to_export_it(
    owner_api: APIClient, tmp_path: Path, write: Callable[[Path], object], what: str
) -> None:
    path = tmp_path / "model.bin"
    write(path)

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400, response.content
    message = response.json()["message"]
    assert message.startswith(f"this is {what}")
    assert "torch.export.save(torch.export.export(model, example_inputs), 'model.pt2')" in message
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_a_text_file_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("def forward(x):\n    return x\n")

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400
    assert "text file" in response.json()["message"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_an_empty_file_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_an_oversized_file_is_refused_while_streaming(
    owner_api: APIClient, tmp_path: Path, settings: Any
) -> None:
    settings.KILN_MAX_UPLOAD_BYTES = 64 * 1024
    path = tmp_path / "model.onnx"
    path.write_bytes(os.urandom(200 * 1024))

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 413
    assert "upload limit of 65536 bytes" in response.json()["message"]
    assert_nothing_left()
    assert list((Path(settings.KILN_ARTIFACT_ROOT) / "tmp").glob("*")) == []


@pytest.mark.usefixtures("model")
def test_the_upload_limit_holds_for_a_model_and_its_external_data_together(
    owner_api: APIClient, tmp_path: Path, settings: Any
) -> None:
    settings.KILN_MAX_UPLOAD_BYTES = 64 * 1024
    model, data = tmp_path / "model.onnx", tmp_path / "model.onnx.data"
    model.write_bytes(os.urandom(40 * 1024))
    data.write_bytes(os.urandom(40 * 1024))  # each under the limit, the two over it

    with model.open("rb") as graph, data.open("rb") as weights:
        response = owner_api.post(
            "/api/v1/models/cnn/versions/", {"file": graph, "external_data": weights}, format="multipart"
        )

    assert response.status_code == 413, response.content
    assert "upload limit of 65536 bytes" in response.json()["message"]
    assert_nothing_left()
    assert list((Path(settings.KILN_ARTIFACT_ROOT) / "tmp").glob("*")) == []


@pytest.mark.usefixtures("model")
def test_an_onnx_model_with_external_data_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)
    proto = onnx.load(str(path))
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    path.write_bytes(proto.SerializeToString())

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400
    assert response.json()["code"] == "external_data_refused"
    assert "keeps its data in another file ('../../../../etc/passwd'" in response.json()["message"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_external_data_named_by_a_path_outside_is_read_only_from_the_file_uploaded(
    owner_api: APIClient, tmp_path: Path
) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    path = tmp_path / "model.onnx"
    save_onnx_cnn(path)
    proto = onnx.load(str(path))
    tensor = proto.graph.initializer[0]
    weights = numpy_helper.to_array(tensor)
    data = tmp_path / "weights.bin"
    data.write_bytes(weights.tobytes())
    onnx.external_data_helper.set_external_data(
        tensor, "../../../../etc/passwd", offset=0, length=weights.nbytes
    )
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    path.write_bytes(proto.SerializeToString())

    with path.open("rb") as model, data.open("rb") as external:
        response = owner_api.post(
            "/api/v1/models/cnn/versions/", {"file": model, "external_data": external}, format="multipart"
        )

    assert response.status_code == 201, response.content
    stored = onnx.load(str(stored_files()[0]), load_external_data=False)
    folded = next(t for t in stored.graph.initializer if t.name == tensor.name)
    assert not folded.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(folded), weights)


def _external(name: str, count: int) -> Any:
    """A UINT8 tensor whose bytes are to be read from ``data.bin`` beside the model."""
    import onnx

    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.UINT8, dims=[count])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "data.bin"), ("offset", "0"), ("length", str(count))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _hidden_external_data(where: str) -> bytes:
    """A valid model (y = x + c) whose constant ``c`` hides external data ``where``."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    count = 16
    indices = numpy_helper.from_array(np.arange(count, dtype=np.int64), "indices")
    functions = []
    initializers: dict[str, Any] = {}
    if where == "sparse initializer":
        constant = helper.make_node("Identity", ["c_sparse"], ["c"])
        initializers["sparse_initializer"] = [
            helper.make_sparse_tensor(_external("c_sparse", count), indices, [count])
        ]
    elif where == "sparse constant":
        sparse = helper.make_sparse_tensor(_external("s", count), indices, [count])
        constant = helper.make_node("Constant", [], ["c"], sparse_value=sparse)
    elif where == "subgraph":
        branch = helper.make_graph(
            [helper.make_node("Constant", [], ["b"], value=_external("t", count))],
            "branch",
            [],
            [helper.make_tensor_value_info("b", onnx.TensorProto.UINT8, [count])],
        )
        flag = helper.make_node(
            "Constant", [], ["flag"], value=helper.make_tensor("f", onnx.TensorProto.BOOL, [], [True])
        )
        constant = helper.make_node("If", ["flag"], ["c"], then_branch=branch, else_branch=branch)
        initializers["extra_nodes"] = [flag]
    else:  # a model-local function
        functions.append(
            helper.make_function(
                "local",
                "Bytes",
                [],
                ["out"],
                [helper.make_node("Constant", [], ["out"], value=_external("t", count))],
                [helper.make_opsetid("", 17)],
            )
        )
        constant = helper.make_node("Bytes", [], ["c"], domain="local")
    nodes = [
        *initializers.get("extra_nodes", []),
        constant,
        helper.make_node("Cast", ["c"], ["cf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Add", ["x", "cf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [count])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [count])],
        sparse_initializer=initializers.get("sparse_initializer"),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=functions,
    )
    model.ir_version = 9
    return bytes(model.SerializeToString())


@pytest.mark.usefixtures("model")
@pytest.mark.parametrize("where", ["sparse initializer", "sparse constant", "subgraph", "local function"])
def test_external_data_hidden_anywhere_in_an_onnx_model_is_refused(
    owner_api: APIClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # The bytes it names exist beside the model and in the working directory, so that only the
    # refusal of external data (not a missing file) stops it: ONNX Runtime would read them.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.bin").write_bytes(bytes(range(16)))
    path = tmp_path / "model.onnx"
    path.write_bytes(_hidden_external_data(where))

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "external_data_refused"
    assert "keeps its data in another file ('data.bin'" in response.json()["message"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
@pytest.mark.parametrize(
    ("signature", "field"),
    [
        ({"inputs": []}, "signature.inputs"),
        ({"inputs": [{"name": "x", "dtype": "float99", "shape": [-1, 3, 16, 16]}]}, "inputs[0].dtype"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 0, 16]}]}, "inputs[0].shape[1]"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": "big"}]}, "inputs[0].shape"),
        ({"inputs": [{"name": "", "dtype": "float32", "shape": [1]}]}, "inputs[0].name"),
        (
            {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3, 16, 16]}], "extra": 1},
            "unknown field",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "dtype": "float32", "shape": [1]},
                    {"name": "b", "dtype": "float32", "shape": [1]},
                ]
            },
            "forward() takes 1",
        ),
        ([1, 2], "signature"),
        (
            {"inputs": [{"name": "x", "dtype": "bfloat16", "shape": [-1, 3, 16, 16]}]},
            "inputs[0].dtype: input 'x' is bfloat16",
        ),
        (
            {
                "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 3, 16, 16]}],
                "outputs": [{"name": "image", "dtype": "float32", "shape": [-1, 10]}],
            },
            "outputs[0].name: 'image' is also an input's name",
        ),
    ],
)
def test_a_bad_signature_is_a_400_naming_the_field(
    owner_api: APIClient, tmp_path: Path, signature: Any, field: str
) -> None:
    path = tmp_path / "model.pt"
    save_torchscript_cnn(path)

    with path.open("rb") as handle:
        response = owner_api.post(
            "/api/v1/models/cnn/versions/",
            {"file": handle, "signature": json.dumps(signature)},
            format="multipart",
        )

    assert response.status_code == 400
    assert field in response.json()["message"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_an_onnx_model_taking_bfloat16_is_refused_at_upload(owner_api: APIClient, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400, response.content
    assert "input 'x' is bfloat16" in response.json()["message"]
    assert "take float32 and cast inside the model" in response.json()["message"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_a_torchscript_upload_without_signature_is_refused(owner_api: APIClient, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_torchscript_cnn(path)

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400
    message = response.json()["message"]
    assert "required for TorchScript" in message
    assert "forward(image)" in message
    # The example it gives is a signature, with forward's own argument names: a first-time user can
    # copy it and change the shape.
    example = parse_signature(json.loads(message[message.index('{"inputs"') :]))
    assert [spec.name for spec in example.inputs] == ["image"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_malformed_json_fields_are_refused(owner_api: APIClient, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_torchscript_cnn(path)

    signature = json.dumps(save_torchscript_cnn(path))
    with path.open("rb") as handle:
        response = owner_api.post(
            "/api/v1/models/cnn/versions/", {"file": handle, "signature": "{not json"}, format="multipart"
        )
    with path.open("rb") as handle:
        deep = owner_api.post(
            "/api/v1/models/cnn/versions/",
            {"file": handle, "signature": signature, "metadata": "[" * 5000 + "]" * 5000},
            format="multipart",
        )

    assert response.status_code == 400
    assert response.json()["message"].startswith("signature: not valid JSON")
    assert deep.status_code == 400
    assert deep.json()["message"].startswith("metadata:")
    assert_nothing_left()


@pytest.mark.usefixtures("model")
def test_a_path_traversal_file_name_is_never_used_as_a_path(owner_api: APIClient, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)
    content = path.read_bytes()
    handle = io.BytesIO(content)
    handle.name = "../../../../tmp/kiln-escape.pt"

    response = owner_api.post(
        "/api/v1/models/cnn/versions/",
        {"file": handle, "signature": json.dumps(signature)},
        format="multipart",
    )

    assert response.status_code == 201
    assert not Path("/tmp/kiln-escape.pt").exists()
    files = stored_files()
    assert len(files) == 1
    assert files[0].name == response.json()["source_sha256"]
    assert Path(settings.KILN_ARTIFACT_ROOT).resolve() in files[0].resolve().parents


@pytest.mark.usefixtures("model")
def test_a_zip_bomb_is_refused_before_it_is_unpacked(
    owner_api: APIClient, tmp_path: Path, settings: Any
) -> None:
    settings.KILN_MAX_UNPACKED_BYTES = 10 * 1024 * 1024
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\0" * (100 * 1024 * 1024))

    response = upload(owner_api, "cnn", path)

    assert response.status_code == 400
    assert "unpacks to" in response.json()["message"]
    assert_nothing_left()


@pytest.mark.usefixtures("model")
@pytest.mark.parametrize("header", ["Bearer kiln_nope_nope", "Bearer not-a-token", "Token ", "Bearer"])
def test_missing_or_wrong_tokens_are_401(tmp_path: Path, header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    path = tmp_path / "model.pt"
    signature = save_torchscript_cnn(path)

    response = upload(client, "cnn", path, signature=signature)

    assert response.status_code == 401
    assert response.json()["message"]
    assert_nothing_left()
