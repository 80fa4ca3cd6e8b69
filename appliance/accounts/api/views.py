from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from appliance.core.api import ProtectedDestroyMixin
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from appliance.accounts import services
from appliance.accounts.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    ModelGrantSerializer,
    TenantSerializer,
    TenantUpdateSerializer,
)
from appliance.accounts.models import ApiKey, ModelGrant, Tenant
from appliance.core.errors import DomainError
from appliance.policies.choices import Classification


class TenantViewSet(
    ProtectedDestroyMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Internal teams that call models."""

    queryset = Tenant.objects.all()
    serializer_class = TenantSerializer
    lookup_field = "slug"
    lookup_value_regex = "[a-z0-9][a-z0-9_-]*"
    protected_message = "tenant '{obj}' still has API keys; revoke them and keep them for the record"

    def delete_service(self, obj: Any) -> None:
        services.tenant_delete(tenant=obj)

    def perform_create(self, serializer: TenantSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = services.tenant_create(
            slug=data["slug"], name=data.get("name", ""),
            classification=data.get("classification", Classification.INTERNAL), allowed_zones=data.get("allowed_zones", []),
        )  # fmt: skip

    @extend_schema(request=TenantUpdateSerializer, responses=TenantSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = TenantUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tenant = services.tenant_update(tenant=self.get_object(), **body.validated_data)
        return Response(TenantSerializer(tenant).data)



class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Inference API keys. The key is returned once, by create; only its prefix after that."""

    queryset = ApiKey.objects.select_related("tenant")
    serializer_class = ApiKeySerializer

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ApiKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        expires_at = body.validated_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise DomainError("expires_at must be in the future")
        key, plaintext = services.api_key_create(
            tenant=body.validated_data["tenant"], name=body.validated_data["name"], expires_at=expires_at
        )
        data = ApiKeyCreatedSerializer(key).data | {"key": plaintext}
        response = Response(data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        key = services.api_key_revoke(key=self.get_object())
        return Response(ApiKeySerializer(key).data)


class ModelGrantViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Which tenant may call which model."""

    queryset = ModelGrant.objects.select_related("tenant", "model")
    serializer_class = ModelGrantSerializer

    def perform_create(self, serializer: ModelGrantSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = services.grant_create(tenant=data["tenant"], model=data["model"])

    def perform_destroy(self, instance: ModelGrant) -> None:
        services.grant_delete(grant=instance)
