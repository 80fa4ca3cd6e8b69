"""The REST face of the role matrix (accounts.access): every view names its
`resource`; the request's action is "read" for GET and HEAD, else the
viewset's action ("create", "change" for PATCH, "delete", or its own name, such as
"rotate"); an APIView without actions names its write in `action`. OPTIONS (a
description of the endpoint) is open to every role; the writes it describes are those
the role may do."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from appliance.accounts import access
from appliance.accounts.roles import role_of

_STANDARD = {"create": access.CREATE, "update": access.CHANGE, "partial_update": access.CHANGE, "destroy": access.DELETE}
# OPTIONS: DRF's metadata asks, per write method the view has, whether that write would be
# allowed (a clone of the request with that method, the view's action still "metadata").
_METADATA = {"POST": access.CREATE, "PUT": access.CHANGE, "PATCH": access.CHANGE, "DELETE": access.DELETE}


def rest_action(view: Any, request: Request) -> str | None:
    """The matrix's name for this request; None where the view has no handler (DRF answers 405)."""
    method = str(request.method)
    if not hasattr(view, method.lower()):
        return None
    if method in SAFE_METHODS:
        return access.READ
    name = getattr(view, "action", None) or method.lower()
    if name == "metadata":
        return _METADATA.get(method)
    return _STANDARD.get(name, name)


def resource_of(view: Any) -> str:
    resource = getattr(view, "resource", None)
    if resource not in access.MATRIX:
        raise ImproperlyConfigured(f"{type(view).__name__} names no resource of the role matrix")
    return str(resource)


class RolePermission(BasePermission):
    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        role = role_of(request.user)
        if role is None:
            self.message = "Only operator accounts may use the control-plane API."
            return False
        if request.method == "OPTIONS":
            return True  # a description of the endpoint; DRF asks again for each write it describes
        action = rest_action(view, request)
        if action is None:
            return getattr(view, "action", None) != "metadata"  # no such write to describe
        resource = resource_of(view)
        if getattr(view, "action", None) == "metadata" and action not in access.MATRIX[resource].actions:
            return False  # OPTIONS describes only the writes the matrix has (a named action's URL, say)
        if access.permits(role, resource, action):
            return True
        self.message = access.refusal(role, resource, action)
        return False


class TenantScopedMixin:
    """Querysets of the view's resource, limited to a tenant admin's own rows (others are 404)."""

    def get_queryset(self) -> QuerySet[Any]:
        qs = super().get_queryset()  # type: ignore[misc]
        return access.scoped(qs, self.request.user, resource_of(self))  # type: ignore[attr-defined]
