"""The system shared memory extension through a real gateway: refused with a message saying why.

Shared memory is for clients on a worker's own host; the gateway answers its routes 501 and its
RPCs ``UNIMPLEMENTED``, and an inference naming a region reaches a worker that (like every
worker started without ``--system-shared-memory on``) refuses it with a 400.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inference_worker.gateway.shared_memory import MESSAGE
from tests.support.gateway import applied, classifier, gateway, publish, routing_key, table, worker


def test_the_gateway_refuses_the_extension_and_its_worker_refuses_regions_in_requests(
    tmp_path: Path,
) -> None:
    with (
        worker(classifier(tmp_path / "clf.onnx", seed=1), grpc=True) as w1,
        routing_key() as (key, redis),
        gateway(key) as gw,
    ):
        publish(redis, key, table(1, {"fraud": [("a", 100, 0, [w1])]}))
        applied(gw.url, 1)
        http = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(gw.grpc)

        with pytest.raises(InferenceServerException) as over_http:
            http.register_system_shared_memory("in", "/kiln-anything", 32)
        with pytest.raises(InferenceServerException) as status:
            http.get_system_shared_memory_status()
        with pytest.raises(InferenceServerException) as over_grpc:
            grpc.register_system_shared_memory("in", "/kiln-anything", 32)
        tensor = httpclient.InferInput("x", [2, 4], "FP32")
        tensor.set_shared_memory("in", 32)
        with pytest.raises(InferenceServerException) as infer:
            http.infer("fraud", [tensor])
        plain = httpclient.InferInput("x", [2, 4], "FP32")
        plain.set_data_from_numpy(np.ones((2, 4), np.float32))
        answer = http.infer("fraud", [plain])

    assert (over_http.value.status(), over_http.value.message()) == ("501", MESSAGE)
    assert status.value.status() == "501"
    assert (over_grpc.value.status(), over_grpc.value.message()) == ("StatusCode.UNIMPLEMENTED", MESSAGE)
    assert infer.value.status() == "400"
    assert infer.value.message().startswith("system shared memory is off on this worker")
    assert answer.as_numpy("y").shape == (2, 3)
