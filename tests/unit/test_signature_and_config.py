from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.signature import SignatureError, validate_signature
from appliance.catalog.tritonconfig import render_config

GOOD = {
    "inputs": [{"name": "IMAGE", "datatype": "FP32", "dims": [64]}],
    "outputs": [{"name": "LABEL", "datatype": "INT32", "dims": [1]}],
}


def test_valid_signature_is_normalised() -> None:
    assert validate_signature(GOOD) == GOOD


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ([], "expected an object"),
        ({"inputs": []}, "signature.inputs: expected a non-empty list"),
        ({**GOOD, "extra": 1}, "unknown keys"),
        ({**GOOD, "inputs": [{"name": "X", "datatype": "FLOAT", "dims": [1]}]}, "datatype 'FLOAT'"),
        ({**GOOD, "inputs": [{"name": "X", "datatype": "FP32", "dims": [0]}]}, "dims must be"),
        ({**GOOD, "inputs": [{"name": "1bad", "datatype": "FP32", "dims": [1]}]}, "not a valid tensor name"),
        ({**GOOD, "outputs": [GOOD["outputs"][0], GOOD["outputs"][0]]}, "names must be unique"),
    ],
)
def test_invalid_signatures_name_the_problem(signature: object, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        validate_signature(signature)


def _version(**overrides: object) -> ModelVersion:
    fields = {"number": 3, "format": "python", "signature": GOOD, "max_batch_size": 8, "decoupled": False}
    fields.update(overrides)
    return ModelVersion(model=Model(name="digits"), artifact_sha256="0" * 64, artifact_size=1, **fields)


def test_config_round_trips_through_tritons_own_message() -> None:
    text = render_config(_version(), versions=[3, 2])
    parsed = text_format.Parse(text, mc.ModelConfig())
    assert parsed.name == "digits"
    assert parsed.backend == "python"
    assert parsed.max_batch_size == 8
    assert list(parsed.version_policy.specific.versions) == [2, 3]
    assert parsed.input[0].data_type == mc.TYPE_FP32 and list(parsed.input[0].dims) == [64]
    assert parsed.output[0].data_type == mc.TYPE_INT32
    assert parsed.HasField("dynamic_batching")


def test_decoupled_config_sets_the_transaction_policy_and_no_batching() -> None:
    parsed = text_format.Parse(render_config(_version(decoupled=True, max_batch_size=0), versions=[1]), mc.ModelConfig())
    assert parsed.model_transaction_policy.decoupled is True
    assert not parsed.HasField("dynamic_batching")


def test_onnx_and_plan_pick_their_backends() -> None:
    onnx = text_format.Parse(render_config(_version(format="onnx"), versions=[1]), mc.ModelConfig())
    plan = text_format.Parse(render_config(_version(format="tensorrt_plan"), versions=[1]), mc.ModelConfig())
    assert onnx.backend == "onnxruntime"
    assert plan.platform == "tensorrt_plan"


def test_text_tensors_are_type_string_in_the_config() -> None:
    """The wire's BYTES is model_config.proto's TYPE_STRING (there is no TYPE_BYTES)."""
    text = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "dims": [1]}],
            "outputs": [{"name": "ANSWER", "datatype": "BYTES", "dims": [1]}]}  # fmt: skip
    parsed = text_format.Parse(render_config(_version(signature=text), versions=[1]), mc.ModelConfig())
    assert parsed.input[0].data_type == mc.TYPE_STRING and parsed.output[0].data_type == mc.TYPE_STRING
