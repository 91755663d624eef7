"""Which file holds an ONNX model's external data, for ``kiln upload``: read from the model's
protobuf bytes, without the onnx package (the client needs only httpx)."""

from __future__ import annotations

import mmap
from pathlib import Path

from kiln_client.api import UsageError


def external_data_for(path: Path, given: str | None) -> Path | None:
    """The ONNX model's external data file: ``--external-data``, else the one file the model names
    as its tensors' ``location`` when it lies beside the model (torch.onnx.export writes
    ``model.onnx.data``; other exporters ``model.onnx_data`` or ``weights.bin``)."""
    if given:
        external = Path(given)
        if not external.is_file():
            raise UsageError(f"--external-data {given}: no such file")
        return external
    if path.suffix.lower() != ".onnx" or not path.stat().st_size:
        return None
    named = _data_locations(path)
    if len(named) != 1:
        return None  # none, or several files (the platform says it takes one)
    beside = path.parent / next(iter(named))  # a plain name: beside the model
    return beside if beside.is_file() else None


_LOCATION = b"\n\x08location\x12"
"""An ONNX ``StringStringEntryProto`` whose key is ``location``, up to its value's length."""


def _data_locations(path: Path) -> set[str]:
    """The file names an ONNX model gives as its external data's ``location`` (read from the
    protobuf bytes, without the onnx package): plain names only, no directories."""
    names: set[str] = set()
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        at = mapped.find(_LOCATION)
        while at >= 0 and len(names) < 16:
            start = at + len(_LOCATION)
            size, shift = 0, 0
            while start < len(mapped) and shift < 35:
                byte = mapped[start]
                size |= (byte & 0x7F) << shift
                start, shift = start + 1, shift + 7
                if byte < 0x80:
                    break
            name = bytes(mapped[start : start + size]).decode("utf-8", "replace")
            if 0 < size <= 4096 and name == Path(name).name and name not in (".", ".."):
                names.add(name)
            at = mapped.find(_LOCATION, start)
    return names
