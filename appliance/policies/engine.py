"""The one place residency rules are evaluated: `check(...)`.

Placement (rollouts), routing (the gateway) and, later, caching and logging call
check() and act on its Decision; nothing else interprets a rule. Rules are
ordered; the first enabled rule that matches the request decides. Before any
rule, a tenant's own allowed zones are a hard limit. With no match, public and
internal data are allowed and confidential and restricted data are not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.policies.choices import ALLOWED_BY_DEFAULT, Effect


@dataclass(frozen=True)
class TenantFacts:
    slug: str
    classification: str
    allowed_zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlaceFacts:
    """Where the data would go: a node (or, for a cache, a zone)."""

    name: str
    zone: str
    site: str = ""
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RuleFacts:
    position: int
    name: str
    effect: str
    operations: tuple[str, ...] = ()
    classifications: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    require_tags: tuple[str, ...] = ()
    enabled: bool = True

    def matches(self, tenant: TenantFacts, place: PlaceFacts, operation: str) -> bool:
        return (
            self.enabled
            and (not self.operations or operation in self.operations)
            and (not self.classifications or tenant.classification in self.classifications)
            and (not self.zones or place.zone in self.zones)
            and (not self.sites or place.site in self.sites)
            and set(self.require_tags) <= place.tags
        )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def explain(self) -> str:
        return "; ".join(self.reasons)


def evaluate(rules: Sequence[RuleFacts], tenant: TenantFacts, place: PlaceFacts, operation: str) -> Decision:
    what = f"{tenant.classification} data of tenant '{tenant.slug}'"
    where = f"node '{place.name}' (zone '{place.zone}'" + (f", site '{place.site}'" if place.site else "") + ")"
    if tenant.allowed_zones and place.zone not in tenant.allowed_zones:
        return Decision(False, "tenant-zones", (
            f"{operation} of {what} is denied on {where}: the tenant is limited to zones {', '.join(tenant.allowed_zones)}",
        ))  # fmt: skip
    for rule in sorted(rules, key=lambda r: r.position):
        if rule.matches(tenant, place, operation):
            verb = "allowed" if rule.effect == Effect.ALLOW else "denied"
            return Decision(rule.effect == Effect.ALLOW, rule.name, (
                f"{operation} of {what} is {verb} on {where} by policy rule '{rule.name}' (#{rule.position})",
            ))  # fmt: skip
    allowed = tenant.classification in ALLOWED_BY_DEFAULT
    verb = "allowed" if allowed else "denied"
    return Decision(allowed, "default", (
        f"{operation} of {what} is {verb} on {where} by the default (no rule matched: "
        "public and internal data are allowed, confidential and restricted need a rule that allows them)",
    ))  # fmt: skip


def rule_facts(rules: Iterable[Any]) -> list[RuleFacts]:
    return [
        RuleFacts(
            position=r.position, name=r.name, effect=r.effect, operations=tuple(r.operations),
            classifications=tuple(r.classifications), zones=tuple(r.zones), sites=tuple(r.sites),
            require_tags=tuple(r.require_tags), enabled=r.enabled,
        )
        for r in rules
    ]  # fmt: skip


def tenant_facts(tenant: Any) -> TenantFacts:
    return TenantFacts(slug=tenant.slug, classification=tenant.classification, allowed_zones=tuple(tenant.allowed_zones))


def node_facts(node: Any) -> PlaceFacts:
    return PlaceFacts(name=node.name, zone=node.zone, site=node.site, tags=frozenset(node.compliance_tags))


def current_rules() -> list[RuleFacts]:
    from appliance.policies.models import PolicyRule

    return rule_facts(PolicyRule.objects.all())


def check(
    *, tenant: Any, operation: str, node: Any = None, zone: str = "", rules: Sequence[RuleFacts] | None = None
) -> Decision:
    """The policy entry point: may `operation` on `tenant`'s data happen on `node`
    (or, for something that lives in a zone rather than on a node — the gateway's
    response cache — in `zone`)?"""
    place = node_facts(node) if node is not None else PlaceFacts(name=f"the {operation} store", zone=zone)
    return evaluate(current_rules() if rules is None else rules, tenant_facts(tenant), place, operation)
