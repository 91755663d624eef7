"""A ``.pt2`` (torch.export) upload is read before PyTorch loads it: loading one unpickles payloads
marked ``use_pickle`` and opaque objects, evaluates each symbolic expression with sympy, compiles
the program's guards into Python and resolves node targets from the ``torch`` module. Each archive
here is a real ``torch.export.save`` output with one part changed as an attacker would; the ones
carrying a command would run it when loaded (checked by hand with ``torch.export.load``: the guard
and the expression did). Each is refused before any loading, and the command never runs.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rest_framework.test import APIClient

from registry.artifacts import detect_format
from registry.errors import InvalidArtifactError
from tests.support.torch_models import save_pt2_cnn
from tests.support.uploads import create_model, upload

pytestmark = pytest.mark.django_db
LIMIT = 1 << 30


class RunsACommand:
    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _rewrite(
    good: Path,
    out: Path,
    *,
    program: Callable[[dict[str, Any]], None] | None = None,
    entry: Callable[[str, bytes], bytes] | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if program is not None and "/models/" in info.filename and info.filename.endswith(".json"):
                document = json.loads(data)
                program(document)
                data = json.dumps(document).encode()
            if entry is not None:
                data = entry(info.filename, data)
            dst.writestr(info, data)
        root = src.namelist()[0].split("/", 1)[0]
        for name, data in (extra or {}).items():
            dst.writestr(f"{root}/{name}", data)
    return out


def _each(document: Any, key: str, change: Callable[[str], str]) -> None:
    """Change every string value under ``key`` in the program's JSON."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for name, value in item.items():
                if name == key and isinstance(value, str):
                    item[name] = change(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt2"
    save_pt2_cnn(path)
    return path


def _pickled(marker: Path) -> bytes:
    RunsACommand.marker = str(marker)
    return pickle.dumps(RunsACommand(), protocol=2)


def _torch_saved(marker: Path) -> bytes:
    RunsACommand.marker = str(marker)
    buffer = io.BytesIO()
    torch.save(RunsACommand(), buffer)
    return buffer.getvalue()


def _pickled_constant(marker: Path) -> dict[str, Any]:
    config = {
        "evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    }

    def entry(name: str, data: bytes) -> bytes:
        return json.dumps({"config": config}).encode() if name.endswith("constants_config.json") else data

    return {"entry": entry, "extra": {"data/constants/opaque_obj_0": _pickled(marker)}}


def _pickled_weight(marker: Path) -> dict[str, Any]:
    def entry(name: str, data: bytes) -> bytes:
        if name.endswith("weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        return _torch_saved(marker) if name.endswith("data/weights/weight_0") else data

    return {"entry": entry}


def _constant(value: str, _: str) -> str:
    return value


def _enum_context(spec: str) -> str:
    """The output tree's keys with an enum PyTorch would import ``pwned_module`` to read (it did,
    checked by hand with a module on the path that wrote a file when imported)."""
    protocol, tree = json.loads(spec)
    tree["context"] = json.dumps([{"__enum__": True, "fqn": "pwned_module:Keys", "name": "A"}])
    return json.dumps([protocol, tree])


def _defaultdict(spec: str) -> str:
    protocol, tree = json.loads(spec)
    factory = {"default_factory_module": "os", "default_factory_name": "system", "dict_context": []}
    node = {"type": "collections.defaultdict", "context": factory, "children_spec": []}
    return json.dumps([protocol, {**tree, "children_spec": [*tree["children_spec"], node]}])


CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "guard": lambda marker: {
        "program": lambda doc: doc.update(guards_code=[f"__import__('os').system('touch {marker}') == 0"])
    },
    "guard-breaking-its-message": lambda marker: {
        "program": lambda doc: doc.update(guards_code=[f'\'" + str(open("{marker}", "w")) + "\' == 1'])
    },
    "expression": lambda marker: {
        "program": lambda doc: _each(doc, "expr_str", lambda _: f"__import__('os').system('touch {marker}')")
    },
    "range-constraint": lambda marker: {
        "program": lambda doc: doc["range_constraints"].update({"s0.__class__": {"min_val": 1, "max_val": 2}})
    },
    "node-target": lambda marker: {
        "program": lambda doc: _each(doc, "target", lambda t: "torch.os.system" if "conv" in t else t)
    },
    "ops-loader": lambda marker: {
        "program": lambda doc: _each(doc, "target", lambda t: "torch.ops.load_library" if "conv" in t else t)
    },
    "enum-in-an-output-tree": lambda marker: {"program": lambda doc: _each(doc, "out_spec", _enum_context)},
    "defaultdict-in-inputs": lambda marker: {"program": lambda doc: _each(doc, "in_spec", _defaultdict)},
    "pickled-constant": _pickled_constant,
    "pickled-weight": _pickled_weight,
    "legacy-weights": lambda marker: {"extra": {"data/weights/model.pt": _torch_saved(marker)}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_pt2_that_would_run_code_when_loaded_is_refused_before_loading(
    good: Path, tmp_path: Path, case: str
) -> None:
    marker = tmp_path / "pwned"
    evil = _rewrite(good, tmp_path / f"{case}.pt2", **CASES[case](marker))

    with pytest.raises(InvalidArtifactError) as refused:
        detect_format(evil, max_unpacked_bytes=LIMIT)

    assert refused.value.code in ("unsafe_program", "pickle_refused"), refused.value.message
    assert "could run code" in refused.value.message or "pickle" in refused.value.message
    assert not marker.exists()


@pytest.mark.parametrize("case", ["guard", "expression"])
def test_uploading_one_is_a_400_and_the_command_never_runs(
    owner_api: APIClient, good: Path, tmp_path: Path, case: str
) -> None:
    create_model(owner_api)
    marker = tmp_path / "pwned"
    evil = _rewrite(good, tmp_path / f"{case}.pt2", **CASES[case](marker))

    response = upload(owner_api, "cnn", evil)

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "unsafe_program"
    assert "loading this torch.export program could run code" in response.json()["message"]
    assert not marker.exists()


def test_a_program_with_dynamic_shapes_guards_and_symbolic_helpers_is_accepted(tmp_path: Path) -> None:
    class Halves(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
            return x[: x.shape[0] // 2] * 2, torch.cat([x, y]).sum(), max(x.shape[0], 3)

    half, other = torch.export.Dim("half", min=1, max=512), torch.export.Dim("other")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(
            Halves(),
            (torch.randn(4, 4), torch.randn(3, 4)),
            dynamic_shapes={"x": {0: 2 * half}, "y": {0: other}},
        )
    path = tmp_path / "halves.pt2"
    torch.export.save(program, str(path))
    with zipfile.ZipFile(path) as archive:
        (name,) = (n for n in archive.namelist() if "/models/" in n)
        document = json.loads(archive.read(name))
    assert document["guards_code"]  # what this test is about: guards, sym_max, expressions
    assert "torch.sym_max" in json.dumps(document)

    assert detect_format(path, max_unpacked_bytes=LIMIT).format == "torch_export"


def test_a_program_with_tensor_constants_buffers_and_underscored_operators_is_accepted(
    tmp_path: Path,
) -> None:
    """Lifted constants are stored raw as ``data/constants/tensor_N`` (not a pickled payload); a
    data-dependent size brings ``aten._local_scalar_dense`` and ``aten._assert_scalar``."""

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.ones(4), persistent=False)
            self.offset = torch.tensor([1.0, 2.0, 3.0, 4.0])

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            count: int = (x > 0).sum().item()  # type: ignore[assignment]  # a SymInt when exported
            torch._check(count >= 0)  # type: ignore[no-untyped-call]
            scale: torch.Tensor = self.scale  # type: ignore[assignment]
            return x * scale + self.offset, x.new_zeros(count)

    path = tmp_path / "scaled.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(Scaled(), (torch.randn(2, 4),)), str(path))
    with zipfile.ZipFile(path) as archive:
        assert any(name.endswith("data/constants/tensor_0") for name in archive.namelist())
        (program,) = (archive.read(n) for n in archive.namelist() if "/models/" in n)
    assert b"torch.ops.aten._assert_scalar" in program

    assert detect_format(path, max_unpacked_bytes=LIMIT).format == "torch_export"


def test_bitwise_operators_which_aten_names_with_dunders_are_accepted_and_no_other_dunder(
    good: Path, tmp_path: Path
) -> None:
    """``mask & mask`` exports as ``aten.__and__.Tensor`` (Hugging Face models combine attention
    masks so); ``aten.__class__`` and the like stay refused."""

    class Masks(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return ((a & b) | (a ^ b)) + ((a << 1) >> 1)

    path = tmp_path / "masks.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(
            torch.export.export(Masks(), (torch.ones(2, 3, dtype=torch.int64), torch.zeros(2, 3).long())),
            str(path),
        )
    with zipfile.ZipFile(path) as archive:
        (program,) = (archive.read(n) for n in archive.namelist() if "/models/" in n)
    assert b"torch.ops.aten.__and__.Tensor" in program
    assert b"torch.ops.aten.__rshift__" in program

    assert detect_format(path, max_unpacked_bytes=LIMIT).format == "torch_export"
    for target in ("torch.ops.aten.__class__", "torch.ops.aten.__and__.__call__", "torch.ops.aten.__dict__"):
        retarget = functools.partial(_each, key="target", change=functools.partial(_constant, target))
        odd = _rewrite(good, tmp_path / "odd.pt2", program=retarget)
        with pytest.raises(InvalidArtifactError, match="is not a tensor operator"):
            detect_format(odd, max_unpacked_bytes=LIMIT)
