"""`POST /api/v1/agent/<op>/`: a provisioned node agent's requests to the control plane
(agentapi/ops.py), with the node's own credential as `Authorization: Bearer`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from appliance.agentapi import ops
from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.nodes import services as nodes
from appliance.nodes.api.views import bearer


class AgentOperationView(APIView):
    """One operation of a node agent, for the node its credential names: JSON arguments in,
    `{"result": …}` out. 401: a wrong or revoked credential (the agent stops serving);
    403: the request names another node's replica, run or version; 404: no such operation
    or object; 400: arguments the operation does not take; 409: the node's state refuses it."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    secret_refusals = ("401", "403")

    @extend_schema(
        parameters=[OpenApiParameter("op", str, OpenApiParameter.PATH, enum=ops.names(),
                                     description="the operation (agentapi/ops.py)")],  # fmt: skip
        request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request, op: str) -> Response:
        credential = bearer(request)
        node = nodes.node_authenticate(credential=credential)  # 401 when wrong or revoked
        # The node is the actor; the agent's X-Request-ID (the correlation id of the task it runs,
        # taken by the audit middleware) links its writes to the request that caused them.
        with audit_context(origin=Origin.AGENT, actor=f"agent:{node.name}", actor_resolver=None):
            status, body = ops.answer(op, request.data, node=node, credential=credential)
        return Response(body, status=status)
