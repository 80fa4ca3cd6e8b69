"""Generates a model's Triton config.pbtxt from a version's signature and the
model's serving profile (catalog/profile.py).

Built as a ModelConfig protobuf (the message Triton itself parses) and printed in
text format, so the output is well-formed by construction; the profile is
checked against the version before anything is built.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import triton_to_np_dtype

from appliance.catalog import generative, runtimes
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import ModelVersion
from appliance.catalog.profile import ProfileError, check_against, effective_batch_size, normalise, warmup_source

# Triton's platform name, where a backend wants one besides its name.
_PLATFORM = {runtimes.TENSORRT: "tensorrt_plan"}
_KIND = {"auto": mc.ModelInstanceGroup.KIND_AUTO, "cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
_ACTION = {"reject": mc.ModelQueuePolicy.REJECT, "delay": mc.ModelQueuePolicy.DELAY}
WARMUP_DIR = "warmup"


def _dtype(datatype: str) -> int:
    # The wire calls text BYTES; model_config.proto calls it TYPE_STRING.
    return int(mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"))


def _queue_policy(target: mc.ModelQueuePolicy, policy: dict[str, Any]) -> None:
    target.timeout_action = _ACTION[policy["timeout_action"]]
    target.default_timeout_microseconds = policy["default_timeout_us"]
    target.allow_timeout_override = policy["allow_timeout_override"]
    target.max_queue_size = policy["max_queue_size"]


def warmup_file_name(version: ModelVersion, tensor: str) -> str:
    return f"v{version.number}_{tensor}"


def warmup_files(version: ModelVersion, profile: Any) -> dict[str, bytes]:
    """Raw row-major sample inputs for Triton's warm-up, named as the config names them."""
    if warmup_source(version, normalise(profile)) != "samples" or not version.sample_inputs:
        return {}
    files = {}
    for tensor in version.signature["inputs"]:
        values = version.sample_inputs[tensor["name"]]
        files[warmup_file_name(version, tensor["name"])] = np.asarray(
            values, dtype=triton_to_np_dtype(tensor["datatype"])
        ).tobytes()
    return files


def build_config(version: ModelVersion, *, versions: Iterable[int], profile: Any = None,
                 backends: Collection[str] = (), device_memory: int = 0) -> mc.ModelConfig:  # fmt: skip
    """The config for a Triton whose backends are `backends` (empty: the format's native
    backend, as catalog/runtimes.py assumes for a node that has not reported them).
    `device_memory`: the memory of the GPU a generative replica's engine runs on, where the
    node's vLLM environment is built for CUDA (its share is its own need over this)."""
    versions = sorted(set(versions))
    if profile is None:
        profile = version.model.serving_profile
    spec = normalise(profile)
    check_against(version, spec)
    batch = effective_batch_size(version, spec)
    config = mc.ModelConfig(name=version.model.name, max_batch_size=batch)
    backend = runtimes.serving_backend(version.format, backends)
    if backend is None:
        raise ProfileError(runtimes.backend_refusal(version.format, backends))
    if version.format == ArtifactFormat.ENSEMBLE:
        config.platform = "ensemble"
    else:
        config.backend = runtimes.TRITON_BACKEND.get(backend, backend)
        if backend in _PLATFORM:
            config.platform = _PLATFORM[backend]
    if runtimes.wraps_onnx_in_python(version.format, backends):
        # catalog/onnx_runner.py reads it: ONNX Runtime's intra-op threads per instance.
        config.parameters["onnx_threads"].string_value = str(spec["onnx_threads"])
    if version.format == ArtifactFormat.VLLM:
        # catalog/vllm_runner.py starts each version's engine with exactly these, by version
        # number: the config is the model's, shared by the versions it serves, while a version's
        # dtype ("auto": as stored) and share of the GPU follow from its own weights.
        facts = dict(ModelVersion.objects.filter(model_id=version.model_id, number__in=versions)
                     .values_list("number", "generative"))  # fmt: skip
        facts[version.number] = version.generative
        argvs, envs = {}, {}
        for number in sorted({*versions, version.number}):
            argvs[str(number)], envs[str(number)] = generative.engine_command(
                facts.get(number) or version.generative or {}, generative.engine_spec(spec),
                device=runtimes.engine_device(backends), device_memory=device_memory)  # fmt: skip
        config.parameters["engine_argv"].string_value = json.dumps(argvs)
        config.parameters["engine_env"].string_value = json.dumps(envs)
    config.version_policy.specific.versions.extend(sorted(set(versions)))
    for tensor in version.signature["inputs"]:
        config.input.add(name=tensor["name"], data_type=_dtype(tensor["datatype"]), dims=tensor["dims"],
                         optional=bool(tensor.get("optional")))  # fmt: skip
    for tensor in version.signature["outputs"]:
        config.output.add(name=tensor["name"], data_type=_dtype(tensor["datatype"]), dims=tensor["dims"])
    if version.decoupled:
        config.model_transaction_policy.decoupled = True
    if version.format == ArtifactFormat.ENSEMBLE:
        for step in version.ensemble_steps or []:
            target = config.ensemble_scheduling.step.add(model_name=step["model"], model_version=-1)
            for key, value in step["input_map"].items():
                target.input_map[key] = value
            for key, value in step["output_map"].items():
                target.output_map[key] = value

    dyn = spec["dynamic_batching"]
    if dyn["enabled"] and batch > 0 and not version.decoupled and version.format != ArtifactFormat.ENSEMBLE:
        batching = config.dynamic_batching
        batching.max_queue_delay_microseconds = dyn["max_queue_delay_us"]
        batching.preferred_batch_size.extend(dyn["preferred_batch_sizes"])
        if dyn["priority_levels"]:
            batching.priority_levels = dyn["priority_levels"]
            batching.default_priority_level = dyn["default_priority_level"]
        if "default_queue_policy" in dyn:
            _queue_policy(batching.default_queue_policy, dyn["default_queue_policy"])
        for level, policy in sorted(dyn["priority_queue_policy"].items(), key=lambda kv: int(kv[0])):
            _queue_policy(batching.priority_queue_policy[int(level)], policy)

    group = spec["instance_group"]
    kind, gpus = group["kind"], list(group["gpus"])
    if version.format == ArtifactFormat.VLLM and runtimes.engine_device(backends) == "gpu":
        kind, gpus = "gpu", [generative.engine_gpu(spec)]  # one engine, on its GPU (the runner pins it there)
    elif kind == "auto" and runtimes.TRITON_BACKEND.get(backend or "", backend) == runtimes.PYTHON:
        kind = "cpu"
    if version.format != ArtifactFormat.ENSEMBLE:
        instance = config.instance_group.add(kind=_KIND[kind], count=group["count"])
        instance.gpus.extend(gpus[:1] if version.format == ArtifactFormat.VLLM else gpus)

    warmup, source = spec["warmup"], warmup_source(version, spec)
    if source != "none" and version.format != ArtifactFormat.ENSEMBLE:
        sample = config.model_warmup.add(name=f"{source}_warmup", batch_size=warmup["batch_size"],
                                         count=warmup["count"])  # fmt: skip
        for tensor in version.signature["inputs"]:
            item = sample.inputs[tensor["name"]]
            item.data_type = _dtype(tensor["datatype"])
            item.dims.extend(tensor["dims"])
            if source == "zero":
                item.zero_data = True
            elif source == "random":
                item.random_data = True
            else:
                item.input_data_file = warmup_file_name(version, tensor["name"])
    if spec["response_cache"] and version.format != ArtifactFormat.ENSEMBLE:
        config.response_cache.enable = True
    return config


def render_config(version: ModelVersion, *, versions: Iterable[int], profile: Any = None,
                  backends: Collection[str] = (), device_memory: int = 0) -> str:  # fmt: skip
    return text_format.MessageToString(build_config(version, versions=versions, profile=profile, backends=backends,
                                                    device_memory=device_memory))  # fmt: skip
