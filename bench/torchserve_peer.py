"""TorchServe as a peer for peer_bench.py: this file is both the launcher and the model's handler.

    /work/ts-venv/bin/python bench/torchserve_peer.py --model cnn.onnx --name cnn --port 8080

The launcher archives the ONNX file with this file as its handler
(torch-model-archiver), then runs TorchServe in the foreground (Java 17
frontend, one Python backend worker, batch_size 32 with a 5 ms max batch
delay) on ``--port`` and two more ports after it for management and metrics.
The handler runs ONNX Runtime with intra_op_num_threads=2 (as every peer
does) on the batch TorchServe hands it: TorchServe has already decoded each
JSON body with the standard library; the handler stacks the v2 ``inputs``
and answers a v2 JSON response per request. TorchServe speaks its own REST
path (``/predictions/<name>``) and neither the v2 binary extension nor the v2
gRPC service, so it is measured with HTTP JSON only. Never a Kiln dependency:
peer_bench.py runs this file with ``--torchserve-python``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class Handler:
    """TorchServe's custom handler protocol: ``initialize(context)``, then ``handle(batch, context)``."""

    def __init__(self) -> None:
        self.session: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        import onnxruntime as ort

        model_dir = Path(context.system_properties["model_dir"])
        serialized = context.manifest["model"]["serializedFile"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(
            str(model_dir / serialized), options, providers=["CPUExecutionProvider"]
        )
        self.initialized = True

    def handle(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        tensors = []
        for request in batch:
            payload: Any = request.get("body") or request.get("data")
            if isinstance(payload, bytes | bytearray):
                payload = json.loads(payload)
            tensor = payload["inputs"][0]
            tensors.append(np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))
        y = self.session.run(None, {"input": np.concatenate(tensors)})[0]
        out, offset = [], 0
        for x in tensors:
            rows = y[offset : offset + len(x)]
            offset += len(x)
            output = {"name": "output", "datatype": "FP32", "shape": list(rows.shape)}
            out.append({"outputs": [{**output, "data": rows.reshape(-1).tolist()}]})
        return out


_service = Handler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    """The module-level entry TorchServe calls (``data`` is None on the first, initializing call)."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)


CONFIG = """inference_address=http://127.0.0.1:{port}
management_address=http://127.0.0.1:{management}
metrics_address=http://127.0.0.1:{metrics}
disable_token_authorization=true
enable_metrics_api=false
default_workers_per_model=1
job_queue_size=1000
install_py_dep_per_model=false
model_store={store}
load_models={name}.mar
models={{"{name}": {{"1.0": {{"defaultVersion": true, "marName": "{name}.mar", "minWorkers": 1, \
"maxWorkers": 1, "batchSize": 32, "maxBatchDelay": 5, "responseTimeout": 120}}}}}}
"""


def serve(model: Path, name: str, port: int) -> int:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        handler = Path(tmp) / "ts_onnx_handler.py"
        shutil.copy(__file__, handler)
        subprocess.run(
            [
                str(bin_dir / "torch-model-archiver"),
                "--model-name",
                name,
                "--version",
                "1.0",
                "--serialized-file",
                str(model),
                "--handler",
                str(handler),
                "--export-path",
                str(store),
            ],
            check=True,
        )
        config = Path(tmp) / "config.properties"
        config.write_text(
            CONFIG.format(port=port, management=port + 1, metrics=port + 2, store=store, name=name)
        )
        server = subprocess.Popen(
            [
                str(bin_dir / "torchserve"),
                "--start",
                "--foreground",
                "--ncs",
                "--disable-token-auth",
                "--model-store",
                str(store),
                "--ts-config",
                str(config),
            ],
            cwd=tmp,
            start_new_session=True,  # the launcher, its JVM and the backend worker: one process group
        )

        def stop(signum: int, frame: object) -> None:
            os.killpg(server.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            return server.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):  # the backend worker may outlive the JVM
                os.killpg(server.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True, help="inference; management and metrics: +1, +2")
    args = parser.parse_args()
    raise SystemExit(serve(args.model, args.name, args.port))


if __name__ == "__main__":
    main()
