"""One request that the model refuses fails alone: its batch runs again half by half, so the
requests batched with it get their answers (a real worker, ONNX Runtime, HTTP and gRPC)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from inference_worker.config import DynamicBatching
from tests.support import onnx_models
from tests.support.workers import RunningWorker, make_config, running, v2_body


@pytest.fixture(scope="module")
def lookup_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    path = onnx_models.lookup(tmp_path_factory.mktemp("lookup") / "lookup.onnx")
    # A 20 ms window gathers the concurrent requests into batches.
    batching = DynamicBatching(max_batch_size=16, max_queue_delay_microseconds=20_000)
    with running(make_config(path, "lookup", batching=batching)) as handle:
        yield handle


def _tokens(index: int, poisoned: bool) -> np.ndarray:
    return np.array([[index % 10, 12 if poisoned else 3, 1]], dtype=np.int64)


def test_a_refused_request_gets_a_400_and_the_requests_batched_with_it_their_answers(
    lookup_worker: RunningWorker,
) -> None:
    batches_before = lookup_worker.metric("kiln_worker_batch_size_count")
    poisoned = {3, 17, 18, 30}

    def call(index: int) -> httpx.Response:
        body = v2_body({"tokens": _tokens(index, index in poisoned)})
        return httpx.post(f"{lookup_worker.url}/v2/models/lookup/infer", json=body, timeout=30)

    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(call, range(40)))

    for index, answer in enumerate(answers):
        if index in poisoned:
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"].startswith("the model refused the input: ")
            assert "idx=12" in answer.json()["error"]
        else:
            assert answer.status_code == 200, answer.text
            want = onnx_models.LOOKUP_TABLE[_tokens(index, False)[0]]
            got = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_array_equal(got, want.ravel())
    assert lookup_worker.metric("kiln_worker_batch_size_count") - batches_before < 40  # batches formed


def test_over_grpc_a_refused_request_is_invalid_argument_and_its_neighbours_are_answered(
    lookup_worker: RunningWorker,
) -> None:
    client = grpcclient.InferenceServerClient(lookup_worker.grpc_target)

    def call(index: int) -> np.ndarray | str:
        tokens = _tokens(index, index % 5 == 0)
        tensor = grpcclient.InferInput("tokens", list(tokens.shape), "INT64")
        tensor.set_data_from_numpy(tokens)
        try:
            return client.infer("lookup", [tensor]).as_numpy("y")  # type: ignore[no-any-return]
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, range(20)))
    client.close()

    for index, answer in enumerate(answers):
        if index % 5 == 0:
            assert isinstance(answer, str)
            assert answer.startswith("StatusCode.INVALID_ARGUMENT the model refused the input: "), answer
        else:
            assert isinstance(answer, np.ndarray)
            np.testing.assert_array_equal(answer[0], onnx_models.LOOKUP_TABLE[_tokens(index, False)[0]])


def test_a_batch_of_refused_requests_halves_down_to_each_request_s_own_400(tmp_path: Path) -> None:
    path = onnx_models.lookup(tmp_path / "lookup.onnx")
    batching = DynamicBatching(max_batch_size=8, max_queue_delay_microseconds=20_000)
    with running(make_config(path, "lookup", batching=batching)) as worker:

        def call(index: int) -> httpx.Response:
            body = v2_body({"tokens": _tokens(index, True)})
            return httpx.post(f"{worker.url}/v2/models/lookup/infer", json=body, timeout=30)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(8)))
        batches = worker.metric("kiln_worker_batch_size_count")

    assert [answer.status_code for answer in answers] == [400] * 8
    assert batches < 8  # they were batched, and each was still told on its own
