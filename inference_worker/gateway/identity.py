"""What the gateway says it is: its server metadata, over HTTP (``GET /v2``) and gRPC alike."""

from __future__ import annotations

from inference_worker import __version__

NAME = "kiln-gateway"
EXTENSIONS = ("binary_tensor_data", "classification", "model_stream_infer", "kserve_v1_predict")
"""The protocol extensions it forwards to the workers; system shared memory is each worker's own
(the gateway refuses it: ``shared_memory``)."""


def server_metadata() -> dict[str, object]:
    return {"name": NAME, "version": __version__, "extensions": list(EXTENSIONS)}
