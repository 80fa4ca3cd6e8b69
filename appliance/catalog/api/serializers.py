from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from appliance.accounts.models import slug_validator
from appliance.catalog.choices import ArtifactFormat, ChangeKind
from appliance.catalog.models import Model, ModelVersion, ValidationSet
from appliance.catalog.profile import normalise
from appliance.core.api_input import NUL_MESSAGE, nul_location
from appliance.gateway.semantic import normalise_semantic
from appliance.optimisation.validation_data import METRICS
from appliance.rollouts.autoscale import normalise_autoscale


class _ModelSettings:
    """The JSON settings of a model, checked (and defaults filled) by their own validators."""

    def validate_serving_profile(self, value: Any) -> Any:
        return normalise(value)

    def validate_autoscale(self, value: Any) -> Any:
        return normalise_autoscale(value)

    def validate_semantic_cache(self, value: Any) -> Any:
        return normalise_semantic(value)


class ModelSerializer(_ModelSettings, serializers.ModelSerializer):
    class Meta:
        model = Model
        fields = ["id", "name", "description", "response_cache", "semantic_cache", "serving_profile", "idle_unload_s",
                  "autoscale", "created"]  # fmt: skip
        read_only_fields = ["id", "created"]



class ModelUpdateSerializer(_ModelSettings, serializers.Serializer):
    description = serializers.CharField(allow_blank=True, required=False)
    response_cache = serializers.BooleanField(required=False)
    semantic_cache = serializers.JSONField(required=False, help_text="{threshold, ttl_s, max_entries}; {} turns it off; "
                                           "the model's only input must be text (BYTES)")  # fmt: skip
    serving_profile = serializers.JSONField(required=False, help_text="see ServingProfile; checked against the newest version")
    idle_unload_s = serializers.IntegerField(min_value=0, max_value=30 * 86400, required=False,
                                             help_text="scale to zero after this many idle seconds; 0: always resident")  # fmt: skip

    autoscale = serializers.JSONField(required=False, help_text="{min_replicas, max_replicas, queue_ms_up, "
                                      "utilisation_up, utilisation_down, cooldown_s}; {} turns autoscaling off")



class ModelVersionSerializer(serializers.ModelSerializer):
    model: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True)
    # Named like DRF's Field.parent (the stubs' type); the serializer's metaclass takes declared fields off the class.
    parent = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)  # type: ignore[assignment,var-annotated]

    class Meta:
        model = ModelVersion
        fields = [
            "id", "model", "number", "format", "artifact_sha256", "artifact_size", "signature",
            "max_batch_size", "decoupled", "parent", "change_kind", "change_note", "gpu_arch", "tensorrt_version",
            "sample_inputs", "generative", "created",
        ]  # fmt: skip
        read_only_fields = fields


class JSONTextField(serializers.JSONField):
    """Accepts a JSON object, or a string holding one (multipart uploads send strings)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and not data.strip() and self.allow_null:
            return None  # an empty form field: left out
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise serializers.ValidationError(f"not valid JSON: {exc.msg}") from exc
            if nul_location(data) is not None:  # "\u0000" inside the text: the parsers saw only the escape
                raise serializers.ValidationError(NUL_MESSAGE)
        return super().to_internal_value(data)


class ModelVersionCreateSerializer(serializers.Serializer):
    model = serializers.SlugRelatedField(slug_field="name", queryset=Model.objects.all())
    format = serializers.ChoiceField(choices=ArtifactFormat.choices)
    artifact = serializers.FileField(allow_empty_file=False)
    signature = JSONTextField(required=False, allow_null=True, default=None,
                              help_text="required except for vllm versions (Triton's vLLM backend's tensors)")  # fmt: skip
    max_batch_size = serializers.IntegerField(min_value=0, max_value=1 << 16, default=0)
    decoupled = serializers.BooleanField(default=False)
    parent = serializers.PrimaryKeyRelatedField(  # type: ignore[assignment]
        queryset=ModelVersion.objects.all(), required=False, allow_null=True
    )
    change_kind = serializers.ChoiceField(choices=ChangeKind.choices, required=False,
                                          help_text="what changed from the parent; required with a parent")  # fmt: skip
    change_note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    gpu_arch = serializers.RegexField(r"^\d{1,2}\.\d$", required=False, default="",
                                      help_text="tensorrt_plan: the compute capability it was built for, e.g. 9.0")  # fmt: skip
    tensorrt_version = serializers.RegexField(r"^\d+\.\d+(\.\d+){0,2}$", required=False, default="",
                                              help_text="tensorrt_plan: the TensorRT version that built it")  # fmt: skip
    sample_inputs = JSONTextField(required=False, allow_null=True, default=None,
                                  help_text="one sample per input without the batch dimension, for warm-up")  # fmt: skip

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("parent") is not None and not attrs.get("change_kind"):
            raise serializers.ValidationError({"change_kind": "say what changed from the parent version"})
        if attrs.get("parent") is None and attrs.get("change_kind", ChangeKind.INITIAL) != ChangeKind.INITIAL:
            raise serializers.ValidationError({"change_kind": "a version without a parent is 'initial'"})
        plan = attrs.get("format") == ArtifactFormat.TENSORRT_PLAN
        if plan and not (attrs.get("gpu_arch") and attrs.get("tensorrt_version")):
            raise serializers.ValidationError("a tensorrt_plan records gpu_arch and tensorrt_version: it runs only there")
        if not plan and (attrs.get("gpu_arch") or attrs.get("tensorrt_version")):
            raise serializers.ValidationError("gpu_arch and tensorrt_version apply to tensorrt_plan versions only")
        return attrs

    def upload_kwargs(self) -> dict[str, Any]:
        """The validated body in catalog.services.version_upload's words (the API and the console)."""
        data = self.validated_data
        return {
            "model": data["model"], "fmt": data["format"], "artifact": data["artifact"], "signature": data["signature"],
            "max_batch_size": data["max_batch_size"], "decoupled": data["decoupled"], "parent": data.get("parent"),
            "change_kind": data.get("change_kind") or ChangeKind.INITIAL, "change_note": data["change_note"],
            "gpu_arch": data["gpu_arch"], "tensorrt_version": data["tensorrt_version"],
            "sample_inputs": data["sample_inputs"],
        }  # fmt: skip


class ValidationSetSerializer(serializers.ModelSerializer):
    model: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = ValidationSet
        fields = ["id", "model", "name", "metric", "max_relative_drop", "content_sha256", "content_size", "rows", "created"]
        read_only_fields = fields


class ValidationSetCreateSerializer(serializers.Serializer):
    model = serializers.SlugRelatedField(slug_field="name", queryset=Model.objects.all())
    name = serializers.CharField(max_length=63, validators=[slug_validator], help_text="unique among the model's sets")
    metric = serializers.ChoiceField(choices=[(m, m) for m in METRICS])
    max_relative_drop = serializers.FloatField(
        min_value=0, max_value=0.999999, default=0.01,
        help_text="how far below its parent a version may score, as a fraction (0.01: 1 %)",
    )  # fmt: skip
    content = serializers.FileField(allow_empty_file=False,
                                    help_text="the validation set file (optimisation/validation_data.py reads it)")  # fmt: skip

    def upload_kwargs(self) -> dict[str, Any]:
        """The validated body in catalog.services.validation_set_upload's words (the API and the console)."""
        data = self.validated_data
        return {"model": data["model"], "name": data["name"], "metric": data["metric"],
                "max_relative_drop": data["max_relative_drop"], "content": data["content"]}  # fmt: skip

