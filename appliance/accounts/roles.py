"""Who an account is, for permission checks and queryset scoping."""

from __future__ import annotations

from typing import Any

from appliance.accounts.choices import Role


def role_of(user: Any) -> str | None:
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return Role.ADMIN
    row = getattr(user, "appliance_role", None)
    try:
        return row.role if row is not None else None
    except Exception:  # RelatedObjectDoesNotExist
        return None


def tenant_id_of(user: Any) -> object | None:
    """The tenant a tenant admin is limited to (None for everyone else)."""
    if role_of(user) != Role.TENANT_ADMIN:
        return None
    return user.appliance_role.tenant_id
