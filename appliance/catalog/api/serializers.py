from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import Model, ModelVersion


class ModelSerializer(serializers.ModelSerializer):
    class Meta:
        model = Model
        fields = ["id", "name", "description", "response_cache", "created"]
        read_only_fields = ["id", "created"]


class ModelUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(allow_blank=True, required=False)
    response_cache = serializers.BooleanField(required=False)


class ModelVersionSerializer(serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="name", read_only=True)
    parent = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id", "model", "number", "format", "artifact_sha256", "artifact_size", "signature",
            "max_batch_size", "decoupled", "parent", "change_note", "created",
        ]  # fmt: skip
        read_only_fields = fields


class JSONTextField(serializers.JSONField):
    """Accepts a JSON object, or a string holding one (multipart uploads send strings)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise serializers.ValidationError(f"not valid JSON: {exc.msg}") from exc
        return super().to_internal_value(data)


class ModelVersionCreateSerializer(serializers.Serializer):
    model = serializers.SlugRelatedField(slug_field="name", queryset=Model.objects.all())
    format = serializers.ChoiceField(choices=ArtifactFormat.choices)
    artifact = serializers.FileField(allow_empty_file=False)
    signature = JSONTextField()
    max_batch_size = serializers.IntegerField(min_value=0, max_value=1 << 16, default=0)
    decoupled = serializers.BooleanField(default=False)
    parent = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all(), required=False, allow_null=True)
    change_note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
