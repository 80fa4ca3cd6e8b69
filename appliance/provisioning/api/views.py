from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from appliance.provisioning import services
from appliance.provisioning.api.serializers import (
    ProvisioningRunCreateSerializer,
    ProvisioningRunDetailSerializer,
    ProvisioningRunSerializer,
)
from appliance.provisioning.models import ProvisioningRun


class ProvisioningRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Playbook runs through ansible-runner: add a node, re-provision one, or check every node
    for drift (--check --diff). Recorded first, run by the control worker; events as they come."""

    queryset = ProvisioningRun.objects.all()
    serializer_class = ProvisioningRunSerializer
    resource = "provisioning_run"

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        return ProvisioningRunDetailSerializer if self.action == "retrieve" else ProvisioningRunSerializer

    def get_queryset(self) -> Any:
        qs = super().get_queryset()
        return qs.prefetch_related("events") if self.action == "retrieve" else qs.defer("log")

    @extend_schema(request=ProvisioningRunCreateSerializer, responses={202: ProvisioningRunSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ProvisioningRunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.run_create(requested_by=request.user.get_username(), **body.validated_data)
        return Response(ProvisioningRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)
