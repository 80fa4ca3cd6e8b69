"""Wire edits the gateway makes without re-serialising requests."""

from __future__ import annotations

from tritonclient.grpc import service_pb2 as pb

from appliance.gateway.wire import with_priority, with_version


def test_priority_and_version_appended_parse_as_if_set() -> None:
    request = pb.ModelInferRequest(model_name="digits", id="r1")
    request.parameters["priority"].uint64_param = 3  # the client's own wish is overridden
    request.parameters["sequence_id"].int64_param = 7
    edited = pb.ModelInferRequest.FromString(with_priority(with_version(request.SerializeToString(), "4"), 1))
    assert (edited.model_name, edited.model_version, edited.id) == ("digits", "4", "r1")
    assert edited.parameters["priority"].uint64_param == 1
    assert edited.parameters["sequence_id"].int64_param == 7
