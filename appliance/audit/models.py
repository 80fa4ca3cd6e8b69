from __future__ import annotations

import uuid

from django.db import models

from appliance.audit.choices import Origin


class AuditEvent(models.Model):
    """One thing someone or something did to the appliance's state."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    time = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=200)
    origin = models.CharField(max_length=16, choices=Origin.choices)
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=100, blank=True, db_index=True)
    target_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    source_address = models.CharField(max_length=100, blank=True)
    correlation_id = models.CharField(max_length=64, blank=True, db_index=True)

    class Meta:
        ordering = ["time", "id"]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target_repr}"
