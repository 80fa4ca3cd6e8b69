"""The console's face of the role matrix (accounts.access), the same one the REST
API asks: every page names its resource and action with `guarded`, templates ask
`may.<resource>.<action>` before they show a button, and a tenant admin's rows come
through `scoped` (another tenant's are 404)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, resolve_url

from appliance.accounts import access
from appliance.accounts.choices import Role
from appliance.accounts.roles import role_of, tenant_id_of
from appliance.core.errors import DomainError

View = Callable[..., HttpResponseBase]
M = TypeVar("M", bound=Model)

# guarded(resource, FROM_URL): the action is the URL's `action` argument ('-' read as '_').
FROM_URL = "<action>"


def context(request: HttpRequest, **values: Any) -> dict[str, Any]:
    role = role_of(request.user)
    return {"role": role, "may": access.capabilities(role), "is_tenant_admin": role == Role.TENANT_ADMIN, **values}


def tenant_scope(request: HttpRequest) -> Any:
    """The tenant id a tenant admin is limited to; None for everyone else."""
    return tenant_id_of(request.user)


def scoped(request: HttpRequest, queryset: QuerySet[M], resource: str) -> QuerySet[M]:
    return access.scoped(queryset, request.user, resource)


def require(request: HttpRequest, resource: str, action: str) -> None:
    role = role_of(request.user)
    if not access.permits(role, resource, action):
        raise PermissionDenied(access.refusal(role, resource, action))


def guarded(resource: str, action: str) -> Callable[[View], View]:
    """A page or action the matrix guards: login first, then `resource.action` for the
    account's role (403 with the reason). The view carries `access` = (resource,
    action) for the test that walks every console URL."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            name = action
            if action == FROM_URL:
                name = kwargs["action"].replace("-", "_")
                if name == access.READ or name not in access.MATRIX[resource].actions:
                    raise Http404("no such action")
            require(request, resource, name)
            return view(request, *args, **kwargs)

        wrapped.access = (resource, action)  # type: ignore[attr-defined]
        return login_required(wrapped)

    return decorate


def actor_of(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def done(request: HttpRequest, to: str, *args: Any) -> HttpResponse:
    """After an action: a redirect, which htmx gets as HX-Redirect (a whole-page load)."""
    url = resolve_url(to, *args)
    if request.headers.get("HX-Request") and not request.headers.get("HX-Boosted"):
        return HttpResponse(status=200, headers={"HX-Redirect": url})
    return redirect(url)


def domain_errors(view: View) -> View:
    """A refused action answers its status with the reason, in words (htmx shows it)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return view(request, *args, **kwargs)
        except DomainError as exc:
            return HttpResponse(str(exc), status=exc.http_status, content_type="text/plain; charset=utf-8")

    return wrapped
