"""Hostile use of the system shared memory extension: each refusal a clear 4xx / INVALID_ARGUMENT.

Clients are untrusted: a key must name a POSIX shared memory object of the worker's own user, never
a path, a link, a FIFO or another user's object; windows stay inside their object and region; sizes
match shapes; the worker holds a bounded number of regions and bytes; an object shrunk behind the
worker's back is a 400, not a crash. After every refusal the worker still serves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from tritonclient.utils import InferenceServerException

from inference_worker.config import Limits
from tests.support import onnx_models
from tests.support.shm import DEV_SHM, raw_object, shm_client, unique_key, with_shared_memory
from tests.support.workers import RunningWorker, make_config, running

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.mlp(tmp_path_factory.mktemp("models") / "mlp.onnx")


@pytest.fixture(scope="module")
def worker(mlp_path: Path) -> Iterator[RunningWorker]:
    config = with_shared_memory(make_config(mlp_path), max_regions=3, max_bytes=4096)
    with running(config) as handle:
        yield handle


@pytest.fixture
def http(worker: RunningWorker) -> Iterator[http_client.InferenceServerClient]:
    with shm_client(worker) as client:
        yield client
        assert_still_serving(client)


@pytest.fixture
def x_region(http: http_client.InferenceServerClient) -> Iterator[str]:
    """A region "x" holding ``X`` (32 bytes) in an object of 64 bytes."""
    with raw_object("x", X.tobytes() + bytes(32)) as (key, _):
        http.register_system_shared_memory("x", key, 64)
        yield key


def assert_still_serving(client: http_client.InferenceServerClient) -> None:
    tensor = http_client.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(X)
    assert client.infer("mlp", [tensor]).as_numpy("y").shape == (2, 3)


def refusal(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


def infer_from(client: Any, module: Any, region: str, byte_size: int, offset: int = 0, **extra: Any) -> Any:
    tensor = module.InferInput("x", [2, 4], "FP32")
    tensor.set_shared_memory(region, byte_size, offset=offset)
    return client.infer("mlp", [tensor], **extra)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("../etc/passwd", "is not a POSIX shared memory name"),
        ("/../../etc/passwd", "is not a POSIX shared memory name"),
        ("/etc/passwd", "is not a POSIX shared memory name"),
        ("/..", "is not a POSIX shared memory name"),
        ("", "is not a POSIX shared memory name"),
        ("/kiln-test-no-such-object", "no shared memory object '/kiln-test-no-such-object' exists"),
    ],
)
def test_a_key_that_is_not_an_existing_posix_name_is_refused(
    http: http_client.InferenceServerClient, key: str, message: str
) -> None:
    error = refusal(http.register_system_shared_memory, "r", key, 16)

    assert (error.status(), message in error.message()) == ("400", True), error.message()
    assert http.get_system_shared_memory_status() == []


def test_links_fifos_directories_and_other_users_objects_are_refused(
    http: http_client.InferenceServerClient,
) -> None:
    made: list[Path] = []
    try:
        link = DEV_SHM / unique_key("link").lstrip("/")
        link.symlink_to("/etc/hostname")
        fifo = DEV_SHM / unique_key("fifo").lstrip("/")
        os.mkfifo(fifo, 0o600)
        folder = DEV_SHM / unique_key("dir").lstrip("/")
        folder.mkdir()
        theirs = DEV_SHM / unique_key("theirs").lstrip("/")
        theirs.write_bytes(bytes(64))
        os.chown(theirs, 65534, 65534)
        made = [link, fifo, folder, theirs]
        answers = {
            path.name: refusal(http.register_system_shared_memory, path.name, "/" + path.name, 16).message()
            for path in made
        }
    finally:
        for path in made:
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()

    assert answers[link.name].endswith("is a symbolic link, not a shared memory object")
    assert answers[fifo.name].endswith("is not a shared memory object")
    assert "Is a directory" in answers[folder.name]
    assert "belongs to another user" in answers[theirs.name]
    assert http.get_system_shared_memory_status() == []


def test_a_window_past_the_object_s_end_and_a_second_region_of_the_same_name_are_refused(
    http: http_client.InferenceServerClient, x_region: str
) -> None:
    past_end = refusal(http.register_system_shared_memory, "big", x_region, 48, offset=32)
    again = refusal(http.register_system_shared_memory, "x", x_region, 16)

    assert past_end.status() == "400"
    assert past_end.message() == (
        f"shared memory object '{x_region}' holds 64 bytes: offset 32 + byte_size 48 runs past its end"
    )
    assert again.message() == "shared memory region 'x' is already registered; unregister it first"


def test_requests_naming_an_unknown_region_or_a_window_outside_theirs_are_refused(
    http: http_client.InferenceServerClient, x_region: str
) -> None:
    unknown = refusal(infer_from, http, http_client, "nope", 32)
    outside = refusal(infer_from, http, http_client, "x", 32, offset=48)
    wrong_size = refusal(infer_from, http, http_client, "x", 16)

    assert unknown.message() == "input 'x': no shared memory region 'nope' is registered"
    assert outside.message() == (
        "input 'x': shared_memory_offset 48 + shared_memory_byte_size 32 runs past region 'x' (64 bytes)"
    )
    assert (
        wrong_size.message() == "input 'x': FP32 shape [2, 4] needs 32 bytes; shared_memory_byte_size is 16"
    )
    assert {unknown.status(), outside.status(), wrong_size.status()} == {"400"}


def test_an_output_its_region_cannot_hold_is_refused_after_the_run(
    http: http_client.InferenceServerClient, x_region: str
) -> None:
    wanted = http_client.InferRequestedOutput("y")
    wanted.set_shared_memory("x", 16, offset=32)

    error = refusal(infer_from, http, http_client, "x", 32, outputs=[wanted])

    assert (error.status(), error.message()) == (
        "400",
        "output 'y' is 24 bytes; shared_memory_byte_size 16 cannot hold it",
    )


def test_the_region_and_byte_caps_hold(http: http_client.InferenceServerClient) -> None:
    with raw_object("cap", bytes(4096)) as (key, _):
        too_big = refusal(http.register_system_shared_memory, "big", key, 4096 + 1)
        for name in ("a", "b", "c"):
            http.register_system_shared_memory(name, key, 1024)
        too_many = refusal(http.register_system_shared_memory, "d", key, 16)
        http.unregister_system_shared_memory("c")
        too_much = refusal(http.register_system_shared_memory, "e", key, 2049)

    assert "pass the worker's limit of 4096 bytes of shared memory (--max-shm-bytes)" in too_big.message()
    assert too_many.message() == (
        "this worker already holds 3 shared memory regions, its limit (--max-shm-regions); "
        "unregister one first"
    )
    assert "--max-shm-bytes" in too_much.message()
    assert {too_big.status(), too_many.status(), too_much.status()} == {"400"}


def test_an_object_shrunk_after_registering_is_a_400_not_a_crash(
    http: http_client.InferenceServerClient,
) -> None:
    with raw_object("shrink", X.tobytes()) as (key, path):
        http.register_system_shared_memory("s", key, X.nbytes)
        os.truncate(path, 8)

        error = refusal(infer_from, http, http_client, "s", X.nbytes)

    assert error.status() == "400"
    assert error.message() == (
        f"input 'x': shared memory object '{key}' is shorter than region 's': "
        "it was truncated after registering"
    )


def test_grpc_refusals_are_invalid_argument_and_an_unknown_region_s_status_not_found(
    worker: RunningWorker, http: http_client.InferenceServerClient, x_region: str
) -> None:
    client = grpc_client.InferenceServerClient(worker.grpc_target)

    bad_key = refusal(client.register_system_shared_memory, "r", "../etc/passwd", 16)
    unknown = refusal(infer_from, client, grpc_client, "nope", 32)
    status = refusal(client.get_system_shared_memory_status, "nope")
    streamed: list[Any] = []
    client.start_stream(lambda result, error: streamed.append(error or result))
    tensor = grpc_client.InferInput("x", [2, 4], "FP32")
    tensor.set_shared_memory("x", 16)
    client.async_stream_infer("mlp", [tensor])
    client.stop_stream()

    assert bad_key.status() == "StatusCode.INVALID_ARGUMENT"
    assert (unknown.status(), unknown.message()) == (
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': no shared memory region 'nope' is registered",
    )
    assert (status.status(), status.message()) == (
        "StatusCode.NOT_FOUND",
        "no shared memory region 'nope' is registered",
    )
    assert [str(answer) for answer in streamed] == [
        "input 'x': FP32 shape [2, 4] needs 32 bytes; shared_memory_byte_size is 16"
    ]


def test_with_the_extension_off_every_use_is_refused(mlp_path: Path) -> None:
    with running(make_config(mlp_path)) as worker, raw_object("off", X.tobytes()) as (key, _):
        client = http_client.InferenceServerClient(worker.url.removeprefix("http://"))

        register = refusal(client.register_system_shared_memory, "r", key, X.nbytes)
        infer = refusal(infer_from, client, http_client, "r", X.nbytes)
        status = httpx.get(worker.url + "/v2/systemsharedmemory/status")

        assert (register.status(), infer.status(), status.status_code) == ("400", "400", 400)
        assert register.message().startswith("system shared memory is off on this worker")
        assert infer.message() == register.message()
        assert "system_shared_memory" not in client.get_server_metadata()["extensions"]
        assert_still_serving(client)


def test_unknown_paths_and_methods_of_the_extension_answer_404_and_405(worker: RunningWorker) -> None:
    base = worker.url + "/v2/systemsharedmemory"

    assert httpx.get(base + "/region/a/b/status").status_code == 404
    assert httpx.post(base + "/register", content=b"{}").status_code == 404
    assert httpx.post(base + "/status").status_code == 405
    assert httpx.get(base + "/region/a/register").status_code == 405
    bad_body = httpx.post(base + "/region/a/register", content=b'{"key": "/k", "byte_size": -1}')
    assert (bad_body.status_code, bad_body.json()) == (
        400,
        {"error": "'byte_size' must be a non-negative integer"},
    )


def test_an_input_larger_than_a_body_may_be_is_refused_before_it_is_read(mlp_path: Path) -> None:
    config = with_shared_memory(make_config(mlp_path, limits=Limits(max_body_bytes=1024)))
    with running(config) as worker, raw_object("big", bytes(4096)) as (key, _):
        client = http_client.InferenceServerClient(worker.url.removeprefix("http://"))
        client.register_system_shared_memory("big", key, 4096)
        tensor = http_client.InferInput("s", [1], "BYTES")
        tensor.set_shared_memory("big", 4096)

        error = refusal(client.infer, "mlp", [tensor])

        assert (error.status(), error.message()) == (
            "413",
            "input 's': 4096 bytes of shared memory exceed the limit of 1024 bytes (--max-body-bytes)",
        )
        assert_still_serving(client)
