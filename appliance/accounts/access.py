"""One access policy: which role may do what, to which rows, in the REST API and the
console alike.

Both faces ask this module -- the API through `accounts.permissions.RolePermission`
(each view names its `resource`), the console through `console.access.guarded`
(each page names its resource and action) -- so they cannot disagree.
tests/api/test_access_matrix.py walks every API route and console page for every
role against MATRIX; an endpoint or page that names no entry here fails it.

Actions: "read" is every GET (lists, details, exports, computed views); writes are
"create", "change" (PATCH), "delete"; named actions keep their names ("rotate",
"revoke", "drain", "rollback", "dry_run", "plan", ...).

Roles:
- admin: everything.
- operator: everything but the residency policy (its rules are an admin's).
- auditor: every read, including the computations that change nothing (a policy dry
  run, a MIG layout plan); no write.
- tenant admin: always within their own tenant --
  * reads their tenant, its grants and the models granted to it;
  * reads the versions and deployments of those models (watching the rollout of
    their model is theirs; steering it is the operators');
  * creates, rotates and revokes their tenant's API keys;
  * sees their tenant's traffic (console overview and metrics).
  Not the fleet (nodes, GPUs, MIG devices and layouts, reconfigurations: shared by
  every tenant), not the residency policy (its rules name every tenant's zones),
  not the audit trail (it records every tenant's actions).

Rows of another tenant are not found (404) wherever a URL names them, in the API
and the console alike; a request body that names another tenant is refused (403).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db.models import Model, QuerySet

from appliance.accounts.choices import Role
from appliance.accounts.roles import tenant_id_of

ADMIN, OPERATOR, AUDITOR, TENANT_ADMIN = Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.TENANT_ADMIN

ADMINS = frozenset({ADMIN})
STAFF = frozenset({ADMIN, OPERATOR})
READERS = frozenset({ADMIN, OPERATOR, AUDITOR})
EVERYONE = frozenset(Role.values)

# Reads: GET. Writes with DRF's standard names; other actions keep their own name.
READ, CREATE, CHANGE, DELETE = "read", "create", "change", "delete"


@dataclass(frozen=True)
class Resource:
    """Who may do each action to one noun; `tenant_path` leads from its rows to their
    tenant: a tenant admin sees only rows where it is theirs (none without a path)."""

    actions: Mapping[str, frozenset[str]]
    tenant_path: str = ""


def _crud(read: frozenset[str], write: frozenset[str], *extra: str) -> dict[str, frozenset[str]]:
    return {READ: read, CREATE: write, CHANGE: write, DELETE: write} | {name: write for name in extra}


MATRIX: dict[str, Resource] = {
    # The fleet: shared by every tenant, so no tenant admin's.
    "node": Resource(_crud(READERS, STAFF, "drain", "maintenance", "undrain", "clear_fault", "reconfigure",
                           "revoke_credential")),
    # One-time tokens a new server enrols with (the plaintext is shown once, to the staff member who made it).
    "join_token": Resource({READ: READERS, CREATE: STAFF, "revoke": STAFF}),
    # Playbook runs (add a node, re-provision, drift check): the operators' work; the runs' logs are readers'.
    "provisioning_run": Resource({READ: READERS, CREATE: STAFF}),
    "mig_device": Resource({READ: READERS, CHANGE: STAFF}),  # change: dedicate to a tenant
    "mig_layout": Resource({"plan": READERS}),  # where a layout would place its instances; saves nothing
    "reconfiguration": Resource({READ: READERS}),
    # The catalog and rollouts: a tenant admin reads what concerns the models granted to the tenant.
    "model": Resource(_crud(READERS | {TENANT_ADMIN}, STAFF), tenant_path="grants__tenant"),
    "version": Resource({READ: READERS | {TENANT_ADMIN}, CREATE: STAFF}, tenant_path="model__grants__tenant"),
    # override: deploying a version the accuracy gate refuses (the gate_override_reason field of a create).
    "deployment": Resource(
        {READ: READERS | {TENANT_ADMIN}, CREATE: STAFF, "pause": STAFF, "resume": STAFF, "abort": STAFF,
         "rollback": STAFF, "override": ADMINS},
        tenant_path="version__model__grants__tenant",
    ),  # fmt: skip
    # The accuracy gate's validation sets: adding one only tightens the gate (staff); deleting one loosens
    # it as an override would (an admin's). Not a tenant admin's: the gate is the operators' check.
    "validation_set": Resource({READ: READERS, CREATE: STAFF, DELETE: ADMINS}),
    # Optimisation jobs make candidate versions (never deploy them): the operators' work.
    "optimisation_job": Resource({READ: READERS, CREATE: STAFF, "cancel": STAFF}),
    # Profile searches measure a version on the optimiser's Triton; applying one changes the model's serving
    # profile (as a model change would: staff).
    "profile_search": Resource({READ: READERS, CREATE: STAFF, "apply": STAFF, "cancel": STAFF}),
    # Gate runs measure a version against its parent and record its gate results (they judge; never deploy).
    "gate_run": Resource({READ: READERS, CREATE: STAFF, "cancel": STAFF}),
    # Tenants: limits and grants are the operators'; the keys are also the tenant admin's.
    "tenant": Resource(_crud(READERS | {TENANT_ADMIN}, STAFF), tenant_path="pk"),
    "grant": Resource({READ: READERS | {TENANT_ADMIN}, CREATE: STAFF, DELETE: STAFF}, tenant_path="tenant"),
    "api_key": Resource(
        {READ: READERS | {TENANT_ADMIN}, CREATE: STAFF | {TENANT_ADMIN}, "rotate": STAFF | {TENANT_ADMIN},
         "revoke": STAFF | {TENANT_ADMIN}},
        tenant_path="tenant",
    ),  # fmt: skip
    # The residency policy: an admin's; a dry run changes nothing.
    "policy_rule": Resource(_crud(READERS, ADMINS) | {"dry_run": READERS}),
    "audit_event": Resource({READ: READERS}),
    # Pages over traffic: a tenant admin's show the tenant's own numbers (filtered by its slug).
    "overview": Resource({READ: EVERYONE}),
    "metrics": Resource({READ: EVERYONE}),
    "api_root": Resource({READ: EVERYONE}),  # the REST API's index of its routes
}

_PLURAL: dict[str, str] = {ADMIN: "administrators", OPERATOR: "operators", AUDITOR: "auditors", TENANT_ADMIN: "tenant administrators"}


def roles_for(resource: str, action: str) -> frozenset[str]:
    """The roles that may; an unknown resource or action is a programming error (loud)."""
    try:
        return MATRIX[resource].actions[action]
    except KeyError:
        raise ImproperlyConfigured(f"the role matrix has no rule for {resource}.{action}") from None


def permits(role: str | None, resource: str, action: str) -> bool:
    return role in roles_for(resource, action)


def refusal(role: str | None, resource: str, action: str) -> str:
    """Why `role` may not, in words."""
    if role is None:
        return "This account has no role in the appliance."
    if role == AUDITOR:
        return "Auditors can read everything and change nothing."
    allowed = [_PLURAL[r] for r in Role.values if r in roles_for(resource, action)]
    who = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} and {allowed[-1]}"
    return f"Only {who} may {action.replace('_', ' ')} this ({resource.replace('_', ' ')})."


def capabilities(role: str | None) -> dict[str, dict[str, bool]]:
    """Everything `role` may, as {resource: {action: bool}} (templates: `may.node.drain`)."""
    return {name: {action: role in roles for action, roles in res.actions.items()} for name, res in MATRIX.items()}


M = TypeVar("M", bound=Model)


def scoped(queryset: QuerySet[M], user: Any, resource: str) -> QuerySet[M]:
    """The rows of `resource` the user may see: all of them, or a tenant admin's own."""
    tenant_id = tenant_id_of(user)
    if tenant_id is None:
        return queryset
    path = MATRIX[resource].tenant_path
    return queryset.filter(**{path: tenant_id}) if path else queryset.none()


def require_own_tenant(user: Any, tenant: Any) -> None:
    """A request body that names another tenant than a tenant admin's own is refused."""
    tenant_id = tenant_id_of(user)
    if tenant_id is not None and tenant.pk != tenant_id:
        raise PermissionDenied("Tenant administrators manage only their own tenant.")

