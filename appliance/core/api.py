"""Shared REST plumbing: one home for the rules every API view follows.

- Domain errors become 4xx answers with a readable message (`exception_handler`).
- Input the database cannot hold is refused at the door with 400: see core/api_input.py
  (bodies, pages) and core.middleware.RefuseNulMiddleware (URLs, answered by `error_response`).
- The OpenAPI schema declares the error answers each operation can give (`AutoSchema`),
  all with one body, the `Error` component.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from appliance.core.errors import DomainError

# URL pattern of the slug lookups (nodes, models, tenants); slug_validator says what is valid.
SLUG_LOOKUP = "[a-z0-9][a-z0-9_-]*"


def validated_or_empty(serializer_class: type[serializers.Serializer], value: Any) -> dict[str, Any]:
    """A JSON setting checked by its serializer, defaults filled in; empty stays {} (off)."""
    if not value:
        return {}
    body = serializer_class(data=value)
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response({"detail": str(exc)}, status=exc.http_status)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            return Response(exc.message_dict, status=status.HTTP_400_BAD_REQUEST)
        return Response({"detail": " ".join(exc.messages)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, IntegrityError):
        return Response({"detail": "This conflicts with an existing record."}, status=status.HTTP_409_CONFLICT)
    return drf_exception_handler(exc, context)


class ProtectedDestroyMixin:
    """DELETE through the noun's delete service; 409 with a reason while other rows
    still refer to the object (PROTECT foreign keys)."""

    protected_message = "{obj} is still in use"

    def delete_service(self, obj: Any) -> None:
        raise NotImplementedError

    def destroy(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        obj = self.get_object()  # type: ignore[attr-defined]
        try:
            self.delete_service(obj)
        except ProtectedError:
            return Response({"detail": self.protected_message.format(obj=obj)}, status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)


def slug_list_field(**kwargs: Any) -> serializers.ListField:
    """A list of slugs (zones, sites, compliance tags); a new field each call."""
    from appliance.accounts.models import slug_validator

    return serializers.ListField(child=serializers.CharField(max_length=63, validators=[slug_validator]), **kwargs)


def error_response(request: HttpRequest, code: int, message: str) -> HttpResponse:
    """An error answered outside DRF's views (a URL refused by middleware): the API's
    error body under /api/, plain text elsewhere."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": message}, status=code)
    return HttpResponse(message, status=code, content_type="text/plain; charset=utf-8")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: a URL no view matches is an `Error` body under /api/, like every other 404 there."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400 (a request Django itself refuses, e.g. too large a form): as not_found."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": "Bad request."}, status=status.HTTP_400_BAD_REQUEST)
    return defaults.bad_request(request, exception)


# --- The schema's error answers ---------------------------------------------------------

ERROR_SCHEMA = {
    "type": "object",
    "description": "Why the request was refused: `detail`, a message; or, for input that fails validation, "
    "the messages of each field by name (`non_field_errors` for the input as a whole; nested input nests).",
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": {"oneOf": [{"type": "array"}, {"type": "object"}]},
}
_ERRORS = {
    "400": ("BadRequest", "The input is malformed, out of range, names something that does not exist, "
            "or the domain refuses it."),  # fmt: skip
    "401": ("Unauthorized", "No credential, or an unknown, expired, revoked or disabled one (an operator token; "
            "a join token or a node's own credential where the operation takes one)."),
    "403": ("Forbidden", "The caller's role does not allow this, or the residency policy refuses it."),
    "404": ("NotFound", "Nothing is found at this address."),
    "409": ("Conflict", "The change conflicts with what is there: a duplicate, a record still in use, "
            "or work under way."),  # fmt: skip
    "415": ("UnsupportedMediaType", "The body's content type is not one the operation reads."),
    "503": ("ServiceUnavailable", "A service the operation needs could not be reached (enrolment: the broker's "
            "management API, which makes the node's broker user); nothing was changed, and the request may be "
            "sent again."),
}
_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def changes_nothing(handler: _Handler) -> _Handler:
    """Marks a POST that only computes an answer (a dry run, a plan): it cannot conflict
    with anything, so the schema declares no 409 for it."""
    handler.changes_nothing = True  # type: ignore[attr-defined]
    return handler


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema plus the errors each operation can answer, every one a
    reference to a shared response with the `Error` body: 400 where it takes input (path,
    query or body), 401 and 403 where it needs a role, 404 where its path names an object,
    409 where it changes something, 415 where it reads a body. An explicit `extend_schema`
    response of the same code wins."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None:
            responses = operation["responses"]
            for code in self._error_codes(operation):
                responses.setdefault(code, self._error_response(code))
            operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _error_codes(self, operation: dict[str, Any]) -> Iterator[str]:
        parameters = operation.get("parameters", [])
        if parameters or "requestBody" in operation:
            yield "400"
        if "requestBody" in operation:
            yield "415"
        if not all(isinstance(p, permissions.AllowAny) for p in self.view.get_permissions()):
            yield from ("401", "403")
        # Views that check a secret of their own instead of a role (enrolment, a node's own door).
        yield from getattr(self.view, "secret_refusals", ())
        # Views that depend on another service and say so (enrolment and the broker).
        yield from getattr(self.view, "unavailable_errors", ())
        if any(p.get("in") == "path" for p in parameters):
            yield "404"
        if self.method not in permissions.SAFE_METHODS and not getattr(self._handler(), "changes_nothing", False):
            yield "409"

    def _handler(self) -> Any:
        """The method that answers: a ViewSet's action, else the APIView's method."""
        for name in (getattr(self.view, "action", None), self.method.lower()):
            if name and callable(handler := getattr(self.view, name, None)):
                return handler
        return None

    def _error_response(self, code: str) -> dict[str, str]:
        body = ResolvedComponent(name="Error", type=ResolvedComponent.SCHEMA, object="Error", schema=ERROR_SCHEMA)
        self.registry.register_on_missing(body)
        name, description = _ERRORS[code]
        response = ResolvedComponent(
            name=name, type=ResolvedComponent.RESPONSE, object=name,
            schema={"description": description, "content": {"application/json": {"schema": body.ref}}},
        )  # fmt: skip
        self.registry.register_on_missing(response)
        return response.ref
