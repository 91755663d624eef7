"""Recognise an uploaded artifact from its bytes, without executing anything. Pure.

Accepted: TorchScript archives (``torch.jit.save``), ``torch.export`` programs
(``.pt2``) and ONNX protobufs. Refused with a reason: every plain pickle
(``torch.save(model)`` included), archives whose pickles import anything beyond
tensor rebuilding and TorchScript classes, ``.pt2`` programs that would run anything but
tensor operators when loaded (``export_checks``), zip bombs and corrupt files.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InvalidArtifactError
from registry.export_checks import check_export_archive

ACCEPTED = (
    "TorchScript (torch.jit.save), torch.export programs (.pt2, torch.export.save) "
    "and ONNX models (with their external data file, if any)"
)
EXPORT_ADVICE = (
    "export the model with its code: torch.export.save(torch.export.export(model, example_inputs), "
    "'model.pt2'), torch.onnx.export(model, example_inputs, 'model.onnx') or "
    "torch.jit.save(torch.jit.trace(model, example_inputs), 'model.pt')"
)
_WEIGHTS_ONLY = {
    b"GGUF": "a GGUF file (llama.cpp weights)",
    b"\x89HDF\r\n\x1a\n": "an HDF5 file (a Keras .h5 model, or weights)",
    b"\x93NUMPY": "a NumPy array file",
}
"""Files users upload by mistake, known by their first bytes, and what they are."""
MAX_ZIP_ENTRIES = 20_000
MAX_PICKLE_BYTES = 64 * 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"

# What a TorchScript or tensor pickle may import. TorchScript's own loader resolves
# ``__torch__.*`` to compiled TorchScript classes, never to Python code.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_qtensor"),
    ("torch.jit._pickle", "build_intlist"),
    ("torch.jit._pickle", "build_tensorlist"),
    ("torch.jit._pickle", "build_doublelist"),
    ("torch.jit._pickle", "build_boollist"),
    ("torch.jit._pickle", "restore_type_tag"),
    ("builtins", "set"),
    ("__builtin__", "set"),
    ("builtins", "frozenset"),
    ("torch", "device"),
    ("torch", "Size"),
}
_TORCH_DTYPE_OR_STORAGE = re.compile(r"^(?:[A-Z][A-Za-z]*Storage|float\d*|bfloat16|int\d+|uint8|bool)$")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}


@dataclass(frozen=True)
class ArtifactKind:
    """What the bytes are: ``torchscript``, ``torch_export`` or ``onnx`` (the last one unverified)."""

    format: str
    detail: str = ""


def detect_format(path: Path, *, max_unpacked_bytes: int) -> ArtifactKind:
    """Classify the file at ``path`` or raise ``InvalidArtifactError`` saying why it is refused."""
    with path.open("rb") as handle:
        sample = handle.read(4096)  # what every check below reads, but a zip's
    if not sample:
        raise InvalidArtifactError(f"the file is empty; accepted formats: {ACCEPTED}")
    if sample.startswith(ZIP_MAGIC):
        return _detect_zip(path, max_unpacked_bytes=max_unpacked_bytes)
    if sample[0] == 0x80 and len(sample) > 1 and 2 <= sample[1] <= 5:
        raise InvalidArtifactError(
            "this is a Python pickle (for example torch.save(model) with the legacy format); pickles "
            f"are never loaded because loading one runs code. Accepted formats: {ACCEPTED}",
            code="pickle_refused",
        )
    what = _weights_only(sample, path.stat().st_size)
    if what:
        raise InvalidArtifactError(f"this is {what}, not a model that can run: {EXPORT_ADVICE}")
    if _looks_like_text(sample):
        raise InvalidArtifactError(f"this is a text file, not a model; accepted formats: {ACCEPTED}")
    # Anything else may be an ONNX protobuf; the sandboxed inspection decides.
    return ArtifactKind(format="onnx")


def _weights_only(sample: bytes, size: int) -> str | None:
    """What a file of weights without the model's code is, from its first bytes (safetensors: an
    8-byte little-endian header length, then a JSON header), or None."""
    for magic, what in _WEIGHTS_ONLY.items():
        if sample.startswith(magic):
            return what
    header = int.from_bytes(sample[:8], "little")
    if sample[8:10] in (b'{"', b"{}") and 2 <= header <= size - 8:
        return "a safetensors file (weights, as save_pretrained() writes them, without the model's code)"
    return None


def _looks_like_text(sample: bytes) -> bool:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(len(text), 1)


def _detect_zip(path: Path, *, max_unpacked_bytes: int) -> ArtifactKind:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidArtifactError(
            f"the file starts like a zip archive but is corrupt or truncated ({exc}); "
            f"accepted formats: {ACCEPTED}",
            code="corrupt_artifact",
        ) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise InvalidArtifactError(f"the archive has {len(infos)} entries, above {MAX_ZIP_ENTRIES}")
        unpacked = sum(info.file_size for info in infos)
        if unpacked > max_unpacked_bytes:
            raise InvalidArtifactError(
                f"the archive unpacks to {unpacked} bytes, above the limit of {max_unpacked_bytes}"
            )
        names = [info.filename for info in infos]
        kind = _classify_archive(names)
        try:
            broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            broken = f"({exc})"
        if broken is not None:
            raise InvalidArtifactError(
                f"the archive is corrupt: entry {broken} fails its checksum", code="corrupt_artifact"
            )
        for name in names:
            if name.endswith((".pkl", "sample_inputs/model.pt")):
                _scan_pickle_entry(archive, name)
        if kind.format == "torch_export":
            check_export_archive(archive, names)
        return kind


def _classify_archive(names: list[str]) -> ArtifactKind:
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1:
        raise InvalidArtifactError(
            f"this zip archive is not a PyTorch archive (several top-level folders); accepted formats: "
            f"{ACCEPTED}"
        )
    rest = {name.split("/", 1)[1] for name in names if "/" in name}
    if "data.pkl" in rest and any(r.startswith("code/") for r in rest) and "constants.pkl" in rest:
        return ArtifactKind(format="torchscript")
    if "archive_format" in rest and any(re.fullmatch(r"models/[^/]+\.json", r) for r in rest):
        return ArtifactKind(format="torch_export")
    if "data.pkl" in rest:
        raise InvalidArtifactError(
            "this is a pickled torch.save() checkpoint; loading it would run arbitrary code, so it is "
            f"refused: {EXPORT_ADVICE}",
            code="pickle_refused",
        )
    raise InvalidArtifactError(f"this zip archive is not a model archive; accepted formats: {ACCEPTED}")


def _scan_pickle_entry(archive: zipfile.ZipFile, name: str) -> None:
    info = archive.getinfo(name)
    if info.file_size > MAX_PICKLE_BYTES:
        raise InvalidArtifactError(f"archive entry {name} is {info.file_size} bytes, too large to check")
    data = archive.read(name)
    if data.startswith(ZIP_MAGIC):  # .pt2 sample inputs are a nested torch.save archive
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as nested:
                for inner in nested.namelist():
                    if inner.endswith(".pkl"):
                        _scan_pickle_entry(nested, inner)
        except zipfile.BadZipFile:
            raise InvalidArtifactError(f"archive entry {name} is a corrupt nested archive") from None
        return
    check_pickle_globals(data, where=name)


def check_pickle_globals(data: bytes, *, where: str) -> None:
    """Walk the pickle's opcodes (never executing them) and refuse any import off the allow-list."""
    strings: list[str] = []
    memo: dict[int, str] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name in _STRING_OPS and isinstance(arg, str | bytes):
                strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
            elif name in {"BINPUT", "LONG_BINPUT", "PUT"} and strings:
                memo[int(str(arg))] = strings[-1]
            elif name in {"BINGET", "LONG_BINGET", "GET"} and int(str(arg)) in memo:
                strings.append(memo[int(str(arg))])
            elif name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif name in {"GLOBAL", "INST"}:
                module, _, attr = str(arg).partition(" ")
                _check_global(module, attr, where)
            elif name == "STACK_GLOBAL":
                if len(strings) < 2:
                    raise InvalidArtifactError(f"{where}: a pickle import could not be checked; refused")
                _check_global(strings[-2], strings[-1], where)
            elif name in {"EXT1", "EXT2", "EXT4"}:
                raise InvalidArtifactError(f"{where}: pickle extension codes are refused")
    except InvalidArtifactError:
        raise
    except Exception as exc:  # pickletools raises ValueError and others on garbage
        raise InvalidArtifactError(f"{where}: corrupt pickle data ({exc})", code="corrupt_artifact") from None


def _check_global(module: str, attr: str, where: str) -> None:
    if module == "__torch__" or module.startswith("__torch__."):
        return
    if (module, attr) in _ALLOWED_GLOBALS:
        return
    if module == "torch" and _TORCH_DTYPE_OR_STORAGE.match(attr):
        return
    raise InvalidArtifactError(
        f"{where} imports {module}.{attr}, which would run Python code when loaded; refused. "
        f"Accepted formats: {ACCEPTED}",
        code="pickle_refused",
    )
