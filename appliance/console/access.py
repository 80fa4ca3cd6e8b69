"""Who sees and does what in the console; the same rules as the REST API
(accounts/permissions.py): admins everything; operators everything but the
residency policy; auditors see everything and change nothing; tenant admins see
only their tenant and manage only its keys."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, resolve_url

from appliance.accounts.choices import Role
from appliance.accounts.roles import role_of, tenant_id_of
from appliance.core.errors import DomainError

ACTORS = (Role.ADMIN, Role.OPERATOR)


def context(request: HttpRequest, **values: Any) -> dict[str, Any]:
    role = role_of(request.user)
    if role is None:
        raise PermissionDenied("this account has no role in the appliance")
    return {
        "role": role,
        "can_act": role in ACTORS,
        "is_admin": role == Role.ADMIN,
        "is_tenant_admin": role == Role.TENANT_ADMIN,
        **values,
    }


def tenant_scope(request: HttpRequest) -> Any:
    """The tenant id a tenant admin is limited to; None for everyone else."""
    return tenant_id_of(request.user)


def fleet_only(request: HttpRequest) -> None:
    if role_of(request.user) == Role.TENANT_ADMIN:
        raise PermissionDenied("the fleet is not a tenant admin's to see")


def require_actor(request: HttpRequest, what: str = "change this") -> None:
    if role_of(request.user) not in ACTORS:
        raise PermissionDenied(f"only admins and operators may {what}")


def require_admin(request: HttpRequest, what: str) -> None:
    if role_of(request.user) != Role.ADMIN:
        raise PermissionDenied(f"only administrators may {what}")


def actor_of(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def done(request: HttpRequest, to: str, *args: Any) -> HttpResponse:
    """After an action: a redirect, which htmx gets as HX-Redirect (a whole-page load)."""
    url = resolve_url(to, *args)
    if request.headers.get("HX-Request") and not request.headers.get("HX-Boosted"):
        return HttpResponse(status=200, headers={"HX-Redirect": url})
    return redirect(url)


def domain_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A refused action answers its status with the reason, in words (htmx shows it)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except DomainError as exc:
            return HttpResponse(str(exc), status=exc.http_status, content_type="text/plain; charset=utf-8")

    return login_required(wrapped)
