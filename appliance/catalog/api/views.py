from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from appliance.accounts.permissions import TenantScopedMixin
from appliance.catalog import services
from appliance.catalog.api.serializers import (
    ModelSerializer,
    ModelUpdateSerializer,
    ModelVersionCreateSerializer,
    ModelVersionSerializer,
    ValidationSetCreateSerializer,
    ValidationSetSerializer,
)
from appliance.catalog.models import Model, ModelVersion, ValidationSet
from appliance.catalog.profile import ProfileError
from appliance.catalog.tritonconfig import render_config
from appliance.core.api import SLUG_LOOKUP, ProtectedDestroyMixin
from appliance.core.api_input import JSONParser, MultiPartParser


class ModelViewSet(
    TenantScopedMixin,
    ProtectedDestroyMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Models that tenants call by name."""

    queryset = Model.objects.all()
    serializer_class = ModelSerializer
    lookup_field = "name"
    lookup_value_regex = SLUG_LOOKUP
    resource = "model"
    protected_message = "model '{obj}' has versions; it cannot be deleted"

    def delete_service(self, obj: Any) -> None:
        services.model_delete(model=obj)

    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        data = serializer.validated_data
        serializer.instance = services.model_create(
            name=data["name"], description=data.get("description", ""), response_cache=data.get("response_cache", False),
            serving_profile=data.get("serving_profile", {}), idle_unload_s=data.get("idle_unload_s", 0),
            autoscale=data.get("autoscale", {}), semantic_cache=data.get("semantic_cache", {}),
        )  # fmt: skip

    @extend_schema(request=ModelUpdateSerializer, responses=ModelSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ModelUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        model = services.model_update(model=self.get_object(), **body.validated_data)
        return Response(ModelSerializer(model).data)



class ModelVersionViewSet(
    TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Immutable versions of a model; creating one uploads its artifact (multipart)."""

    queryset = ModelVersion.objects.select_related("model")
    serializer_class = ModelVersionSerializer
    resource = "version"
    parser_classes = [MultiPartParser, JSONParser]

    def get_queryset(self) -> QuerySet[ModelVersion]:
        qs = super().get_queryset()
        model = self.request.query_params.get("model")
        return qs.filter(model__name=model) if model else qs

    @extend_schema(
        parameters=[OpenApiParameter("model", str, description="only versions of this model")],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ModelVersionCreateSerializer, responses={201: ModelVersionSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ModelVersionCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version = services.version_upload(**body.upload_kwargs())
        return Response(ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={
        (200, "text/plain"): str,
        (409, "text/plain"): OpenApiResponse(str, description="the model's serving profile does not fit this version"),
    })  # fmt: skip
    @action(detail=True, methods=["get"])
    def config(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The config.pbtxt a node would get for this version alone, with the model's serving profile."""
        version = self.get_object()
        try:
            text = render_config(version, versions=[version.number])
        except ProfileError as exc:
            return HttpResponse(f"the serving profile does not fit this version: {exc}\n", status=409,
                                content_type="text/plain")  # fmt: skip
        return HttpResponse(text, content_type="text/plain")


class ValidationSetViewSet(
    TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """The accuracy gate's validation sets of a model: a version derived from another (a
    parent) rolls out only once it has scored within each set's margin of its parent.
    Creating one uploads its file (multipart); deleting one loosens the gate (admins)."""

    queryset = ValidationSet.objects.select_related("model")
    serializer_class = ValidationSetSerializer
    resource = "validation_set"
    parser_classes = [MultiPartParser, JSONParser]

    def get_queryset(self) -> QuerySet[ValidationSet]:
        qs = super().get_queryset()
        model = self.request.query_params.get("model")
        return qs.filter(model__name=model) if model else qs

    @extend_schema(parameters=[OpenApiParameter("model", str, description="only the sets of this model")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ValidationSetCreateSerializer, responses={201: ValidationSetSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ValidationSetCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        validation_set = services.validation_set_upload(**body.upload_kwargs())
        return Response(ValidationSetSerializer(validation_set).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ValidationSet) -> None:
        services.validation_set_delete(validation_set=instance)
