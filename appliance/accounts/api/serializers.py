from typing import Any

from rest_framework import serializers

from appliance.accounts.choices import PriorityClass
from appliance.accounts.models import ApiKey, ModelGrant, Tenant
from appliance.catalog.models import Model
from appliance.core.api import slug_list_field
from appliance.policies.choices import Classification


class TenantSerializer(serializers.ModelSerializer):
    allowed_zones = slug_list_field(required=False)

    class Meta:
        model = Tenant
        fields = ["id", "slug", "name", "classification", "allowed_zones", "priority_class", "rate_limit_rps", "rate_burst",
                  "daily_quota", "tokens_per_minute", "max_tokens", "created"]  # fmt: skip
        read_only_fields = ["id", "created"]


class TenantUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    classification = serializers.ChoiceField(choices=Classification.choices, required=False)
    allowed_zones = slug_list_field(required=False)
    priority_class = serializers.ChoiceField(choices=PriorityClass.choices, required=False)
    rate_limit_rps = serializers.IntegerField(min_value=0, max_value=1_000_000, required=False, help_text="0: no limit")
    rate_burst = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False, help_text="0: one second's worth")
    daily_quota = serializers.IntegerField(min_value=0, max_value=2_000_000_000, required=False, help_text="0: no quota")
    tokens_per_minute = serializers.IntegerField(min_value=0, max_value=2_000_000_000, required=False,
                                                 help_text="generative models: output tokens a minute (0: no limit)")  # fmt: skip
    max_tokens = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False,
                                          help_text="generative models: the most max_tokens a request may ask (0: no cap)")  # fmt: skip


class ApiKeySerializer(serializers.ModelSerializer):
    tenant: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    models: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(source="allowed_models", slug_field="name", many=True, read_only=True,
                                          help_text="models this key may call; empty means all the tenant's models")  # fmt: skip

    class Meta:
        model = ApiKey
        fields = ["id", "tenant", "name", "prefix", "models", "created", "expires_at", "revoked_at", "is_active"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", queryset=Tenant.objects.all())
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    models = serializers.SlugRelatedField(slug_field="name", queryset=Model.objects.all(), many=True, required=False,
                                          help_text="within the tenant's grants (api_key_create checks)")  # fmt: skip


class ApiKeyRotateSerializer(serializers.Serializer):
    overlap_s = serializers.IntegerField(min_value=0, max_value=30 * 86400, default=3600,
                                         help_text="how long the old key keeps working")  # fmt: skip


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself. Shown once, never again.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class ModelGrantSerializer(serializers.ModelSerializer):
    tenant = serializers.SlugRelatedField(slug_field="slug", queryset=Tenant.objects.all())
    model = serializers.SlugRelatedField(slug_field="name", queryset=Model.objects.all())

    class Meta:
        model = ModelGrant
        fields = ["id", "tenant", "model", "created"]
        read_only_fields = ["id", "created"]
