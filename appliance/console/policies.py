"""Console pages of the residency policy: the ordered rules, an editor for one rule,
a dry run that shows what the change would move or cut off before it is saved
(saving is an administrator's; the dry run is anyone's but a tenant admin's)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from appliance.console.access import context, domain_errors, guarded, require
from appliance.core.errors import DomainError
from appliance.policies import services
from appliance.policies.choices import Classification, Effect, Operation
from appliance.policies.engine import RuleFacts, current_rules
from appliance.policies.models import PolicyRule
from appliance.policies.selectors import policy_impact

LISTS = ("operations", "classifications", "zones", "sites", "require_tags")


def _proposed(request: HttpRequest) -> tuple[dict[str, Any], PolicyRule | None]:
    post = request.POST
    rule = PolicyRule.objects.filter(pk=post["id"]).first() if post.get("id") else None
    position = post.get("position", "").strip()
    if not position.isdigit():
        raise DomainError("position: a whole number (rules are evaluated in this order, lowest first)")
    fields: dict[str, Any] = {
        "position": int(position), "name": post.get("name", "").strip(), "effect": post.get("effect", ""),
        "operations": post.getlist("operations"), "classifications": post.getlist("classifications"),
        "zones": _words(post.get("zones", "")), "sites": _words(post.get("sites", "")),
        "require_tags": _words(post.get("require_tags", "")), "description": post.get("description", "").strip()[:500],
        "enabled": post.get("enabled") == "on",
    }  # fmt: skip
    if fields["effect"] not in Effect.values:
        raise DomainError("effect: allow or deny")
    return fields, rule


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.replace("\n", ",").split(",") if w.strip()]


def _facts(fields: dict[str, Any]) -> RuleFacts:
    return RuleFacts(position=fields["position"], name=fields["name"], effect=fields["effect"],
                     **{k: tuple(fields[k]) for k in LISTS}, enabled=fields["enabled"])  # fmt: skip


def _rules_with(fields: dict[str, Any] | None, rule: PolicyRule | None, delete: bool = False) -> list[RuleFacts]:
    today = current_rules()
    if rule is not None:
        today = [r for r in today if r.name != rule.name]
    if fields is not None and not delete:
        today = [r for r in today if r.position != fields["position"]] + [_facts(fields)]
    return today


def _common(request: HttpRequest, **values: Any) -> dict[str, Any]:
    return context(request, operations=Operation.choices, classifications=Classification.choices,
                   effects=Effect.choices, **values)  # fmt: skip


@guarded("policy_rule", "read")
def policies(request: HttpRequest) -> HttpResponse:
    rule = PolicyRule.objects.filter(pk=request.GET["edit"]).first() if request.GET.get("edit") else None
    next_position = (PolicyRule.objects.order_by("-position").values_list("position", flat=True).first() or 0) + 10
    return render(request, "console/policies.html", _common(
        request, rules=PolicyRule.objects.all(), rule=rule, next_position=next_position,
    ))  # fmt: skip


@require_POST
@guarded("policy_rule", "dry_run")
@domain_errors
def dry_run(request: HttpRequest) -> HttpResponse:
    """What saving (or deleting) this rule would change, over everything live now. Nothing is saved."""
    fields, rule = _proposed(request)
    delete = request.POST.get("delete") == "1"
    impact = policy_impact(rules=_rules_with(fields, rule, delete))
    return render(request, "console/_policy_impact.html", context(request, impact=impact, delete=delete))


@require_POST
@guarded("policy_rule", "create")
@domain_errors
def save(request: HttpRequest) -> HttpResponse:
    fields, rule = _proposed(request)
    if rule is not None:
        require(request, "policy_rule", "change")
    others = PolicyRule.objects.exclude(pk=rule.pk) if rule is not None else PolicyRule.objects.all()
    clash = others.filter(position=fields["position"]).first()
    if clash is not None:
        raise DomainError(f"position {fields['position']} is rule '{clash.name}'s: choose a free position")
    try:
        if rule is None:
            services.policy_rule_create(**fields)
        else:
            services.policy_rule_update(rule=rule, **fields)
    except ValidationError as exc:
        raise DomainError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
    return redirect("console:policies")


@require_POST
@guarded("policy_rule", "delete")
@domain_errors
def delete(request: HttpRequest, pk: str) -> HttpResponse:
    services.policy_rule_delete(rule=get_object_or_404(PolicyRule, pk=pk))
    return redirect("console:policies")


