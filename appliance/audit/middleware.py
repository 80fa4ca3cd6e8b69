"""Sets the audit context for every HTTP request."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _actor_of(request: HttpRequest) -> Callable[[], str]:
    def resolve() -> str:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return f"user:{user.get_username()}"
        return "anonymous"

    return resolve


class AuditContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get("X-Request-ID", "")
        correlation_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        origin = Origin.API if request.path.startswith("/api/") else Origin.WEB
        with audit_context(
            origin=origin,
            actor="anonymous",
            actor_resolver=_actor_of(request),
            source_address=request.META.get("REMOTE_ADDR", ""),
            correlation_id=correlation_id,
        ):
            response = self.get_response(request)
        response["X-Request-ID"] = correlation_id
        return response
