"""Writes for tenants, API keys, grants and operator tokens."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from appliance.accounts.models import ApiKey, ModelGrant, OperatorToken, Tenant
from appliance.accounts.secrets import make_secret
from appliance.catalog.models import Model


@transaction.atomic
def tenant_create(
    *, slug: str, name: str, classification: str = "internal", allowed_zones: list[str] | None = None
) -> Tenant:
    tenant = Tenant(slug=slug, name=name or slug, classification=classification, allowed_zones=allowed_zones or [])
    tenant.full_clean()
    tenant.save()
    return tenant


@transaction.atomic
def api_key_create(*, tenant: Tenant, name: str, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Returns the key row and the plaintext, which exists only in this return value."""
    secret = make_secret("ak")
    key = ApiKey.objects.create(
        tenant=tenant, name=name, prefix=secret.prefix, key_hash=secret.digest, expires_at=expires_at
    )
    return key, secret.plaintext


@transaction.atomic
def api_key_revoke(*, key: ApiKey) -> ApiKey:
    locked = ApiKey.objects.select_for_update().get(pk=key.pk)
    if locked.revoked_at is None:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
    return locked


@transaction.atomic
def grant_create(*, tenant: Tenant, model: Model) -> ModelGrant:
    grant, _ = ModelGrant.objects.get_or_create(tenant=tenant, model=model)
    return grant


@transaction.atomic
def grant_delete(*, grant: ModelGrant) -> None:
    grant.delete()


@transaction.atomic
def operator_token_create(
    *, user: AbstractBaseUser, name: str, expires_at: datetime | None = None
) -> tuple[OperatorToken, str]:
    secret = make_secret("op")
    token = OperatorToken.objects.create(
        user=user, name=name, prefix=secret.prefix, key_hash=secret.digest, expires_at=expires_at
    )
    return token, secret.plaintext


@transaction.atomic
def tenant_update(
    *, tenant: Tenant, name: str | None = None, classification: str | None = None, allowed_zones: list[str] | None = None
) -> Tenant:
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    for field, value in (("name", name), ("classification", classification), ("allowed_zones", allowed_zones)):
        if value is not None:
            setattr(locked, field, value)
    locked.full_clean()
    locked.save()
    return locked


@transaction.atomic
def tenant_delete(*, tenant: Tenant) -> None:
    tenant.delete()
