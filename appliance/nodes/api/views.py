from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.core.api import SLUG_LOOKUP, ProtectedDestroyMixin, changes_nothing
from appliance.core.errors import DomainError
from appliance.nodes import broker, services
from appliance.nodes.api.serializers import (
    EnrolledSerializer,
    EnrolSerializer,
    JoinTokenCreatedSerializer,
    JoinTokenCreateSerializer,
    JoinTokenSerializer,
    MigDeviceDedicateSerializer,
    MigDeviceSerializer,
    MigPlanRequestSerializer,
    MigPlanSerializer,
    NodeHealthChangeSerializer,
    NodeListSerializer,
    NodeSelfSerializer,
    NodeSerializer,
    NodeUpdateSerializer,
    ReconfigurationSerializer,
    ReconfigureRequestSerializer,
)
from appliance.nodes.choices import AdminState
from appliance.nodes.mig.catalog import GPU_MODELS
from appliance.nodes.mig.planner import plan
from appliance.nodes.models import JoinToken, MigDevice, Node, Reconfiguration


class NodeViewSet(
    ProtectedDestroyMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """GPU and CPU nodes. Node agents register themselves; operators may pre-register."""

    queryset = Node.objects.prefetch_related("gpus__mig_devices")
    serializer_class = NodeSerializer
    resource = "node"

    def get_serializer_class(self) -> type[NodeSerializer]:
        return NodeListSerializer if self.action == "list" else NodeSerializer

    def get_queryset(self) -> QuerySet[Node]:
        if self.action == "list":
            return Node.objects.prefetch_related("gpus")
        return super().get_queryset()
    lookup_field = "name"
    lookup_value_regex = SLUG_LOOKUP
    protected_message = "node '{obj}' still holds deployments; roll them off first"

    def delete_service(self, obj: Any) -> None:
        services.node_delete(node=obj)

    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        data = serializer.validated_data
        serializer.instance = services.node_create(
            name=data["name"], zone=data.get("zone", "default"), site=data.get("site", ""),
            compliance_tags=data.get("compliance_tags", []),
            grpc_address=data.get("grpc_address", ""), http_address=data.get("http_address", ""),
        )  # fmt: skip

    @extend_schema(request=NodeUpdateSerializer, responses=NodeSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        node = self.get_object()
        body = NodeUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        node = services.node_update(node=node, **body.validated_data)
        return Response(NodeSerializer(node).data)



    def _admin_state(self, state: str) -> Response:
        node = services.node_set_admin_state(node=self.get_object(), admin_state=state)
        return Response(NodeSerializer(self.get_queryset().get(pk=node.pk)).data)

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"])
    def drain(self, request: Request, name: str | None = None) -> Response:
        """Stop sending the node new requests (requests in flight finish)."""
        return self._admin_state(AdminState.DRAINING)

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"])
    def maintenance(self, request: Request, name: str | None = None) -> Response:
        """Take the node out of service for maintenance."""
        return self._admin_state(AdminState.MAINTENANCE)

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"])
    def undrain(self, request: Request, name: str | None = None) -> Response:
        """Back into service (routing resumes once the node is healthy)."""
        return self._admin_state(AdminState.ACTIVE)

    @extend_schema(request=ReconfigureRequestSerializer, responses={202: ReconfigurationSerializer})
    @action(detail=True, methods=["post"])
    def reconfigure(self, request: Request, name: str | None = None) -> Response:
        """Apply a MIG layout to one GPU: planned now, carried out by the node agent step by step."""
        body = ReconfigureRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.reconfiguration_create(
            node=self.get_object(), gpu_index=body.validated_data["gpu"], layout=body.validated_data["layout"],
            inject_failure_at=body.validated_data["inject_failure_at"],
        )  # fmt: skip
        return Response(ReconfigurationSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"], url_path="revoke-credential")
    def revoke_credential(self, request: Request, name: str | None = None) -> Response:
        """Cut the node off: its credential stops working, nothing is routed or placed there, and
        its agent stops serving at its next heartbeat. It returns only by enrolling again."""
        node = services.node_revoke_credential(node=self.get_object())
        return Response(NodeSerializer(self.get_queryset().get(pk=node.pk)).data)

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"], url_path="clear-fault")
    def clear_fault(self, request: Request, name: str | None = None) -> Response:
        """The operator has looked at a failed reconfiguration: the node may be healthy again."""
        node = services.node_clear_fault(node=self.get_object())
        return Response(NodeSerializer(self.get_queryset().get(pk=node.pk)).data)

    @extend_schema(responses=NodeHealthChangeSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="health-history")
    def health_history(self, request: Request, name: str | None = None) -> Response:
        """The node's health changes, newest first, in pages like every list."""
        page = self.paginate_queryset(self.get_object().health_history.order_by("-time", "-pk"))
        return self.get_paginated_response(NodeHealthChangeSerializer(page, many=True).data)


class MigDeviceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """MIG devices of the fleet; dedicate one to a tenant (a tenant slice)."""

    queryset = MigDevice.objects.select_related("gpu__node", "tenant")
    serializer_class = MigDeviceSerializer
    resource = "mig_device"
    lookup_field = "uuid"
    lookup_value_regex = "[^/]+"

    @extend_schema(request=MigDeviceDedicateSerializer, responses=MigDeviceSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = MigDeviceDedicateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        device = services.mig_device_dedicate(device=self.get_object(), tenant=body.validated_data["tenant"])
        return Response(MigDeviceSerializer(self.get_queryset().get(pk=device.pk)).data)


class ReconfigurationViewSet(viewsets.ReadOnlyModelViewSet):
    """MIG reconfigurations and their steps, newest first."""

    queryset = Reconfiguration.objects.select_related("node").prefetch_related("steps")
    serializer_class = ReconfigurationSerializer
    resource = "reconfiguration"


class MigPlanView(APIView):
    """Where a MIG layout would place each instance on one GPU model, or why it cannot."""

    resource = "mig_layout"
    action = "plan"

    @extend_schema(request=MigPlanRequestSerializer, responses={200: MigPlanSerializer})
    @changes_nothing
    def post(self, request: Request) -> Response:
        body = MigPlanRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = plan(GPU_MODELS[body.validated_data["gpu_model"]], body.validated_data["profiles"])
        if not result.ok:
            raise DomainError(result.reason)
        return Response({"placements": [str(p) for p in result.placements]})


class JoinTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """One-time, expiring tokens that let a new server enrol as a node (the provisioning playbook
    presents one). The token is shown once, at creation; only its hash is kept."""

    queryset = JoinToken.objects.select_related("used_by")
    serializer_class = JoinTokenSerializer
    resource = "join_token"

    @extend_schema(request=JoinTokenCreateSerializer, responses={201: JoinTokenCreatedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = JoinTokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        token, plaintext = services.join_token_create(created_by=request.user.get_username(), **body.validated_data)
        return Response(JoinTokenSerializer(token).data | {"token": plaintext}, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=JoinTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Withdraw an unused token."""
        return Response(JoinTokenSerializer(services.join_token_revoke(token=self.get_object())).data)


def bearer(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


class EnrolView(APIView):
    """A new server joins: the join token in the body admits it once (no operator session).
    401: the token is wrong; 403: used, expired or revoked (the detail says which and when);
    409: a node of that name is already enrolled."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    secret_refusals = ("401", "403")  # the schema declares them (core.api.AutoSchema)
    unavailable_errors = ("503",)  # the broker's management API did not make the node's broker user

    @extend_schema(request=EnrolSerializer, responses={201: EnrolledSerializer})
    def post(self, request: Request) -> Response:
        body = EnrolSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        with audit_context(origin=Origin.API, actor=f"enrolment:{data['name']}", actor_resolver=None):
            enrolled = services.node_enrol(token=data["token"], name=data["name"], zone=data["zone"], site=data["site"],
                                           compliance_tags=data["compliance_tags"], machine_id=data["machine_id"])  # fmt: skip
        return Response({"node": NodeSerializer(enrolled.node).data, "credential": enrolled.credential},
                        status=status.HTTP_201_CREATED)  # fmt: skip


class NodeSelfView(APIView):
    """A node reads what the control plane holds for it, with its own credential as
    `Authorization: Bearer` (the playbook's re-runs; the MIG boot unit reads its declared
    layout here). 401 for a wrong or revoked credential."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    secret_refusals = ("401",)

    @extend_schema(request=None, responses=NodeSelfSerializer)
    def get(self, request: Request) -> Response:
        node = services.node_authenticate(credential=bearer(request))
        layouts = {str(gpu.index): [{"profile": d.profile, "start": d.start}
                                    for d in sorted(gpu.mig_devices.all(), key=lambda d: d.start)]
                   for gpu in node.gpus.prefetch_related("mig_devices") if gpu.mig_enabled}  # fmt: skip
        return Response(NodeSelfSerializer({"name": node.name, "zone": node.zone, "site": node.site,
                                            "compliance_tags": node.compliance_tags, "admin_state": node.admin_state,
                                            "broker_user": broker.user_name(node.name) if broker.enabled() else "",
                                            "mig_layouts": layouts}).data)  # fmt: skip


class NodeArtifactView(APIView):
    """A provisioned node fetches the artifact of a version placed on it (it shares no disk
    with the control plane), with its own credential as `Authorization: Bearer`. 401 for a
    wrong or revoked credential; 404 for an artifact no replica of this node needs."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    secret_refusals = ("401",)

    @extend_schema(request=None, responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, sha256: str) -> FileResponse:
        from appliance.catalog.artifacts import artifact_path
        from appliance.catalog.models import ModelVersion
        from appliance.nodes import workloads

        node = services.node_authenticate(credential=bearer(request))
        placed = {(w.model, w.version) for w in workloads.resident(node_id=node.pk)}
        with_artifact = ModelVersion.objects.filter(artifact_sha256=sha256).values_list("model__name", "number")
        if not placed & set(with_artifact):
            raise Http404("no version placed on this node has that artifact")
        path = artifact_path(sha256)
        if not path.exists():  # the store lost it: the node's load fails saying so, not a 500 here
            raise Http404("the artifact is not in the control plane's store")
        return FileResponse(path.open("rb"), content_type="application/octet-stream")
