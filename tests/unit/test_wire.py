"""Wire edits the gateway makes without re-serialising requests."""

from __future__ import annotations

from tritonclient.grpc import service_pb2 as pb

from appliance.gateway.wire import stream_error, with_priority, with_version


def test_priority_and_version_appended_parse_as_if_set() -> None:
    request = pb.ModelInferRequest(model_name="digits", id="r1")
    request.parameters["priority"].uint64_param = 3  # the client's own wish is overridden
    request.parameters["sequence_id"].int64_param = 7
    edited = pb.ModelInferRequest.FromString(with_priority(with_version(request.SerializeToString(), "4"), 1))
    assert (edited.model_name, edited.model_version, edited.id) == ("digits", "4", "r1")
    assert edited.parameters["priority"].uint64_param == 1
    assert edited.parameters["sequence_id"].int64_param == 7


def test_a_stream_response_carrying_an_error_is_told_from_its_fields() -> None:
    answer = pb.ModelInferResponse(model_name="llm", model_version="1", id="r1")
    answer.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    answer.raw_output_contents.append(b"\x05\x00\x00\x00Paris")
    ok = pb.ModelStreamInferResponse(infer_response=answer).SerializeToString()
    failed = pb.ModelStreamInferResponse(error_message="the vLLM engine failed", infer_response=answer)
    assert not stream_error(ok)
    assert stream_error(failed.SerializeToString())
    # Fields in any order on the wire (protobuf allows it), and an empty message is no error.
    assert stream_error(ok + pb.ModelStreamInferResponse(error_message="x").SerializeToString())
    assert not stream_error(pb.ModelStreamInferResponse(error_message="").SerializeToString())
    assert not stream_error(b"\x0a\xff\xff")  # malformed: not taken for an error
