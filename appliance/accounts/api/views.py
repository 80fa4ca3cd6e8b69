from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from appliance.accounts import access, services
from appliance.accounts.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeyRotateSerializer,
    ApiKeySerializer,
    ModelGrantSerializer,
    TenantSerializer,
    TenantUpdateSerializer,
)
from appliance.accounts.models import LIMIT_FIELDS, ApiKey, ModelGrant, Tenant
from appliance.accounts.permissions import TenantScopedMixin
from appliance.core.api import SLUG_LOOKUP, ProtectedDestroyMixin
from appliance.core.errors import DomainError
from appliance.policies.choices import Classification


class TenantViewSet(
    TenantScopedMixin,
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
    lookup_value_regex = SLUG_LOOKUP
    resource = "tenant"
    protected_message = "tenant '{obj}' still has API keys; revoke them and keep them for the record"

    def delete_service(self, obj: Any) -> None:
        services.tenant_delete(tenant=obj)

    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        data = serializer.validated_data
        serializer.instance = services.tenant_create(
            slug=data["slug"], name=data.get("name", ""),
            classification=data.get("classification", Classification.INTERNAL), allowed_zones=data.get("allowed_zones", []),
            **{k: data[k] for k in LIMIT_FIELDS if k in data},
        )  # fmt: skip

    @extend_schema(request=TenantUpdateSerializer, responses=TenantSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = TenantUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tenant = services.tenant_update(tenant=self.get_object(), **body.validated_data)
        return Response(TenantSerializer(tenant).data)



class ApiKeyViewSet(TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Inference API keys. The key is returned once, by create or rotate; only its prefix after that."""

    queryset = ApiKey.objects.select_related("tenant").prefetch_related("allowed_models")
    serializer_class = ApiKeySerializer
    resource = "api_key"


    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ApiKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        expires_at = body.validated_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise DomainError("expires_at must be in the future")
        access.require_own_tenant(request.user, body.validated_data["tenant"])
        key, plaintext = services.api_key_create(
            tenant=body.validated_data["tenant"], name=body.validated_data["name"], expires_at=expires_at,
            models=body.validated_data.get("models", []),
        )  # fmt: skip
        return _shown_once(key, plaintext, status.HTTP_201_CREATED)

    @extend_schema(request=ApiKeyRotateSerializer, responses={201: ApiKeyCreatedSerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, pk: str | None = None) -> Response:
        """A new key with the same tenant, name and scope; the old one keeps working
        for `overlap_s` seconds (then expires), so clients can switch without an outage."""
        body = ApiKeyRotateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key, plaintext = services.api_key_rotate(key=self.get_object(), overlap_s=body.validated_data["overlap_s"])
        return _shown_once(key, plaintext, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        key = services.api_key_revoke(key=self.get_object())
        return Response(ApiKeySerializer(key).data)


def _shown_once(key: ApiKey, plaintext: str, code: int) -> Response:
    response = Response(ApiKeyCreatedSerializer(key).data | {"key": plaintext}, status=code)
    response["Cache-Control"] = "no-store"
    return response


class ModelGrantViewSet(
    TenantScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Which tenant may call which model."""

    queryset = ModelGrant.objects.select_related("tenant", "model")
    serializer_class = ModelGrantSerializer
    resource = "grant"


    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        data = serializer.validated_data
        serializer.instance = services.grant_create(tenant=data["tenant"], model=data["model"])

    def perform_destroy(self, instance: ModelGrant) -> None:
        services.grant_delete(grant=instance)
