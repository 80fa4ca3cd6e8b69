from __future__ import annotations

import uuid

from django.db import models

from appliance.audit.mixins import Audited
from appliance.provisioning.choices import RunKind, RunState


class ProvisioningRun(Audited):
    """One run of a provisioning playbook through ansible-runner, started from the console or
    the API (or by the drift schedule): tracked from its creation, its events stored as they
    come, its recap per host at the end. Audited by state; the events are not (they are the log)."""

    audit_type = "provisioning_run"
    audit_ignore = frozenset({"log", "updated"})

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=RunKind.choices)
    playbook = models.CharField(max_length=100)
    limit = models.CharField(max_length=200, blank=True, help_text="inventory host pattern; blank: every node")
    # The site's inventory and variables file the run used (the control plane's settings when it was asked).
    inventory = models.CharField(max_length=500)
    extra_vars = models.CharField(max_length=500, blank=True)
    check_mode = models.BooleanField(default=False, help_text="--check --diff: reports what would change, changes nothing")
    state = models.CharField(max_length=16, choices=RunState.choices, default=RunState.PENDING)
    correlation_id = models.CharField(max_length=64, blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    rc = models.IntegerField(null=True, blank=True)
    # {host: {"ok", "changed", "failed", "unreachable", "skipped"}} from the play's recap.
    recap = models.JSONField(default=dict, blank=True)
    # Hosts whose state differs from the playbook's (a check run with changes to make).
    drifted = models.JSONField(default=list, blank=True)
    log = models.TextField(blank=True)  # the run's output, its last 64 KiB
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.limit or 'all nodes'} ({self.state})"


class ProvisioningEvent(models.Model):
    """One event of a run as ansible-runner reported it (task starts and results, the recap):
    what the console shows live. No payload: task names, hosts and outcomes only."""

    run = models.ForeignKey(ProvisioningRun, on_delete=models.CASCADE, related_name="events")
    counter = models.PositiveIntegerField()
    event = models.CharField(max_length=64)
    host = models.CharField(max_length=255, blank=True)
    task = models.CharField(max_length=500, blank=True)
    changed = models.BooleanField(default=False)
    time = models.DateTimeField()

    class Meta:
        ordering = ["run", "counter"]
        constraints = [models.UniqueConstraint(fields=["run", "counter"], name="one_event_per_counter")]
