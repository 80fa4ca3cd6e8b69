"""Serving profiles: how an operator wants a model served, independent of its weights.

A profile is stored on the model (JSON) and validated twice: on its own when an
operator saves it (field by field, with DRF's messages), and against a version's
signature before any node sees a config built from it (`check_against`).
`tritonconfig.build_config` turns version + profile into Triton's ModelConfig.

Defaults were tuned on the demo model (docs/benchmarks.md, dynamic batching): a
batching model gets dynamic batching with no added queue delay (at concurrency 32
it batched what was already queued: 1.8x the throughput of no batching, and a
delay of 100 to 2000 µs bought nothing more), no preferred sizes (Triton's docs:
they only help models faster at specific sizes), and one instance.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from appliance.catalog import generative
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import ModelVersion
from appliance.core.api_input import StrictSerializer
from appliance.core.errors import DomainError

DEFAULT_QUEUE_DELAY_US = 0
MAX_PRIORITY_LEVELS = 16


class ProfileError(DomainError):
    """A profile that cannot serve this version."""


class QueuePolicySerializer(serializers.Serializer):
    timeout_action = serializers.ChoiceField(choices=["reject", "delay"], default="reject")
    default_timeout_us = serializers.IntegerField(min_value=0, default=0, help_text="0: no queue timeout")
    allow_timeout_override = serializers.BooleanField(default=True)
    max_queue_size = serializers.IntegerField(min_value=0, default=0, help_text="0: unbounded")


class DynamicBatchingSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(default=True)
    preferred_batch_sizes = serializers.ListField(child=serializers.IntegerField(min_value=1), default=list, max_length=16)
    max_queue_delay_us = serializers.IntegerField(min_value=0, max_value=10_000_000, default=DEFAULT_QUEUE_DELAY_US)
    priority_levels = serializers.IntegerField(min_value=0, max_value=MAX_PRIORITY_LEVELS, default=0)
    default_priority_level = serializers.IntegerField(min_value=0, max_value=MAX_PRIORITY_LEVELS, default=0)
    default_queue_policy = QueuePolicySerializer(required=False)
    priority_queue_policy = serializers.DictField(child=QueuePolicySerializer(), default=dict)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        levels = attrs["priority_levels"]
        if levels == 0:
            if attrs["default_priority_level"] or attrs["priority_queue_policy"]:
                raise serializers.ValidationError("set priority_levels before a default level or per-level policies")
        else:
            if not 1 <= attrs["default_priority_level"] <= levels:
                raise serializers.ValidationError(f"default_priority_level must be between 1 and priority_levels ({levels})")
            for level in attrs["priority_queue_policy"]:
                if not level.isdigit() or not 1 <= int(level) <= levels:
                    raise serializers.ValidationError(f"priority_queue_policy names level {level!r}; levels are 1..{levels}")
        if len(set(attrs["preferred_batch_sizes"])) != len(attrs["preferred_batch_sizes"]):
            raise serializers.ValidationError("preferred_batch_sizes repeats a size")
        return attrs


class InstanceGroupSerializer(serializers.Serializer):
    count = serializers.IntegerField(min_value=1, max_value=64, default=1)
    kind = serializers.ChoiceField(choices=["auto", "cpu", "gpu"], default="auto")
    gpus = serializers.ListField(child=serializers.IntegerField(min_value=0, max_value=63), default=list, max_length=64)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["gpus"] and attrs["kind"] != "gpu":
            raise serializers.ValidationError("gpus can only be named for kind 'gpu'")
        return attrs


class WarmupSerializer(serializers.Serializer):
    # A field named like DRF's Field.source attribute (the stubs' type), which a declared field may shadow.
    source = serializers.ChoiceField(  # type: ignore[assignment]
        choices=["auto", "none", "zero", "random", "samples"], default="auto",
        help_text="synthetic inputs from the signature (zero/random), the version's stored sample inputs, or auto: "
        "zeros where the signature allows, else samples if the version has some, else none",
    )  # fmt: skip
    batch_size = serializers.IntegerField(min_value=1, max_value=1024, default=1)
    count = serializers.IntegerField(min_value=1, max_value=100, default=1, help_text="times each sample is run")


class ServingProfileSerializer(StrictSerializer):
    max_batch_size = serializers.IntegerField(min_value=0, required=False, help_text="default: the version's own")
    dynamic_batching = DynamicBatchingSerializer(required=False)
    instance_group = InstanceGroupSerializer(required=False)
    warmup = WarmupSerializer(required=False)
    response_cache = serializers.BooleanField(default=False, help_text="Triton's own response cache on the node")
    onnx_threads = serializers.IntegerField(
        min_value=1, max_value=64, default=1,
        help_text="ONNX Runtime intra-op threads per instance where a node serves an ONNX version through the "
        "Python backend (its Triton has no ONNX Runtime backend)",
    )  # fmt: skip
    engine = generative.EngineSerializer(required=False, help_text="generative (vllm) versions: the engine's knobs")


def normalise(profile: Any) -> dict[str, Any]:
    """The profile with every default filled in; raises DRF's ValidationError."""
    body = ServingProfileSerializer(data=profile or {})
    body.is_valid(raise_exception=True)
    data = dict(body.validated_data)
    for name, serializer in (("dynamic_batching", DynamicBatchingSerializer), ("instance_group", InstanceGroupSerializer),
                             ("warmup", WarmupSerializer)):  # fmt: skip
        if name not in data:
            data[name] = _defaults(serializer)
    return _plain(data)


def _defaults(serializer: type[serializers.Serializer]) -> dict[str, Any]:
    body = serializer(data={})
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def effective_batch_size(version: ModelVersion, profile: dict[str, Any]) -> int:
    wanted = profile.get("max_batch_size")
    return version.max_batch_size if wanted is None else wanted


def check_against(version: ModelVersion, profile: dict[str, Any]) -> None:
    """Refuses a profile this version cannot be served with, naming what is wrong."""
    batch = effective_batch_size(version, profile)
    if batch > version.max_batch_size:
        raise ProfileError(
            f"max_batch_size {batch} exceeds what version {version.number} supports ({version.max_batch_size})"
        )
    dyn = profile["dynamic_batching"]
    if dyn["enabled"] and batch == 0 and (dyn["preferred_batch_sizes"] or dyn["max_queue_delay_us"] != DEFAULT_QUEUE_DELAY_US):
        raise ProfileError(f"version {version.number} does not batch (max_batch_size 0): dynamic batching settings cannot apply")
    for size in dyn["preferred_batch_sizes"]:
        if size > batch:
            raise ProfileError(f"preferred batch size {size} exceeds max_batch_size {batch}")
    if version.decoupled and dyn["enabled"] and batch > 0:
        raise ProfileError("a decoupled (streaming) version cannot use dynamic batching here")
    group = profile["instance_group"]
    if version.format == ArtifactFormat.VLLM:
        if group["count"] != 1:
            raise ProfileError("a generative version runs one engine per replica (it batches continuously): "
                               "instance_group.count must be 1; add replicas instead")  # fmt: skip
        refusal = generative.engine_refusal(version.generative or {}, generative.engine_spec(profile))
        if refusal:
            raise ProfileError(f"{version}: {refusal}")
    elif "engine" in profile:
        raise ProfileError("engine settings apply to generative (vllm) versions only")
    if version.format == ArtifactFormat.PYTHON and group["kind"] == "gpu":
        raise ProfileError("python-backend versions run on the CPU here: instance kind 'gpu' is refused")
    if version.format == ArtifactFormat.TENSORRT_PLAN and group["kind"] == "cpu":
        raise ProfileError("a TensorRT plan runs on a GPU: instance kind 'cpu' is refused")
    warmup, source = profile["warmup"], warmup_source(version, profile)
    if source != "none":
        if version.decoupled:
            raise ProfileError("warm-up of decoupled versions is not supported by Triton; set warmup.source to 'none'")
        if warmup["batch_size"] > max(batch, 1):
            raise ProfileError(f"warm-up batch size {warmup['batch_size']} exceeds max_batch_size {batch}")
        if source == "samples" and not version.sample_inputs:
            raise ProfileError(f"warm-up from samples: version {version.number} has no stored sample inputs")
        if source in ("zero", "random") and not _synthetic_possible(version):
            raise ProfileError("synthetic warm-up needs fixed dims and no BYTES inputs; use source 'samples' or 'none'")


def _synthetic_possible(version: ModelVersion) -> bool:
    return not version.decoupled and all(
        t["datatype"] != "BYTES" and -1 not in t["dims"] for t in version.signature["inputs"]
    )


def warmup_source(version: ModelVersion, profile: dict[str, Any]) -> str:
    """The warm-up the version gets: 'auto' resolved against its signature."""
    source = str(profile["warmup"]["source"])
    if source != "auto":
        return source
    if _synthetic_possible(version):
        return "zero"
    return "samples" if version.sample_inputs and not version.decoupled else "none"
