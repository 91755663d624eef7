"""Open an artifact in the sandboxed child and read its signature. Pure: no Django.

ONNX models are parsed as protobuf (no code runs) and refused when they point at external
data, unless the upload sent their data file (``external_data``): it is then folded into one
file first (``external_data.inline_external_data``). TorchScript is opened with TorchScript's
own loader (its pickles only rebuild tensors and compiled classes, checked beforehand by
``registry.artifacts``); ``.pt2`` programs with ``torch.export.load``.
"""

from __future__ import annotations

from typing import Any

from registry.conversion.channel import ChildError, progress
from registry.conversion.onnx_export import load_program
from registry.conversion.onnx_proto import all_tensors, external_entries, parse_onnx, unzip_maps
from registry.conversion.script_binding import key_names

ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "bfloat16",
    8: "string",
}
TORCH_DTYPES = {
    "torch.float32": "float32",
    "torch.float16": "float16",
    "torch.bfloat16": "bfloat16",
    "torch.float64": "float64",
    "torch.int64": "int64",
    "torch.int32": "int32",
    "torch.int16": "int16",
    "torch.int8": "int8",
    "torch.uint8": "uint8",
    "torch.bool": "bool",
}


def inspect(request: dict[str, Any]) -> dict[str, Any]:
    """Open ``request["path"]`` as ``request["format"]``; return what was learned."""
    fmt, path = request["format"], request["path"]
    if fmt == "onnx" and request.get("external_data"):
        from registry.conversion.external_data import inline_external_data

        path = request["inlined_path"]
        inline_external_data(request["path"], request["external_data"], path, max_bytes=request["max_bytes"])
    progress(f"opening {fmt}")
    if fmt == "onnx":
        return inspect_onnx(path)
    if fmt == "torchscript":
        return inspect_torchscript(path)
    if fmt == "torch_export":
        return inspect_torch_export(path)
    raise ChildError(f"unknown format {fmt}")


def load_onnx_checked(path: str) -> Any:
    """Parse and check an ONNX file; refuse external data. Returns the ModelProto."""
    import onnx

    model = parse_onnx(path)
    for tensor in all_tensors(model):
        entries = external_entries(tensor)
        if entries is not None:
            where = entries.get("location", "")
            raise ChildError(
                f"ONNX tensor {tensor.name[:200]!r} keeps its data in another file ({where[:200]!r}, "
                "written beside the model: torch.onnx.export does so by default); upload that file "
                "too as external_data (kiln upload sends it when it lies beside the model), or "
                "export a single file (torch.onnx.export(..., external_data=False), or "
                "onnx.save_model(model, path, save_as_external_data=False))",
                "external_data_refused",
            )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:500]
        raise ChildError(f"the ONNX model fails onnx.checker: {first}", "invalid_artifact") from None
    return model


def onnx_signature(model: Any) -> dict[str, Any]:
    """Inputs (minus initializers) and outputs of an ONNX graph, -1 for symbolic dims."""
    initializers = {init.name for init in model.graph.initializer}

    def spec(value: Any) -> dict[str, Any]:
        tensor_type = value.type.tensor_type
        dtype = ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise ChildError(
                f"tensor {value.name!r} is {_type_name(value)}, {NOT_SERVED}", "invalid_signature"
            )
        if not tensor_type.HasField("shape"):
            raise ChildError(f"tensor {value.name!r} has no shape in the graph", "invalid_signature")
        shape = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim
        ]
        return {"name": value.name, "dtype": dtype, "shape": shape}

    return {
        "inputs": [spec(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [spec(v) for v in model.graph.output],
    }


NOT_SERVED = "which the platform does not serve: inputs and outputs are tensors of " + ", ".join(
    sorted(set(ONNX_DTYPES.values()) - {"bfloat16"})
)


def _type_name(value: Any) -> str:
    """What an ONNX value's type is, in words: ``a string tensor``, ``a sequence``..."""
    import onnx

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "optional"}.get(
            kind or "", "of no tensor type"
        )
    elem = value.type.tensor_type.elem_type
    try:
        name = onnx.TensorProto.DataType.Name(elem).lower()
    except ValueError:
        name = f"type {elem}"
    return f"a {name} tensor"


def inspect_onnx(path: str) -> dict[str, Any]:
    """The signature as served (a ZipMap's output as its tensor: ``unzip_maps``), and the class
    labels a ZipMap names when they say more than the class indices."""
    model = load_onnx_checked(path)
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    zipped = unzip_maps(model)
    labels = {k: v for k, v in zipped.items() if v != [str(i) for i in range(len(v))]}
    signature = onnx_signature(model)
    return {"signature": signature, "opsets": opsets, "ir_version": model.ir_version, "class_labels": labels}


def inspect_torchscript(path: str) -> dict[str, Any]:
    import torch

    try:
        module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ChildError(
            f"TorchScript archive cannot be opened: {str(exc).strip().splitlines()[0][:300]}",
            "invalid_artifact",
        ) from None
    try:
        schema = list(module.forward.schema.arguments)[1:]
    except (AttributeError, RuntimeError):
        raise ChildError("TorchScript module has no forward method", "invalid_artifact") from None
    parameters = sum(p.numel() for p in module.parameters())
    return {
        "forward_arguments": [a.name for a in schema],
        "forward_required": sum(not a.has_default_value() for a in schema),
        "parameters": int(parameters),
    }


def _torch_spec(name: str, value: Any) -> dict[str, Any]:
    import torch

    if not isinstance(value, torch.Tensor):
        raise ChildError(f"program input/output {name!r} is not a tensor", "invalid_signature")
    dtype = TORCH_DTYPES.get(str(value.dtype))
    if dtype is None:
        raise ChildError(f"tensor {name!r} has unsupported dtype {value.dtype}", "invalid_signature")
    shape = [int(d) if isinstance(d, int) else -1 for d in value.shape]
    return {"name": name, "dtype": dtype, "shape": shape}


def _dict_keys(out_spec: Any, count: int, inputs: list[str]) -> list[str] | None:
    """The keys of a program that answers a flat dict of ``count`` tensors, as its output names."""
    kind = getattr(out_spec, "type", None)  # None for a single tensor
    if not (isinstance(kind, type) and issubclass(kind, dict)) or len(out_spec.context) != count:
        return None
    if not all(child.is_leaf() for child in out_spec.children()):
        return None
    return key_names(list(out_spec.context), inputs)


def inspect_torch_export(path: str) -> dict[str, Any]:
    program = load_program(path)
    signature = program.graph_signature
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = [_torch_spec(name, placeholders[name].meta.get("val")) for name in signature.user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = output_node.args[0]
    user_outputs = list(signature.user_outputs)
    user_outputs = (
        _dict_keys(program.call_spec.out_spec, len(user_outputs), [i["name"] for i in inputs]) or user_outputs
    )
    outputs = []
    for index, node in enumerate(values[-len(user_outputs) :] if user_outputs else []):
        name = user_outputs[index] or f"output_{index}"
        outputs.append(_torch_spec(str(name), getattr(node, "meta", {}).get("val")))
    parameters = sum(p.numel() for p in program.state_dict.values())
    return {"signature": {"inputs": inputs, "outputs": outputs}, "parameters": int(parameters)}
