from __future__ import annotations

from typing import Any

from rest_framework import serializers

from appliance.catalog.models import ModelVersion, ValidationSet
from appliance.optimisation.choices import DEFAULT_KINDS, CandidateKind
from appliance.optimisation.models import OptimisationCandidate, OptimisationJob

_KINDS = [k for k in CandidateKind.values if k != CandidateKind.REFERENCE]


class CandidateSerializer(serializers.ModelSerializer):
    version: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    version_number = serializers.IntegerField(source="version.number", read_only=True, allow_null=True, default=None)

    class Meta:
        model = OptimisationCandidate
        fields = ["id", "kind", "version", "version_number", "size_bytes", "p50_ms", "p99_ms", "throughput", "values",
                  "checks", "passed", "kept_in_float", "search", "note"]  # fmt: skip
        read_only_fields = fields


class OptimisationJobSerializer(serializers.ModelSerializer):
    # Named like DRF's Field.source (the stubs' type); the serializer's metaclass takes declared fields off the class.
    source = serializers.PrimaryKeyRelatedField(read_only=True)  # type: ignore[assignment,var-annotated]
    model = serializers.CharField(source="source.model.name", read_only=True)
    validation_set: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True)
    calibration_set: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True,
                                                                                                  allow_null=True)  # fmt: skip
    recommended: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True,
                                                                                              allow_null=True)  # fmt: skip
    candidates = CandidateSerializer(many=True, read_only=True)

    class Meta:
        model = OptimisationJob
        fields = ["id", "model", "source", "validation_set", "calibration_set", "kinds", "state", "step", "progress",
                  "error", "measured_on", "recommended", "recommendation", "requested_by", "created", "started",
                  "finished", "candidates"]  # fmt: skip
        read_only_fields = fields


class OptimisationJobCreateSerializer(serializers.Serializer):
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.select_related("model"),
                                                 help_text="the ONNX version to make candidates from")  # fmt: skip
    validation_set = serializers.PrimaryKeyRelatedField(queryset=ValidationSet.objects.all(),
                                                        help_text="the set the gate judges on (same model)")  # fmt: skip
    calibration_set = serializers.PrimaryKeyRelatedField(
        queryset=ValidationSet.objects.all(), required=False, allow_null=True,
        help_text="inputs static INT8 calibrates on (same model; default: the validation set's inputs)",
    )  # fmt: skip
    kinds = serializers.ListField(child=serializers.ChoiceField(choices=_KINDS), required=False, min_length=1,
                                  max_length=len(_KINDS), default=lambda: list(DEFAULT_KINDS),
                                  help_text="candidates to build, in order")  # fmt: skip
