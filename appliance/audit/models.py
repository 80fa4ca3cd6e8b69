from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from appliance.audit.choices import Origin


class AuditEvent(models.Model):
    """One thing someone or something did to the appliance's state; a link in the hash chain."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Position in the chain: 1, 2, 3, … with no gaps (a gap is a deleted event). NULL for the
    # moment between the writer's commit and the linker (chain.link_pending), with the hashes.
    sequence = models.BigIntegerField(unique=True, null=True)
    time = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200)
    origin = models.CharField(max_length=16, choices=Origin.choices)
    action = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=100, blank=True, db_index=True)
    target_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    source_address = models.CharField(max_length=100, blank=True)
    correlation_id = models.CharField(max_length=64, blank=True, db_index=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["sequence"]
        indexes = [models.Index(fields=["time"], condition=models.Q(sequence__isnull=True), name="audit_event_unlinked")]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target_repr}"


class AuditCheckpoint(models.Model):
    """A signed statement of the chain head at one moment, to be kept off the box."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sequence = models.BigIntegerField()
    event_hash = models.CharField(max_length=64)
    created = models.DateTimeField(default=timezone.now)
    key_id = models.CharField(max_length=32)
    public_key = models.CharField(max_length=64, help_text="Ed25519 public key, base64")
    signature = models.CharField(max_length=128, help_text="Ed25519 signature of the canonical payload, base64")

    class Meta:
        ordering = ["sequence", "created"]

    def __str__(self) -> str:
        return f"checkpoint #{self.sequence} {self.event_hash[:12]}…"


class AuditPrune(models.Model):
    """Retention: events up to `upto_sequence` were deleted; the chain now starts after it,
    anchored by the signed checkpoint at that sequence."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    upto_sequence = models.BigIntegerField(unique=True)
    anchor_hash = models.CharField(max_length=64)
    cutoff = models.DateTimeField()
    time = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["upto_sequence"]
