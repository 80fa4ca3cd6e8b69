"""Content-Security-Policy on every response (Django 5.2 has no built-in CSP).

Everything the console loads is vendored and served by the appliance itself, so
the policy allows only 'self' and no inline scripts."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.policy = settings.CONTENT_SECURITY_POLICY

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if self.policy:
            response.headers.setdefault("Content-Security-Policy", self.policy)
        return response


class RefuseNulMiddleware:
    """A URL with a NUL character (in its path or query) is refused with 400 before any
    view sees it: every filter and lookup would hand it to PostgreSQL, which cannot
    compare text with NUL and fails the request. Bodies are checked by the API's parsers."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from appliance.core.api import error_response
        from appliance.core.api_input import NUL_MESSAGE

        if "\x00" in request.path_info or any(
            "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
        ):
            return error_response(request, 400, f"{NUL_MESSAGE} Found one in the URL.")
        return self.get_response(request)
