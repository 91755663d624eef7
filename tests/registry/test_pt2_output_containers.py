"""A ``.pt2`` whose answer is a container of a type the platform does not have: a Hugging Face
model's ``ModelOutput`` (``SequenceClassifierOutput``), which transformers registers as a pytree
node and ``torch.export.save`` records by its name. Without it, loading failed ("Deserializing ...
in pytree is not registered") and the upload was refused. The child, which never imports what a
file names, reads such a container as a dict of its keys: the keys name the outputs.

``Scores`` stands in for transformers here: registered in this process to export the program,
never in the sandboxed child (a fresh interpreter) that inspects and converts it.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils import _pytree

from registry.sandbox import SandboxError, run_child

KIND = "thirdparty.outputs.Scores"


class Scores(dict):  # type: ignore[type-arg]
    pass


class Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, features: torch.Tensor) -> Scores:
        logits = self.linear(features)
        return Scores(logits=logits, probabilities=logits.softmax(-1))


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Path]:
    _pytree.register_pytree_node(
        Scores,
        lambda value: (list(value.values()), list(value)),
        lambda values, keys: Scores(zip(keys, values, strict=True)),
        serialized_type_name=KIND,
    )
    path = tmp_path / "classifier.pt2"
    try:
        batch = torch.export.Dim("batch", min=1, max=64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = (torch.randn(2, 6),)
            exported = torch.export.export(Classifier().eval(), example, dynamic_shapes=({0: batch},))
            torch.export.save(exported, str(path))
        yield path
    finally:
        _pytree._deregister_pytree_node(Scores)


@pytest.mark.slow
def test_an_answer_of_an_unknown_container_is_read_as_a_dict_named_by_its_keys(
    program: Path, tmp_path: Path
) -> None:
    assert KIND in _archive_text(program)  # recorded by name, as transformers' classes are

    request = {"format": "torch_export", "path": str(program)}
    inspected = run_child("inspect", request, timeout_s=120, memory_mb=3072, threads=1)
    signature = inspected["signature"]
    converted = run_child(
        "convert",
        {
            "format": "torch_export",
            "source_path": str(program),
            "output_path": str(tmp_path / "model.onnx"),
            "signature": signature,
            "atol": 1e-4,
            "rtol": 1e-3,
            "parity_batch_sizes": [1, 3],
            "profile_max_batch": 2,
            "profile_runs": 2,
            "threads": 1,
            "opset": None,
            "seed": 7,
        },
        timeout_s=180,
        memory_mb=3072,
        threads=1,
    )

    assert signature["outputs"] == [
        {"name": "logits", "dtype": "float32", "shape": [-1, 3]},
        {"name": "probabilities", "dtype": "float32", "shape": [-1, 3]},
    ]
    assert converted["report"]["parity"]["status"] == "passed"
    assert set(converted["report"]["parity"]["outputs"]) == {"logits", "probabilities"}


def _with_context(program: bytes, context: object) -> bytes:
    """The program with ``KIND``'s context in its output tree replaced."""
    document = json.loads(program)
    signature = document["graph_module"]["module_call_graph"][0]["signature"]
    protocol, tree = json.loads(signature["out_spec"])
    assert tree["type"] == KIND
    tree["context"] = json.dumps(context)
    signature["out_spec"] = json.dumps([protocol, tree])
    return json.dumps(document).encode()


def _archive_text(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith(".json"))


def test_a_container_that_cannot_be_read_as_a_dict_is_refused_with_how_to_export_it(
    program: Path, tmp_path: Path
) -> None:
    odd = tmp_path / "odd.pt2"
    with zipfile.ZipFile(program) as source, zipfile.ZipFile(odd, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if "/models/" in info.filename and info.filename.endswith(".json"):
                data = _with_context(data, {"fields": 2})  # not a list of keys
            target.writestr(info, data)

    with pytest.raises(SandboxError) as refused:
        run_child("inspect", {"format": "torch_export", "path": str(odd)}, timeout_s=120, memory_mb=3072)

    assert refused.value.code == "invalid_artifact"
    assert f"held in {KIND}, a Python type this platform does not have" in refused.value.message
    assert "return_dict=False" in refused.value.message
