"""What a ``torch.export`` archive (``.pt2``) may hold before ``torch.export.load`` sees it. Pure.

Loading a ``.pt2`` is not inert: PyTorch unpickles the weights and constants marked ``use_pickle``
and every opaque or TorchScript object (``opaque_obj_*``, ``custom_obj_*``), hands each symbolic
expression (``expr_str``, the range constraints) to ``sympy.sympify`` (which evaluates Python),
compiles the program's ``guards_code`` into a function, and resolves each node's ``target`` by
attribute lookup from the ``torch`` module (``torch.os.system`` resolves), which running the
program then calls. So an archive is read here first, and refused unless:

- every weight and constant is raw tensor bytes (no pickled payload, no legacy ``<model>.pt``);
- every node target is an operator: ``torch.ops.{aten,prims,higher_order}.<op>[.<overload>]``
  (no dunder but ATen's bitwise ``__and__``, ``__or__``...),
  an ``_operator`` arithmetic or comparison function, a ``math`` function, or a ``torch.sym_*``
  helper;
- every symbolic expression and guard is an expression over symbols, numbers and the sympy
  functions shapes use: no attribute lookups, no calls but of those functions, no other names;
- the program's input and output trees name no module to import (a ``defaultdict``'s factory, a
  context's enum: PyTorch imports both by the name the file gives).
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from typing import Any

from registry.conversion.program_trees import SPEC_KEYS, InvalidTreeError, json_fields, spec_nodes
from registry.errors import InvalidArtifactError

MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_EXPRESSION_CHARS = 10_000

_NAME = r"(?!__)[A-Za-z_][A-Za-z0-9_]*"
"""An operator or overload name (``_to_copy``, ``default``): never a dunder attribute."""
_BITWISE = r"__i?(?:and|or|xor|lshift|rshift)__"
"""The dunder names ATen gives its bitwise operators (``aten.__and__.Tensor``, which ``mask & mask``
exports as, in Hugging Face models' attention masks), named one by one: no other dunder resolves."""
_OPERATOR = re.compile(rf"torch\.ops\.(?:aten|prims|higher_order)\.(?:{_NAME}|{_BITWISE})(?:\.{_NAME})?")
_REFUSED_OPS = {"torch.ops.aten.from_file", "torch.ops.aten.from_file.default"}
"""Operators that touch the platform's files."""
_PYTHON_OPERATORS = frozenset(
    [
        "getitem",
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "neg",
        "pos",
        "abs",
        "invert",
        "not_",
        "and_",
        "or_",
        "xor",
        "lshift",
        "rshift",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
    ]
)
_TORCH_HELPER = re.compile(r"torch\.(?:_?sym_[a-z_]+|_check(?:_[a-z_]+)?|_assert)")
_MATH = re.compile(r"math\.[a-z][a-z0-9_]*")

_SYMBOL = re.compile(r"[a-z]{1,4}\d+")
"""The names torch gives shape symbols (``s0``, ``u3``...)."""
_SYMPY_FUNCTIONS = frozenset(
    [
        "Symbol",
        "Integer",
        "Float",
        "Rational",
        "Add",
        "Mul",
        "Pow",
        "Max",
        "Min",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        "And",
        "Or",
        "Not",
        "BooleanTrue",
        "BooleanFalse",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "IntTrueDiv",
        "FloatTrueDiv",
        "LShift",
        "RShift",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "FloatPow",
        "PowByNatural",
        "Identity",
        "OpaqueUnaryFn_sqrt",
        "OpaqueUnaryFn_exp",
        "OpaqueUnaryFn_log",
        "BitwiseFn_bitwise_and",
        "BitwiseFn_bitwise_or",
        "floor",
        "ceiling",
        "sqrt",
    ]
)
_SYMPY_CONSTANTS = frozenset(["oo", "zoo", "nan", "true", "false", "True", "False", "int_oo"])
_SHAPE_METHODS = frozenset(["size", "stride", "storage_offset", "dim", "numel"])
_ARITHMETIC = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator, ast.unaryop,
    ast.boolop, ast.cmpop, ast.Load, ast.Tuple,
)  # fmt: skip


def check_export_archive(archive: zipfile.ZipFile, names: list[str]) -> None:
    """Refuse a ``.pt2`` whose loading or running would execute anything but tensor operators."""
    for name in names:
        folder, _, base = name.rpartition("/")
        if folder.endswith(("data/weights", "data/constants")) and base.endswith(".pt"):
            raise _refused(f"{name} is a pickled (legacy format) payload; save with torch.export.save()")
        if folder.endswith("data/constants") and base.startswith(("opaque_obj", "custom_obj")):
            raise _refused(f"{name} is a pickled Python or TorchScript object; only tensors are accepted")
        if base.endswith("_config.json") and folder.endswith(("data/weights", "data/constants")):
            _check_payloads(name, _json(archive, name))
        elif folder.endswith("models") and base.endswith(".json"):
            _check_program(name, _json(archive, name))


def _json(archive: zipfile.ZipFile, name: str) -> Any:
    if archive.getinfo(name).file_size > MAX_JSON_BYTES:
        raise InvalidArtifactError(f"archive entry {name} is too large to check")
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError):
        raise InvalidArtifactError(
            f"archive entry {name} is not valid JSON", code="corrupt_artifact"
        ) from None


def _check_payloads(name: str, config: Any) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InvalidArtifactError(f"archive entry {name} is not a payload config", code="corrupt_artifact")
    for fqn, payload in entries.items():
        if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
            raise _refused(f"{name}: {fqn!r} is stored pickled; only raw tensors are accepted")
        path = payload.get("path_name")
        if not isinstance(path, str) or not re.fullmatch(r"(?:weight|tensor)_\d+", path):
            raise _refused(f"{name}: {fqn!r} is stored as {path!r}, not as a tensor")


def _check_program(name: str, program: Any) -> None:
    if not isinstance(program, dict):
        raise InvalidArtifactError(f"archive entry {name} is not a program", code="corrupt_artifact")
    for key, value in json_fields(program):
        if key == "target" and isinstance(value, str):
            _check_target(name, value)
        elif key == "expr_str":
            _check_expression(name, value, guard=False)
        elif key == "guards_code":
            for guard in value if isinstance(value, list) else [value]:
                _check_expression(name, guard, guard=True)
        elif key == "range_constraints" and isinstance(value, dict):
            for expression in value:
                _check_expression(name, expression, guard=False)
        elif key in SPEC_KEYS:
            _check_tree_spec(name, value)


def _check_tree_spec(name: str, spec: Any) -> None:
    """An input or output tree whose loading imports nothing: PyTorch reads a ``defaultdict``'s
    factory by importing the module the file names, and any JSON context's ``{"__enum__": ...,
    "fqn": "module:Class"}`` likewise. Types PyTorch does not know are left to the loader (they
    fail, or ``program_trees`` reads them as dicts)."""
    try:
        for node_type, context in spec_nodes(spec):
            if node_type == "collections.defaultdict":
                raise _refused(f"{name}: a defaultdict in the program's inputs or outputs names a module")
            if any(key == "__enum__" for key, _ in json_fields(context)):
                raise _refused(f"{name}: an enum in the program's inputs or outputs names a module")
    except InvalidTreeError as exc:
        raise InvalidArtifactError(f"archive entry {name}: {exc}", code="corrupt_artifact") from None


def _check_target(name: str, target: str) -> None:
    module, _, function = target.partition(".")
    if (
        (_OPERATOR.fullmatch(target) and target not in _REFUSED_OPS)
        or (module == "_operator" and function in _PYTHON_OPERATORS)
        or _TORCH_HELPER.fullmatch(target)
        or _MATH.fullmatch(target)
    ):
        return
    raise _refused(f"{name}: the node target {target[:200]!r} is not a tensor operator")


def _check_expression(name: str, text: Any, *, guard: bool) -> None:
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        raise _refused(f"{name}: a symbolic expression is not a string of at most {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _refused(f"{name}: {text[:200]!r} is not an expression") from None
    # A guard is compiled into Python with itself quoted in a message: its only strings are keys.
    keys = {id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript)} if guard else set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and guard and id(node) not in keys:
            raise _refused(f"{name}: {text[:200]!r} is not an expression over shapes")
        if not _allowed(node, guard):
            raise _refused(f"{name}: {text[:200]!r} is not an expression over shapes")


def _allowed(node: ast.AST, guard: bool) -> bool:
    if isinstance(node, _ARITHMETIC):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float | bool | str) or node.value is None
    if isinstance(node, ast.Name):
        return (
            bool(_SYMBOL.fullmatch(node.id))
            or node.id in _SYMPY_FUNCTIONS | _SYMPY_CONSTANTS
            or (guard and node.id in ("L", "math"))
        )
    if isinstance(node, ast.keyword):
        return node.arg is not None and node.arg.isidentifier() and not node.arg.startswith("_")
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id in _SYMPY_FUNCTIONS
        if not guard or not isinstance(func, ast.Attribute):
            return False
        if isinstance(func.value, ast.Name) and func.value.id == "math":
            return True  # math.floor(...): the attribute is checked on its own
        return func.attr in _SHAPE_METHODS and not node.args and not node.keywords
    if isinstance(node, ast.Attribute):  # guards only: L[...].size(), math.floor(...)
        on_math = isinstance(node.value, ast.Name) and node.value.id == "math"
        math_function = on_math and _MATH.fullmatch(f"math.{node.attr}") is not None
        return guard and (node.attr in _SHAPE_METHODS or math_function)
    if isinstance(node, ast.Subscript):  # guards only: L['x'][0].size()[1]
        key = node.slice
        return guard and isinstance(key, ast.Constant) and _plain_key(key.value)
    return False


def _plain_key(value: object) -> bool:
    return isinstance(value, int) or (
        isinstance(value, str) and bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value))
    )


def _refused(reason: str) -> InvalidArtifactError:
    return InvalidArtifactError(
        f"{reason}: loading this torch.export program could run code, so it is refused",
        code="unsafe_program",
    )
