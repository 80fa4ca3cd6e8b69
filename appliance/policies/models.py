from __future__ import annotations

import uuid

from django.db import models

from appliance.accounts.models import slug_validator
from appliance.audit.mixins import Audited
from appliance.policies.choices import Effect


class PolicyRule(Audited):
    """One ordered data-residency rule; the first enabled rule that matches decides."""

    audit_type = "policy_rule"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    position = models.PositiveIntegerField(unique=True)
    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    effect = models.CharField(max_length=8, choices=Effect.choices)
    # Each list narrows the rule; an empty list matches anything.
    operations = models.JSONField(default=list, blank=True)
    classifications = models.JSONField(default=list, blank=True)
    zones = models.JSONField(default=list, blank=True)
    sites = models.JSONField(default=list, blank=True)
    # The node must carry every one of these compliance tags for the rule to match.
    require_tags = models.JSONField(default=list, blank=True)
    description = models.CharField(max_length=500, blank=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["position"]

    def __str__(self) -> str:
        return f"#{self.position} {self.name} ({self.effect})"
