"""Triton Inference Server via PyTriton, as a peer for peer_bench.py (run with the peers' venv).

    /work/peers-venv/bin/python bench/triton_peer.py --model cnn.onnx --name cnn \\
        --http-port 8000 --grpc-port 8001 --metrics-port 8002

Triton's own C++ front ends (HTTP with JSON and the binary tensor extension,
gRPC) and its dynamic batcher (max batch 32, no queue delay: the worker's
defaults), in front of a PyTriton inference callable that runs ONNX Runtime
with intra_op_num_threads=2 (as every peer does). PyTriton bundles
``tritonserver``; it is never a dependency of Kiln (requirements.lock does not
name it): peer_bench.py runs this file with ``--peers-python``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np


def serve(model: Path, name: str, http_port: int, grpc_port: int, metrics_port: int, max_batch: int) -> None:
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    # Triton's Python backend stub embeds libpython: the one of this interpreter, not a system
    # libpython3.11 of another patch release (its C modules would not match this stdlib).
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    sample_shape = tuple(session.get_inputs()[0].shape[1:])
    output_shape = tuple(session.get_outputs()[0].shape[1:])

    @batch
    def infer(input: np.ndarray) -> dict[str, Any]:  # noqa: A002 - the model's input name
        return {"output": session.run(None, {"input": input})[0]}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        allow_metrics=True,  # peer_bench.py reads the mean batch from nv_inference_(exec_)count
        allow_gpu_metrics=False,
        allow_cpu_metrics=False,
        log_verbose=0,
    )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # leaves the with block: PyTriton stops tritonserver and its proxy

    signal.signal(signal.SIGTERM, stop)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=name,
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=sample_shape)],
            outputs=[Tensor(name="output", dtype=np.float32, shape=output_shape)],
            config=ModelConfig(
                max_batch_size=max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=0)
            ),
            strict=False,
        )
        with contextlib.suppress(KeyboardInterrupt):
            triton.serve()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()
    serve(args.model, args.name, args.http_port, args.grpc_port, args.metrics_port, args.max_batch)


if __name__ == "__main__":
    main()
