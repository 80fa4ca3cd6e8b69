"""REST authentication with hashed operator tokens (``Authorization: Bearer op_…``)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from appliance.accounts.models import OperatorToken
from appliance.accounts.secrets import hash_secret


class OperatorTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, OperatorToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            return None
        token = token.strip()
        if not token:
            raise exceptions.AuthenticationFailed("The Authorization header has no token.")
        try:
            row = OperatorToken.objects.select_related("user").get(key_hash=hash_secret(token))
        except OperatorToken.DoesNotExist as exc:
            raise exceptions.AuthenticationFailed("Unknown operator token.") from exc
        if row.expires_at is not None and row.expires_at <= timezone.now():
            raise exceptions.AuthenticationFailed("This operator token has expired.")
        if not row.user.is_active:
            raise exceptions.AuthenticationFailed("This operator account is disabled.")
        return row.user, row

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
