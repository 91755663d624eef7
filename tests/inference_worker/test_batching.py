"""Dynamic batching, backpressure and timeouts on real workers with real ONNX Runtime."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np

from inference_worker.config import DynamicBatching
from tests.support.onnx_models import reference
from tests.support.workers import (
    LONGEST_DELAY_US,
    RunningWorker,
    make_config,
    occupy,
    post_square,
    running,
    v2_body,
    wait_queued,
)


def test_concurrent_requests_form_one_batch(models: SimpleNamespace) -> None:
    config = make_config(
        models.mlp,
        batching=DynamicBatching(max_queue_delay_microseconds=LONGEST_DELAY_US, preferred_batch_sizes=(4,)),
    )
    xs = [np.full((1, 4), float(i), np.float32) for i in range(4)]
    with running(config) as worker, ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda x: httpx.post(worker.url + "/v2/models/mlp/infer", json=v2_body({"x": x})), xs)
        )
        assert [r.status_code for r in responses] == [200] * 4
        assert worker.metric("kiln_worker_batches_total") == 1
        assert worker.metric("kiln_worker_inferences_total") == 4
        assert worker.metric("kiln_worker_batch_size_bucket", le="4.0") == 1
        assert worker.metric("kiln_worker_batch_size_bucket", le="2.0") == 0
        for x, response in zip(xs, responses, strict=True):
            got = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(1, 3)
            np.testing.assert_allclose(got, reference(models.mlp, {"x": x})[0], rtol=1e-5)


def test_multi_row_requests_are_packed_into_one_batch_and_split_back(models: SimpleNamespace) -> None:
    config = make_config(
        models.mlp,
        batching=DynamicBatching(max_queue_delay_microseconds=LONGEST_DELAY_US, preferred_batch_sizes=(6,)),
    )
    xs = [np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32) for rows in (1, 2, 3)]
    with running(config) as worker, ThreadPoolExecutor(3) as pool:
        responses = list(
            pool.map(lambda x: httpx.post(worker.url + "/v2/models/mlp/infer", json=v2_body({"x": x})), xs)
        )
        assert worker.metric("kiln_worker_batches_total") == 1
        assert worker.metric("kiln_worker_inferences_total") == 6
        for x, response in zip(xs, responses, strict=True):
            output = response.json()["outputs"][0]
            assert output["shape"] == [len(x), 3]
            got = np.asarray(output["data"], np.float32).reshape(len(x), 3)
            np.testing.assert_allclose(got, reference(models.mlp, {"x": x})[0], rtol=1e-5)


def test_a_lone_request_is_served_once_the_queue_delay_has_passed(models: SimpleNamespace) -> None:
    config = make_config(models.mlp, batching=DynamicBatching(max_queue_delay_microseconds=200_000))
    with running(config) as worker:
        started = time.monotonic()
        response = httpx.post(
            worker.url + "/v2/models/mlp/infer", json=v2_body({"x": np.ones((1, 4), np.float32)})
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert 0.2 <= elapsed < 5.0
        assert worker.metric("kiln_worker_queue_duration_seconds_bucket", le="0.15") == 0


def test_a_full_queue_answers_503_at_once(models: SimpleNamespace) -> None:
    config = make_config(models.square, "square", batching=DynamicBatching(max_queue_size=1))
    overloaded = {"error": "server overloaded: the request queue is full, retry later"}
    answers: list[httpx.Response] = []
    with running(config) as worker, ThreadPoolExecutor(2) as pool:
        # One request runs, one waits in the queue of one, the next is refused. On a busy machine the
        # running one may end before the third arrives (then all three are served): try again.
        deadline = time.monotonic() + 120
        while not any(a.status_code == 503 for a in answers) and time.monotonic() < deadline:
            running_request = occupy(pool, worker)
            queued = pool.submit(post_square, worker, 8)
            wait_queued(worker, queued)
            answers.append(post_square(worker, 8))
            answers += [running_request.result(), queued.result()]
        refused = [a for a in answers if a.status_code == 503]
        assert refused, "no request was refused while the queue was full"
        assert all(a.json() == overloaded for a in refused)
        assert {a.status_code for a in answers} <= {200, 503}
        assert worker.metric("kiln_worker_requests_total", outcome="overloaded") == len(refused)


def test_a_request_past_its_timeout_gets_504_and_is_not_run(models: SimpleNamespace) -> None:
    config = make_config(
        models.square, "square", batching=DynamicBatching(default_timeout_microseconds=50_000)
    )
    with running(config) as worker, ThreadPoolExecutor(2) as pool:
        running_request = occupy(pool, worker)
        late = post_square(worker, 8)
        assert late.status_code == 504
        assert late.json() == {"error": "request timed out in the queue before it could run"}
        assert running_request.result().status_code == 200
        assert worker.metric("kiln_worker_inferences_total") == 1


def test_a_request_may_lower_its_timeout_but_not_raise_it(models: SimpleNamespace) -> None:
    with running(make_config(models.square, "square")) as worker, ThreadPoolExecutor(2) as pool:
        running_request = occupy(pool, worker)
        lowered = post_square(worker, 8, parameters={"timeout": 50_000})
        assert lowered.status_code == 504
        running_request.result()
    config = make_config(
        models.square, "square", batching=DynamicBatching(default_timeout_microseconds=50_000)
    )
    with running(config) as worker, ThreadPoolExecutor(2) as pool:
        running_request = occupy(pool, worker)
        raised = post_square(worker, 8, parameters={"timeout": 60_000_000})
        assert raised.status_code == 504
        running_request.result()


def test_requests_keep_flowing_while_one_connection_waits(mlp_worker: RunningWorker) -> None:
    barrier = threading.Barrier(8)

    def call(i: int) -> int:
        barrier.wait()
        x = np.full((1, 4), float(i), np.float32)
        return httpx.post(mlp_worker.url + "/v2/models/mlp/infer", json=v2_body({"x": x})).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(8))) == [200] * 8
