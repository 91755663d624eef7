"""Entry point of the sandboxed child: ``python -m registry.conversion COMMAND REQUEST RESULT``.

Imports no Django. Reads the JSON request, runs one command (``inspect`` or
``convert``), writes ``{"ok": true, ...}`` or ``{"ok": false, "error": ..., "code": ...}``
to RESULT. Progress goes to stdout as ``PROGRESS <text>`` lines.

The command modules are imported on demand: ``inspect`` (every upload) does not pay
for numpy, ONNX Runtime and the parity code that only ``convert`` needs.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.conversion.channel import ChildError

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _handler(command: str) -> Handler:
    """The function behind ``command``; KeyError for an unknown one (reported as a failure)."""
    if command == "inspect":
        from registry.conversion.inspection import inspect

        return inspect
    if command == "convert":
        from registry.conversion.convert import convert

        return convert
    raise KeyError(command)


def main(argv: list[str]) -> int:
    command, request_path, result_path = argv[1], Path(argv[2]), Path(argv[3])
    warnings.simplefilter("ignore")
    try:
        request = json.loads(request_path.read_text(encoding="utf-8"))
        handler = _handler(command)
        result = {"ok": True, **handler(request)}
    except ChildError as exc:
        result = {"ok": False, "error": exc.message, "code": exc.code, **exc.extra}
    except MemoryError:
        result = {"ok": False, "error": "ran out of memory", "code": "out_of_memory"}
    except Exception as exc:
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000], "code": "failed"}
    result_path.write_text(json.dumps(result, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
