from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from appliance.rollouts import services
from appliance.rollouts.api.serializers import DeploymentCreateSerializer, DeploymentSerializer
from appliance.rollouts.models import Deployment


class DeploymentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """A model version placed on nodes; creating one starts its rollout."""

    queryset = Deployment.objects.select_related("version__model").prefetch_related("replicas__node")
    serializer_class = DeploymentSerializer

    def get_queryset(self) -> QuerySet[Deployment]:
        qs = super().get_queryset()
        model = self.request.query_params.get("model")
        return qs.filter(version__model__name=model) if model else qs

    @extend_schema(parameters=[OpenApiParameter("model", str, description="only deployments of this model")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=DeploymentCreateSerializer, responses={202: DeploymentSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = DeploymentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        deployment = services.deployment_create(
            version=body.validated_data["version"], nodes=body.validated_data.get("nodes", []),
            mig_devices=body.validated_data.get("mig_devices", []),
        )  # fmt: skip
        deployment = self.get_queryset().get(pk=deployment.pk)
        return Response(DeploymentSerializer(deployment).data, status=status.HTTP_202_ACCEPTED)
