from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from appliance.core.api import changes_nothing
from appliance.policies import services
from appliance.policies.api.serializers import DryRunSerializer, ImpactSerializer, PolicyRuleSerializer
from appliance.policies.engine import RuleFacts
from appliance.policies.models import PolicyRule
from appliance.policies.selectors import policy_impact


class PolicyRuleViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Ordered data-residency rules; dry-run a change before saving it."""

    queryset = PolicyRule.objects.all()
    serializer_class = PolicyRuleSerializer
    resource = "policy_rule"

    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        serializer.instance = services.policy_rule_create(**serializer.validated_data)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        rule = self.get_object()
        body = PolicyRuleSerializer(rule, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        rule = services.policy_rule_update(rule=rule, **body.validated_data)
        return Response(PolicyRuleSerializer(rule).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.policy_rule_delete(rule=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=DryRunSerializer, responses=ImpactSerializer)
    @action(detail=False, methods=["post"], url_path="dry-run")
    @changes_nothing
    def dry_run(self, request: Request) -> Response:
        """What the proposed rules (and tenant changes) would change; nothing is saved."""
        body = DryRunSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        rules = None
        if "rules" in body.validated_data:
            rules = [
                RuleFacts(
                    position=r["position"], name=r["name"], effect=r["effect"],
                    operations=tuple(r.get("operations", ())), classifications=tuple(r.get("classifications", ())),
                    zones=tuple(r.get("zones", ())), sites=tuple(r.get("sites", ())),
                    require_tags=tuple(r.get("require_tags", ())), enabled=r.get("enabled", True),
                )
                for r in body.validated_data["rules"]
            ]  # fmt: skip
        impact = policy_impact(rules=rules, tenant_changes=body.validated_data.get("tenants"))
        return Response(impact)
