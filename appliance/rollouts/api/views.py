from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from appliance.accounts import access
from appliance.accounts.permissions import TenantScopedMixin
from appliance.accounts.roles import role_of
from appliance.rollouts import services
from appliance.rollouts.api.serializers import DeploymentCreateSerializer, DeploymentSerializer
from appliance.rollouts.models import Deployment


class DeploymentViewSet(
    TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """A model version placed on nodes; creating one starts its rollout (all at once,
    blue-green or canary), which the actions pause, resume, abort or roll back."""

    queryset = Deployment.objects.select_related("version__model", "previous__version").prefetch_related("replicas__node")
    serializer_class = DeploymentSerializer
    resource = "deployment"

    def get_queryset(self) -> QuerySet[Deployment]:
        qs = super().get_queryset()
        model = self.request.query_params.get("model")
        return qs.filter(version__model__name=model) if model else qs

    @extend_schema(parameters=[OpenApiParameter("model", str, description="only deployments of this model")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(DeploymentSerializer(self.get_object(), context={"detail": True}).data)

    @extend_schema(request=DeploymentCreateSerializer, responses={202: DeploymentSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = DeploymentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if "gate_override_reason" in data:
            role = role_of(request.user)
            if not access.permits(role, "deployment", "override"):
                raise PermissionDenied(access.refusal(role, "deployment", "override"))
        deployment = services.deployment_create(
            version=data["version"], nodes=data.get("nodes", []), mig_devices=data.get("mig_devices", []),
            replicas=data.get("replicas"), strategy=data["strategy"], steps=data.get("steps"),
            step_seconds=data.get("step_seconds"), gate=data.get("gate"),
            gate_override_reason=data.get("gate_override_reason", ""),
        )  # fmt: skip
        return self._answer(deployment, status.HTTP_202_ACCEPTED)

    def _answer(self, deployment: Deployment, code: int = status.HTTP_200_OK) -> Response:
        return Response(DeploymentSerializer(self.get_queryset().get(pk=deployment.pk)).data, status=code)

    def _actor(self, request: Request) -> str:
        return f"user:{request.user.get_username()}" if request.user and request.user.is_authenticated else "unknown"

    @extend_schema(request=None, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Holds the traffic split where it is; the gate stops judging."""
        return self._answer(services.deployment_pause(deployment_id=self.get_object().pk))

    @extend_schema(request=None, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Continues a paused rollout; the current step is judged afresh."""
        return self._answer(services.deployment_resume(deployment_id=self.get_object().pk))

    @extend_schema(request=None, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def abort(self, request: Request, pk: str | None = None) -> Response:
        """Stops a rollout in progress: all traffic back to the previous version."""
        return self._answer(services.deployment_abort(deployment_id=self.get_object().pk, actor=self._actor(request)))

    @extend_schema(request=None, responses={200: DeploymentSerializer, 202: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """During a rollout: as abort. After promotion: starts an all-at-once rollout of
        the previous version (answered with that new deployment, 202)."""
        deployment = self.get_object()
        result = services.deployment_rollback(deployment_id=deployment.pk, actor=self._actor(request))
        return self._answer(result, status.HTTP_202_ACCEPTED if result.pk != deployment.pk else status.HTTP_200_OK)
