from __future__ import annotations

import math
from typing import Any

from rest_framework import serializers

from appliance.catalog.models import ModelVersion, ValidationSet
from appliance.nodes.models import Node
from appliance.optimisation import profiles
from appliance.optimisation.choices import DEFAULT_KINDS, CandidateKind
from appliance.optimisation.models import (
    GateRun,
    OptimisationCandidate,
    OptimisationJob,
    ProfileSearch,
    ProfileSearchResult,
)

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
                  "error", "measured_on", "recommended", "recommendation", "requested_by", "cancelled_by", "created",
                  "started", "finished", "candidates"]  # fmt: skip
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


class ProfileSearchResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProfileSearchResult
        fields = ["id", "position", "max_batch_size", "instance_count", "max_queue_delay_us", "profile", "p50_ms",
                  "p99_ms", "throughput", "errors", "met_objective", "client_cpu_us", "seconds", "note"]  # fmt: skip
        read_only_fields = fields


class ProfileSearchSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True)
    version_number = serializers.IntegerField(source="version.number", read_only=True)
    node = serializers.CharField(source="node_name", read_only=True)
    input_set: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True,
                                                                                           allow_null=True)  # fmt: skip
    recommended: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True,
                                                                                              allow_null=True)  # fmt: skip
    results = ProfileSearchResultSerializer(many=True, read_only=True)

    class Meta:
        model = ProfileSearch
        fields = ["id", "model", "version", "version_number", "node", "objective_p99_ms", "concurrency", "requests",
                  "time_limit_s", "input_set", "grid", "pruned", "base_profile", "state", "step", "progress", "error",
                  "measured_on", "recommended", "recommendation", "speed_up", "requested_by", "cancelled_by", "created",
                  "started", "finished", "applied", "applied_by", "results"]  # fmt: skip
        read_only_fields = fields


def _grid_list(name: str, default: list[int]) -> serializers.ListField:
    low, high = profiles.GRID_LIMITS[name]
    return serializers.ListField(child=serializers.IntegerField(min_value=low, max_value=high), min_length=1,
                                 max_length=profiles.GRID_MAX_VALUES, default=lambda: list(default))  # fmt: skip


class ProfileGridSerializer(serializers.Serializer):
    max_batch_size = _grid_list("max_batch_size", profiles.DEFAULT_GRID["max_batch_size"])
    instance_count = _grid_list("instance_count", profiles.DEFAULT_GRID["instance_count"])
    max_queue_delay_us = _grid_list("max_queue_delay_us", profiles.DEFAULT_GRID["max_queue_delay_us"])


class ProfileSearchCreateSerializer(serializers.Serializer):
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.select_related("model"),
                                                 help_text="the version to measure")  # fmt: skip
    node = serializers.SlugRelatedField(slug_field="name", queryset=Node.objects.all(),
                                        help_text="the node the numbers are for (a CPU node: the optimiser measures "
                                        "on its own host, the same kind of machine)")  # fmt: skip
    objective_p99_ms = serializers.FloatField(min_value=0.001, max_value=profiles.OBJECTIVE_MAX_MS,
                                              help_text="the latency objective: p99 in ms at the concurrency")  # fmt: skip
    concurrency = serializers.IntegerField(min_value=profiles.CONCURRENCY_RANGE[0], max_value=profiles.CONCURRENCY_RANGE[1],
                                           default=profiles.DEFAULT_CONCURRENCY, help_text="requests in flight")  # fmt: skip
    requests = serializers.IntegerField(min_value=profiles.REQUESTS_RANGE[0], max_value=profiles.REQUESTS_RANGE[1],
                                        default=profiles.DEFAULT_REQUESTS,
                                        help_text="measured requests per profile, after a warm-up")  # fmt: skip
    time_limit_s = serializers.IntegerField(min_value=60, max_value=86400, required=False,
                                            help_text="no profile is started after this many seconds; the "
                                            "recommendation is made from the profiles measured by then (default: "
                                            "APPLIANCE_PROFILE_SEARCH_TIME_LIMIT_S, 3600)")  # fmt: skip
    input_set = serializers.PrimaryKeyRelatedField(
        queryset=ValidationSet.objects.all(), required=False, allow_null=True,
        help_text="a validation set of the model whose inputs the requests carry (default: the version's stored "
        "samples, else zeros; needed for inputs of variable size)",
    )  # fmt: skip
    grid = ProfileGridSerializer(required=False, help_text="the values tried of each field (default: max batch size "
                                 "1, 8, 32; 1 and 2 instances; queue delay 0 and 2000 µs)")  # fmt: skip

    def validate_objective_p99_ms(self, value: float) -> float:
        if not math.isfinite(value):
            raise serializers.ValidationError("a finite number of milliseconds")
        return value


class GateRunSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(read_only=True)
    version_number = serializers.IntegerField(source="version.number", read_only=True)
    # The version it is judged against ("parent" is a name DRF's fields already use).
    parent_version = serializers.UUIDField(source="version.parent_id", read_only=True)

    class Meta:
        model = GateRun
        fields = ["id", "model", "version", "version_number", "parent_version", "sets", "state", "step", "progress", "error",
                  "measured_on", "outcome", "passed", "requested_by", "cancelled_by", "created", "started",
                  "finished"]  # fmt: skip
        read_only_fields = fields


class GateRunCreateSerializer(serializers.Serializer):
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.select_related("model", "parent"),
                                                 help_text="the version to judge against its parent")  # fmt: skip
    validation_sets = serializers.ListField(
        child=serializers.SlugField(max_length=63), required=False, min_length=1, max_length=50,
        help_text="names of the model's validation sets to judge on (default: every one)",
    )  # fmt: skip
