"""Shared REST plumbing: domain errors become 4xx answers with a readable message."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from rest_framework import serializers, status
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
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
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
