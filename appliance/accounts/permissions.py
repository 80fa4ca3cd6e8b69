"""Who may do what through the REST API, by role.

- admin: everything; operator: everything but the residency policy (views list
  those actions in `admin_only_actions`);
- auditor: every read, nothing else (views list computations that are POSTs but
  change nothing in `read_only_actions`);
- tenant admin: only the actions a view lists in `tenant_admin_actions`, on
  querysets the view scopes to the tenant (TenantScopedMixin).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from appliance.accounts.choices import Role
from appliance.accounts.roles import role_of, tenant_id_of


class RolePermission(BasePermission):
    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        role = role_of(request.user)
        # ViewSets name their actions; plain APIViews are named by HTTP method.
        action = getattr(view, "action", None) or request.method.lower()
        if role is None:
            self.message = "Only operator accounts may use the control-plane API."
            return False
        if role == Role.ADMIN:
            return True
        if role == Role.OPERATOR:
            if action in getattr(view, "admin_only_actions", ()):
                self.message = "Only administrators may change this."
                return False
            return True
        reading = request.method in SAFE_METHODS or action in getattr(view, "read_only_actions", ())
        if role == Role.AUDITOR:
            self.message = "Auditors can read everything and change nothing."
            return reading
        self.message = "Tenant administrators may only manage their own tenant's keys."
        return action in getattr(view, "tenant_admin_actions", ())


class TenantScopedMixin:
    """Limits a tenant admin to rows of their tenant (`tenant_scope` is the lookup)."""

    tenant_scope = "tenant"

    def get_queryset(self) -> QuerySet[Any]:
        qs = super().get_queryset()  # type: ignore[misc]
        tenant_id = tenant_id_of(self.request.user)  # type: ignore[attr-defined]
        if tenant_id is None:
            return qs
        return qs.filter(**{self.tenant_scope: tenant_id}).distinct()

    def require_own_tenant(self, tenant: Any) -> None:
        tenant_id = tenant_id_of(self.request.user)  # type: ignore[attr-defined]
        if tenant_id is not None and tenant.pk != tenant_id:
            raise PermissionDenied("Tenant administrators manage only their own tenant.")
