"""Writes for tenants, API keys, grants and operator tokens."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from appliance.accounts import totp
from appliance.accounts.choices import Role
from appliance.accounts.models import AccountRole, ApiKey, ModelGrant, OperatorToken, Tenant, TotpDevice
from appliance.accounts.secrets import make_secret
from appliance.audit.mixins import REDACTED
from appliance.audit.services import audit_record
from appliance.catalog.models import Model
from appliance.core.errors import DomainError
from appliance.core.services import update_locked


@transaction.atomic
def tenant_create(
    *, slug: str, name: str, classification: str = "internal", allowed_zones: list[str] | None = None, **limits: Any
) -> Tenant:
    """`limits`: any of accounts.models.LIMIT_FIELDS."""
    tenant = Tenant(slug=slug, name=name or slug, classification=classification, allowed_zones=allowed_zones or [],
                    **limits)  # fmt: skip
    tenant.full_clean()
    tenant.save()
    return tenant


@transaction.atomic
def api_key_create(
    *, tenant: Tenant, name: str, expires_at: datetime | None = None, models: Sequence[Model] = ()
) -> tuple[ApiKey, str]:
    """Returns the key row and the plaintext, which exists only in this return value.
    A key's scope stays within its tenant's grants (rotation included)."""
    _check_key_scope(tenant, models)
    secret = make_secret("ak")
    key = ApiKey.objects.create(
        tenant=tenant, name=name, prefix=secret.prefix, key_hash=secret.digest, expires_at=expires_at
    )
    if models:
        key.allowed_models.set(models)
        audit_record(action="api_key.scope", target_type="api_key", target_id=str(key.pk), target_repr=key.audit_label(),
                     changes={"models": [None, sorted(m.name for m in models)]})  # fmt: skip
    return key, secret.plaintext


def _check_key_scope(tenant: Tenant, models: Sequence[Model]) -> None:
    granted = set(ModelGrant.objects.filter(tenant=tenant).values_list("model_id", flat=True))
    outside = sorted(m.name for m in models if m.pk not in granted)
    if outside:
        raise DomainError(f"tenant '{tenant.slug}' is not granted {', '.join(outside)}: "
                          "a key's scope stays within its tenant's grants")  # fmt: skip


@transaction.atomic
def api_key_rotate(*, key: ApiKey, overlap_s: int) -> tuple[ApiKey, str]:
    """A successor with the same tenant, name and scope; the old key expires after the overlap."""
    locked = ApiKey.objects.select_for_update().get(pk=key.pk)
    if not locked.is_active:
        raise DomainError("only an active key can be rotated")
    successor, plaintext = api_key_create(
        tenant=locked.tenant, name=locked.name, expires_at=locked.expires_at, models=list(locked.allowed_models.all())
    )
    cutoff = timezone.now() + timedelta(seconds=overlap_s)
    if locked.expires_at is None or locked.expires_at > cutoff:
        locked.expires_at = cutoff
        locked.save(update_fields=["expires_at"])
    return successor, plaintext


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
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[OperatorToken, str]:
    secret = make_secret("op")
    token = OperatorToken.objects.create(
        user=user, name=name, prefix=secret.prefix, key_hash=secret.digest, expires_at=expires_at
    )
    return token, secret.plaintext


@transaction.atomic
def tenant_update(
    *, tenant: Tenant, name: str | None = None, classification: str | None = None, allowed_zones: list[str] | None = None,
    **limits: Any,
) -> Tenant:
    return update_locked(tenant, name=name, classification=classification, allowed_zones=allowed_zones, **limits)


@transaction.atomic
def tenant_delete(*, tenant: Tenant) -> None:
    tenant.delete()


@transaction.atomic
def account_create(*, username: str, password: str, role: str, tenant: Tenant | None = None) -> tuple[Any, str]:
    """An operator account with its role and a first API token (returned once)."""
    from django.contrib.auth import get_user_model

    if (role == Role.TENANT_ADMIN) != (tenant is not None):
        raise DomainError("a tenant admin needs a tenant, and only a tenant admin has one")
    users = get_user_model()
    if users.objects.filter(username=username).exists():
        raise DomainError(f"an account named {username!r} already exists")
    user = users.objects.create_user(username=username, password=password, is_staff=role in (Role.ADMIN, Role.OPERATOR))
    audit_record(action="user.create", target_type="user", target_id=str(user.pk), target_repr=username,
                 changes={"password": [None, REDACTED]})  # fmt: skip
    AccountRole.objects.create(user=user, role=role, tenant=tenant)
    _, token = operator_token_create(user=user, name="initial")
    return user, token


@transaction.atomic
def totp_enroll(*, user: Any) -> TotpDevice:
    """A new, unconfirmed device (replacing any earlier one)."""
    TotpDevice.objects.filter(user=user).delete()
    return TotpDevice.objects.create(user=user, secret=totp.new_secret())


@transaction.atomic
def totp_verify(*, user: Any, code: str, confirm: bool = False) -> bool:
    """True when the code is valid and unused; confirm=True activates a new device."""
    device = TotpDevice.objects.select_for_update().filter(user=user).first()
    if device is None or (not device.confirmed and not confirm):
        return False
    step = totp.matching_step(device.secret, code)
    if step is None or step <= device.last_step:
        return False
    device.last_step = step
    device.confirmed = True
    device.save(update_fields=["last_step", "confirmed"])
    return True
