"""The residency policy: a matrix of classification × zone × operation, and the
tenant's own zone limit, through the one entry point."""

from __future__ import annotations

import pytest

from appliance.policies.engine import PlaceFacts, RuleFacts, TenantFacts, evaluate

RULES = [
    RuleFacts(10, "restricted-in-secure-hipaa", "allow", classifications=("restricted",), zones=("secure",),
              require_tags=("hipaa",), operations=("process",)),
    RuleFacts(20, "restricted-nowhere-else", "deny", classifications=("restricted",)),
    RuleFacts(30, "no-confidential-cache", "deny", classifications=("confidential",), operations=("cache",)),
    RuleFacts(40, "confidential-on-prem", "allow", classifications=("confidential",), zones=("secure", "onprem")),
    RuleFacts(50, "nothing-logged-in-dmz", "deny", operations=("log",), zones=("dmz",)),
    RuleFacts(60, "disabled-deny-all", "deny", enabled=False),
]  # fmt: skip

SECURE_HIPAA = PlaceFacts("gpu-s1", "secure", tags=frozenset({"hipaa"}))
SECURE = PlaceFacts("gpu-s2", "secure")
ONPREM = PlaceFacts("gpu-o1", "onprem")
DMZ = PlaceFacts("gpu-d1", "dmz")

# (classification, place, operation) -> (allowed, deciding rule)
MATRIX = [
    ("restricted", SECURE_HIPAA, "process", True, "restricted-in-secure-hipaa"),
    ("restricted", SECURE_HIPAA, "cache", False, "restricted-nowhere-else"),
    ("restricted", SECURE_HIPAA, "log", False, "restricted-nowhere-else"),
    ("restricted", SECURE, "process", False, "restricted-nowhere-else"),
    ("restricted", ONPREM, "process", False, "restricted-nowhere-else"),
    ("restricted", DMZ, "process", False, "restricted-nowhere-else"),
    ("confidential", SECURE, "process", True, "confidential-on-prem"),
    ("confidential", ONPREM, "process", True, "confidential-on-prem"),
    ("confidential", ONPREM, "cache", False, "no-confidential-cache"),
    ("confidential", ONPREM, "log", True, "confidential-on-prem"),
    ("confidential", DMZ, "process", False, "default"),
    ("confidential", DMZ, "log", False, "nothing-logged-in-dmz"),
    ("internal", DMZ, "process", True, "default"),
    ("internal", DMZ, "cache", True, "default"),
    ("internal", DMZ, "log", False, "nothing-logged-in-dmz"),
    ("internal", ONPREM, "log", True, "default"),
    ("public", SECURE, "cache", True, "default"),
    ("public", DMZ, "log", False, "nothing-logged-in-dmz"),
]


@pytest.mark.parametrize(("classification", "place", "operation", "allowed", "rule"), MATRIX,
                         ids=[f"{c}-{p.zone}{'+hipaa' if p.tags else ''}-{o}" for c, p, o, _, _ in MATRIX])  # fmt: skip
def test_policy_matrix(classification: str, place: PlaceFacts, operation: str, allowed: bool, rule: str) -> None:
    decision = evaluate(RULES, TenantFacts("acme", classification), place, operation)
    assert (decision.allowed, decision.rule) == (allowed, rule)
    assert place.name in decision.explain() and "acme" in decision.explain()


def test_the_tenant_zone_limit_comes_before_any_rule() -> None:
    tenant = TenantFacts("globex", "restricted", allowed_zones=("onprem",))
    decision = evaluate(RULES, tenant, SECURE_HIPAA, "process")
    assert (decision.allowed, decision.rule) == (False, "tenant-zones")
    assert "limited to zones onprem" in decision.explain()


def test_order_decides_not_listing_order() -> None:
    shuffled = list(reversed(RULES))
    decision = evaluate(shuffled, TenantFacts("acme", "restricted"), SECURE_HIPAA, "process")
    assert decision.rule == "restricted-in-secure-hipaa"


def test_reasons_name_the_rule_and_its_position() -> None:
    decision = evaluate(RULES, TenantFacts("acme", "confidential"), ONPREM, "cache")
    assert "policy rule 'no-confidential-cache' (#30)" in decision.explain()
