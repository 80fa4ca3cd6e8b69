from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from appliance.accounts.choices import PriorityClass, Role
from appliance.audit.mixins import Audited
from appliance.policies.choices import Classification

slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]{0,62}$", "Use 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit."
)


# A tenant's limits, as the API, the console and the services name them.
LIMIT_FIELDS = ("priority_class", "rate_limit_rps", "rate_burst", "daily_quota", "tokens_per_minute", "max_tokens")


class Tenant(Audited):
    """An internal team or business unit that calls models through the gateway."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    # The most sensitive class of data this tenant sends (data residency).
    classification = models.CharField(max_length=16, choices=Classification.choices, default=Classification.INTERNAL)
    # Zones the tenant's data may go to; empty means any zone the rules allow.
    allowed_zones = models.JSONField(default=list, blank=True)
    # Gateway: who goes first under overload, and how much the tenant may send (0: no limit).
    priority_class = models.CharField(max_length=16, choices=PriorityClass.choices, default=PriorityClass.STANDARD)
    rate_limit_rps = models.PositiveIntegerField(default=0)
    rate_burst = models.PositiveIntegerField(default=0)  # 0: one second's worth
    daily_quota = models.PositiveIntegerField(default=0)  # requests per UTC day
    # Generative models (gateway/tokens.py): output tokens a minute across every gateway process
    # (0: no limit), and the most a request may ask for in max_tokens (0: no cap).
    # (db_default: rows written by an older release during a rolling upgrade get 0, no limit)
    tokens_per_minute = models.PositiveIntegerField(default=0, db_default=0)
    max_tokens = models.PositiveIntegerField(default=0, db_default=0)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class ApiKey(Audited):
    """An inference credential of one tenant; only its hash is stored."""

    audit_redact = frozenset({"key_hash"})
    audit_type = "api_key"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    # Empty: every model granted to the tenant.
    allowed_models = models.ManyToManyField("catalog.Model", blank=True, related_name="api_keys")
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["tenant__slug", "name", "created"]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ModelGrant(Audited):
    """Permission for a tenant to call a model through the gateway."""

    audit_type = "model_grant"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="grants")
    model = models.ForeignKey("catalog.Model", on_delete=models.CASCADE, related_name="grants")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant__slug", "model__name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "model"], name="grant_unique_tenant_model")]

    def __str__(self) -> str:
        return f"{self.tenant.slug} → {self.model.name}"


class OperatorToken(Audited):
    """A REST API credential of an operator account; only its hash is stored."""

    audit_redact = frozenset({"key_hash"})
    audit_type = "operator_token"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user__username", "name"]

    def __str__(self) -> str:
        return f"{self.user.get_username()}/{self.name} ({self.prefix}…)"


class AccountRole(Audited):
    """The role of an operator account (superusers are admins without a row)."""

    audit_type = "account_role"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="appliance_role")
    role = models.CharField(max_length=16, choices=Role.choices)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="admins")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(role="tenant_admin") & models.Q(tenant__isnull=False))
                | (~models.Q(role="tenant_admin") & models.Q(tenant__isnull=True)),
                name="account_role_tenant_iff_tenant_admin",
            )
        ]

    def __str__(self) -> str:
        suffix = f" of {self.tenant.slug}" if self.tenant is not None else ""
        return f"{self.user.get_username()}: {self.role}{suffix}"


class TotpDevice(Audited):
    """An account's second factor for console logins (RFC 6238)."""

    audit_redact = frozenset({"secret"})
    audit_ignore = frozenset({"last_step"})
    audit_type = "totp_device"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="totp_device")
    secret = models.CharField(max_length=64)
    confirmed = models.BooleanField(default=False)
    # The last time step used: a code is accepted once (no replay).
    last_step = models.BigIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"TOTP of {self.user.get_username()}"
