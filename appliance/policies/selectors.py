"""What a policy change would do, before it is saved (dry run)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from appliance.accounts.models import Tenant
from appliance.policies.choices import Operation
from appliance.policies.engine import RuleFacts, TenantFacts, current_rules, evaluate, node_facts, tenant_facts
from appliance.rollouts.selectors import live_replicas


def policy_impact(
    *, rules: Sequence[RuleFacts] | None = None, tenant_changes: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Compares today's decisions with the proposed ones over everything live:
    replicas that would have to move, and tenants that would lose a model."""
    proposed_rules = current_rules() if rules is None else list(rules)
    today_rules = current_rules()
    tenants: dict[str, tuple[TenantFacts, TenantFacts]] = {}
    grants: dict[str, set[object]] = defaultdict(set)
    for tenant in Tenant.objects.prefetch_related("grants"):
        now = tenant_facts(tenant)
        change = (tenant_changes or {}).get(tenant.slug, {})
        later = replace(
            now,
            classification=change.get("classification", now.classification),
            allowed_zones=tuple(change.get("allowed_zones", now.allowed_zones)),
        )
        tenants[tenant.slug] = (now, later)
        grants[tenant.slug] = {g.model_id for g in tenant.grants.all()}

    must_move: list[dict[str, Any]] = []
    served: dict[tuple[str, str], list[bool]] = defaultdict(lambda: [False, False])
    for replica in live_replicas():
        version = replica.deployment.version
        place = node_facts(replica.node)
        for slug, (now, later) in tenants.items():
            if version.model_id not in grants[slug]:
                continue
            before = evaluate(today_rules, now, place, Operation.PROCESS)
            after = evaluate(proposed_rules, later, place, Operation.PROCESS)
            served[(slug, version.model.name)][0] |= before.allowed
            served[(slug, version.model.name)][1] |= after.allowed
            if before.allowed and not after.allowed:
                must_move.append({
                    "deployment": str(replica.deployment_id), "model": version.model.name, "version": version.number,
                    "node": replica.node.name, "tenant": slug, "rule": after.rule, "reason": after.explain(),
                })  # fmt: skip
    losing = [
        {"tenant": slug, "model": model}
        for (slug, model), (before, after) in sorted(served.items())
        if before and not after
    ]
    return {"replicas_that_must_move": must_move, "tenants_losing_service": losing}
