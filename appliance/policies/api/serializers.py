from __future__ import annotations

from typing import Any

from rest_framework import serializers

from appliance.core.api import slug_list_field
from appliance.policies.choices import Classification, Effect, Operation
from appliance.policies.models import PolicyRule


class PolicyRuleSerializer(serializers.ModelSerializer):
    effect = serializers.ChoiceField(choices=Effect.choices)
    operations = serializers.ListField(child=serializers.ChoiceField(choices=Operation.choices), required=False)
    classifications = serializers.ListField(child=serializers.ChoiceField(choices=Classification.choices), required=False)
    zones = slug_list_field(required=False)
    sites = slug_list_field(required=False)
    require_tags = slug_list_field(required=False)

    class Meta:
        model = PolicyRule
        fields = ["id", "position", "name", "effect", "operations", "classifications", "zones", "sites",
                  "require_tags", "description", "enabled"]  # fmt: skip
        read_only_fields = ["id"]


class TenantChangeSerializer(serializers.Serializer):
    classification = serializers.ChoiceField(choices=Classification.choices, required=False)
    allowed_zones = slug_list_field(required=False)


class DryRunSerializer(serializers.Serializer):
    rules = serializers.ListField(child=serializers.DictField(), required=False, help_text="the whole proposed rule list")
    tenants = serializers.DictField(child=TenantChangeSerializer(), required=False,
                                    help_text="proposed tenant changes, by slug")  # fmt: skip

    def validate_rules(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        checked = []
        for index, rule in enumerate(value):
            item = PolicyRuleSerializer(data=rule)
            if not item.is_valid():
                raise serializers.ValidationError({str(index): item.errors})
            checked.append(item.validated_data)
        return checked


class ImpactSerializer(serializers.Serializer):
    replicas_that_must_move = serializers.ListField(child=serializers.DictField())
    tenants_losing_service = serializers.ListField(child=serializers.DictField())
