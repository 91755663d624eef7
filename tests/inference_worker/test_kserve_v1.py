"""KServe v1 instances as tensors: from json_body's buffer when they are one regular nesting of
numbers, from orjson's list otherwise, with the same tensor and the same refusals either way."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from inference_worker import json_body, kserve_v1
from inference_worker.config import Limits
from inference_worker.errors import InvalidRequest
from inference_worker.json_body import NumericData
from inference_worker.runtime import ModelSignature, TensorSpec

IMAGE = TensorSpec("image", "FP32", (-1, 3, 32, 32))
SIGNATURE = ModelSignature((IMAGE,), (TensorSpec("p", "FP32", (-1, 10)),), batched=True)
LIMITS = Limits()


def both_ways(body: bytes, signature: ModelSignature = SIGNATURE) -> list[object]:
    """The outcome from json_body's header and from orjson's: tensors' bytes, or the refusal."""
    outcomes: list[object] = []
    for header in (json_body.loads(body), orjson.loads(body)):
        try:
            tensors = kserve_v1.inputs(header["instances"], signature, LIMITS)
        except InvalidRequest as error:
            outcomes.append(str(error))
        else:
            outcomes.append({name: (t.dtype.str, t.shape, t.tobytes()) for name, t in tensors.items()})
    return outcomes


def test_regular_float_instances_become_the_tensor_from_their_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    body = orjson.dumps({"instances": images.tolist()})
    instances = json_body.loads(body)["instances"]
    assert isinstance(instances, NumericData)
    with monkeypatch.context() as patch:  # the buffer alone makes the tensor: no list is asked for
        patch.setattr(NumericData, "as_list", lambda self: pytest.fail("the list path was taken"))
        tensor = kserve_v1.inputs(instances, SIGNATURE, LIMITS)
    assert tensor["image"].tobytes() == images.tobytes()
    fast, old = both_ways(body)
    assert fast == old == {"image": ("<f4", (2, 3, 32, 32), images.tobytes())}


@pytest.mark.parametrize(
    ("instances", "signature"),
    [
        (np.zeros((2, 3, 32)).tolist(), SIGNATURE),  # another rank: the list path words it
        (np.zeros((2, 3, 32, 32)).tolist(), ModelSignature((IMAGE,), (), batched=False)),  # two, no batch
        (
            np.zeros((2, 3, 32, 32)).tolist(),
            ModelSignature((TensorSpec("image", "INT32", (-1, 3, 32, 32)),), (), batched=True),
        ),
        (
            np.zeros((2, 3, 32, 32)).tolist(),
            ModelSignature((IMAGE, TensorSpec("mask", "FP32", (-1, 1))), (), batched=True),
        ),
    ],
    ids=["another rank", "no batch dimension", "integer input", "two inputs"],
)
def test_instances_the_buffer_does_not_fit_take_the_list_path_with_its_answer(
    instances: list[object], signature: ModelSignature
) -> None:
    fast, old = both_ways(orjson.dumps({"instances": instances}), signature)
    assert fast == old
