"""The gateway's protobuf wire operations, checked against the generated messages (no server)."""

from __future__ import annotations

from typing import Any

import pytest

from inference_worker import build_protos
from inference_worker.gateway import grpc_wire


@pytest.fixture(scope="module")
def pb2() -> Any:
    return build_protos.load()[0]


@pytest.fixture(autouse=True, params=["parsed", "scanned"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test reads names both ways: small messages by protobuf's parser, large ones by the scan."""
    if request.param == "scanned":
        monkeypatch.setattr(grpc_wire, "PARSED_UP_TO", -1)


def infer_request(pb2: Any, name: str) -> Any:
    request = pb2.ModelInferRequest(
        model_name=name, model_version="3", id="r-1", raw_input_contents=[b"\0" * 16]
    )
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.parameters["timeout"].int64_param = 5000
    return request


@pytest.mark.parametrize("name", ["fraud", "a" * 200, "ünïcode", "x"])
def test_the_model_name_is_read_from_an_infer_request_wherever_the_encoder_put_it(
    pb2: Any, name: str
) -> None:
    request = infer_request(pb2, name)
    assert grpc_wire.read_name(request.SerializeToString()) == name
    reordered = request.SerializeToString()[len(pb2.ModelInferRequest(model_name=name).SerializeToString()) :]
    assert grpc_wire.read_name(reordered + pb2.ModelInferRequest(model_name=name).SerializeToString()) == name


def test_ready_and_metadata_requests_name_their_model_in_the_same_field(pb2: Any) -> None:
    assert grpc_wire.read_name(pb2.ModelReadyRequest(name="fraud").SerializeToString()) == "fraud"
    assert (
        grpc_wire.read_name(pb2.ModelMetadataRequest(name="fraud", version="2").SerializeToString())
        == "fraud"
    )


def test_a_request_without_a_name_reads_as_none_and_garbage_is_refused(pb2: Any) -> None:
    assert grpc_wire.read_name(b"") is None
    assert grpc_wire.read_name(pb2.ModelInferRequest(id="only-an-id").SerializeToString()) is None
    for garbage in (
        b"\x0a\x05ab",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x0b",
        b"\x0a\x02\xff\xfe",
    ):
        with pytest.raises(grpc_wire.WireError):
            grpc_wire.read_name(garbage)


def test_a_renamed_request_parses_with_the_new_name_and_everything_else_unchanged(pb2: Any) -> None:
    request = infer_request(pb2, "fraud")
    renamed = pb2.ModelInferRequest.FromString(grpc_wire.with_name(request.SerializeToString(), "clf"))
    assert renamed.model_name == "clf"
    assert grpc_wire.read_name(renamed.SerializeToString()) == "clf"
    request.model_name = "clf"
    assert renamed == request


def test_labels_are_two_string_parameters_added_to_a_response_that_keeps_its_own(pb2: Any) -> None:
    response = pb2.ModelInferResponse(
        model_name="clf", model_version="1", id="r-1", raw_output_contents=[b"1234"]
    )
    response.outputs.add(name="y", datatype="FP32", shape=[1, 1])
    response.parameters["own"].bool_param = True
    labelled = pb2.ModelInferResponse.FromString(response.SerializeToString() + grpc_wire.labels("b", "7"))
    assert labelled.parameters["kiln_variant"].string_param == "b"
    assert labelled.parameters["kiln_model_version"].string_param == "7"
    assert labelled.parameters["own"].bool_param is True
    assert list(labelled.raw_output_contents) == [b"1234"]
