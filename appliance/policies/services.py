"""Writes for policy rules, and the denial record every enforcement point leaves."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from appliance.audit.services import audit_record
from appliance.core.errors import DomainError
from appliance.core.services import update_locked
from appliance.policies.engine import Decision
from appliance.policies.models import PolicyRule


class PolicyDenied(DomainError):
    """An action the residency policy forbids."""

    http_status = 403


_FIELDS = ("position", "name", "effect", "operations", "classifications", "zones", "sites", "require_tags",
           "description", "enabled")  # fmt: skip


@transaction.atomic
def policy_rule_create(**fields: Any) -> PolicyRule:
    rule = PolicyRule(**{k: v for k, v in fields.items() if k in _FIELDS})
    rule.full_clean()
    rule.save()
    return rule


@transaction.atomic
def policy_rule_update(*, rule: PolicyRule, **fields: Any) -> PolicyRule:
    return update_locked(rule, **{name: value for name, value in fields.items() if name in _FIELDS})


@transaction.atomic
def policy_rule_delete(*, rule: PolicyRule) -> None:
    rule.delete()


def policy_denial_record(*, decision: Decision, operation: str, tenant: str, place: str, subject: str) -> None:
    """Audits a denial in a transaction of its own, so that the refused work's
    rollback does not take the record of the refusal with it."""
    with transaction.atomic():
        audit_record(
            action="policy.deny",
            target_type="tenant",
            target_id=tenant,
            target_repr=f"{tenant} → {place}",
            changes={"operation": operation, "rule": decision.rule, "reasons": list(decision.reasons), "subject": subject},
        )
