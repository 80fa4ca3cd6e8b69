"""Who may use the REST API. Roles grow in the residency/access-control issue;
for now operators are staff accounts and everyone else is refused."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class IsOperator(BasePermission):
    message = "Only operator accounts may use the control-plane API."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_staff)
