"""Generates a version's Triton config.pbtxt from its signature.

Built as a ModelConfig protobuf (the message Triton itself parses) and printed in
text format, so the output is well-formed by construction. The serving-profile
fields (dynamic batching, instance groups, warm-up, …) arrive with the model
lifecycle issue; this module is where they go.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import ModelVersion

_BACKEND = {
    ArtifactFormat.ONNX: ("onnxruntime", ""),
    ArtifactFormat.TENSORRT_PLAN: ("tensorrt", "tensorrt_plan"),
    ArtifactFormat.PYTHON: ("python", ""),
}


def build_config(version: ModelVersion, *, versions: Iterable[int]) -> mc.ModelConfig:
    config = mc.ModelConfig(name=version.model.name, max_batch_size=version.max_batch_size)
    if version.format == ArtifactFormat.ENSEMBLE:
        config.platform = "ensemble"
    else:
        backend, platform = _BACKEND[ArtifactFormat(version.format)]
        config.backend = backend
        if platform:
            config.platform = platform
    config.version_policy.specific.versions.extend(sorted(set(versions)))
    for tensor in version.signature["inputs"]:
        config.input.add(name=tensor["name"], data_type=mc.DataType.Value(f"TYPE_{tensor['datatype']}"), dims=tensor["dims"])
    for tensor in version.signature["outputs"]:
        config.output.add(
            name=tensor["name"], data_type=mc.DataType.Value(f"TYPE_{tensor['datatype']}"), dims=tensor["dims"]
        )
    if version.decoupled:
        config.model_transaction_policy.decoupled = True
    if version.max_batch_size > 0 and not version.decoupled:
        config.dynamic_batching.max_queue_delay_microseconds = 0
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU if version.format == ArtifactFormat.PYTHON else mc.ModelInstanceGroup.KIND_AUTO, count=1)
    return config


def render_config(version: ModelVersion, *, versions: Iterable[int]) -> str:
    return text_format.MessageToString(build_config(version, versions=versions))
