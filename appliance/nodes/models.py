from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from appliance.accounts.models import slug_validator
from appliance.audit.mixins import Audited
from appliance.nodes.choices import ACTIVE_RECONFIGURATION_STATES, AdminState, Health, ReconfigurationState


class Node(Audited):
    """A server that runs one node agent and its Triton Inference Server."""

    audit_ignore = frozenset({"updated", "last_heartbeat", "triton_ready", "health_checked"})
    audit_redact = frozenset({"credential_hash"})

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    zone = models.CharField(max_length=63, default="default")
    site = models.CharField(max_length=63, blank=True)
    # Compliance tags the node carries (for example "hipaa", "pci-dss"); policy rules may require them.
    compliance_tags = models.JSONField(default=list, blank=True)
    # Triton's endpoints on this node, host:port.
    grpc_address = models.CharField(max_length=255, blank=True)
    http_address = models.CharField(max_length=255, blank=True)
    metrics_address = models.CharField(max_length=255, blank=True)
    admin_state = models.CharField(max_length=16, choices=AdminState.choices, default=AdminState.ACTIVE)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_reasons = models.JSONField(default=list, blank=True)
    health_checked = models.DateTimeField(null=True, blank=True)
    triton_version = models.CharField(max_length=32, blank=True)
    # The TensorRT the node's Triton runs (blank: none, so no TensorRT plan is placed here).
    tensorrt_version = models.CharField(max_length=32, blank=True)
    # The backends the node's Triton has (its backend directory's subdirectories), as its agent
    # reported them; [] = not reported. catalog/runtimes.py decides what they can serve.
    backends = models.JSONField(default=list, blank=True)
    # Physical memory the agent reported (0: not reported); generative engines on a CPU node
    # share GENERATIVE_MEMORY_FRACTION of it (catalog/generative.py).
    memory_bytes = models.BigIntegerField(default=0)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # What the agent itself last saw of its Triton (the sweep also probes it from here).
    triton_ready = models.BooleanField(default=False)
    # Set when a reconfiguration failed and was rolled back: the node stays degraded until cleared.
    fault = models.CharField(max_length=500, blank=True)
    # The node's own credential, issued at enrolment with a join token (only its hash is kept);
    # blank for a node an operator or a legacy agent registered. The machine id the enrolment
    # came from: a re-run of the playbook on the same server is told apart from a name clash.
    credential_prefix = models.CharField(max_length=16, blank=True)
    credential_hash = models.CharField(max_length=64, blank=True)
    credential_issued = models.DateTimeField(null=True, blank=True)
    credential_revoked = models.DateTimeField(null=True, blank=True)
    machine_id = models.CharField(max_length=64, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def state(self) -> str:
        """One word for people: the operator's state when not active, else the health."""
        return self.admin_state if self.admin_state != AdminState.ACTIVE else self.health


class NodeHealthChange(models.Model):
    """History: every change of a node's health, with the reasons found."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="health_history")
    time = models.DateTimeField(default=timezone.now, db_index=True)
    previous = models.CharField(max_length=16, choices=Health.choices)
    health = models.CharField(max_length=16, choices=Health.choices)
    reasons = models.JSONField(default=list)

    class Meta:
        ordering = ["-time"]


class Gpu(Audited):
    """One accelerator of a node, as its agent last reported it."""

    audit_ignore = frozenset({"updated", "temperature_c", "ecc_corrected", "ecc_uncorrected", "xid_events",
                              "ecc_uncorrected_aggregate", "retired_pages_pending",
                              "throttle_reasons", "memory_used_mib", "remapped_rows_pending", "remap_failed",
                              "readout_error", "readout_time"})  # fmt: skip

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=64)
    product = models.CharField(max_length=100)
    # The MIG catalog's name for it (appliance/nodes/mig/catalog.py); blank when not MIG-capable.
    model = models.CharField(max_length=32, blank=True)
    memory_mib = models.PositiveIntegerField()
    mig_enabled = models.BooleanField(default=False)
    mig_pending = models.BooleanField(default=False)
    # Health readouts (NVML or simulated), refreshed with every heartbeat; None = not supported here.
    temperature_c = models.IntegerField(null=True, blank=True)
    ecc_corrected = models.BigIntegerField(null=True, blank=True)
    ecc_uncorrected = models.BigIntegerField(null=True, blank=True)
    ecc_uncorrected_aggregate = models.BigIntegerField(null=True, blank=True)
    retired_pages_pending = models.BooleanField(null=True, blank=True)
    xid_events = models.JSONField(default=list, blank=True)  # [{"xid": 79, "time": iso}, …] recent ones
    throttle_reasons = models.JSONField(default=list, blank=True)
    memory_used_mib = models.IntegerField(null=True, blank=True)
    remapped_rows_pending = models.BooleanField(null=True, blank=True)
    remap_failed = models.BooleanField(null=True, blank=True)
    readout_error = models.CharField(max_length=500, blank=True)
    readout_time = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["node__name", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="gpu_unique_index")]

    def __str__(self) -> str:
        return f"{self.node.name}/gpu{self.index} ({self.model or self.product})"


class MigDevice(Audited):
    """A MIG instance on a GPU (one GPU instance with its full compute instance)."""

    audit_type = "mig_device"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="mig_devices")
    uuid = models.CharField(max_length=64)
    profile = models.CharField(max_length=32)
    start = models.PositiveSmallIntegerField()
    size = models.PositiveSmallIntegerField()
    gpu_instance_id = models.PositiveIntegerField()
    memory_mib = models.PositiveIntegerField(default=0)
    # The Triton the agent runs on this device (CUDA_VISIBLE_DEVICES=<uuid>), host:port, and its
    # metrics endpoint (where the gateway reads the device's generative engines' gauges).
    grpc_address = models.CharField(max_length=255, blank=True)
    metrics_address = models.CharField(max_length=255, blank=True)
    # A slice dedicated to one tenant: the gateway sends it that tenant's requests and nobody else's.
    tenant = models.ForeignKey("accounts.Tenant", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="mig_devices")  # fmt: skip

    class Meta:
        ordering = ["gpu", "start"]
        constraints = [models.UniqueConstraint(fields=["gpu", "start"], name="mig_device_unique_start")]

    def __str__(self) -> str:
        return f"{self.gpu}: {self.profile}@{self.start}"


class Reconfiguration(Audited):
    """One run of a MIG layout change on one GPU of a node; its id is the task id."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="reconfigurations")
    gpu_index = models.PositiveSmallIntegerField()
    layout = models.JSONField()  # ["3g.40gb", …] as asked
    placements = models.JSONField()  # [{"profile", "start"}] as planned
    previous = models.JSONField(default=list)  # [{"profile", "start", "uuid", "tenant"}] before, to restore on failure
    # Slices in use (serving replicas or dedicated) → the new placement that takes them over.
    moves = models.JSONField(default=list)  # [{"from": uuid, "to": placement index, "tenant": id or None}]
    moved = models.JSONField(default=dict)  # {old uuid: new uuid} once the reload step moved them
    previous_admin_state = models.CharField(max_length=16, choices=AdminState.choices, default=AdminState.ACTIVE)
    state = models.CharField(max_length=16, choices=ReconfigurationState.choices, default=ReconfigurationState.PENDING)
    step = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    # Fault injection for tests and drills (APPLIANCE_ALLOW_FAULT_INJECTION): fail at this step.
    inject_failure_at = models.CharField(max_length=32, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(
                fields=["node"], condition=models.Q(state__in=ACTIVE_RECONFIGURATION_STATES),
                name="one_active_reconfiguration_per_node",
            )
        ]  # fmt: skip

    def __str__(self) -> str:
        return f"{self.node.name}/gpu{self.gpu_index} → {' '.join(self.layout) or '(MIG off)'} ({self.state})"


class ReconfigurationStep(Audited):
    """One step of a reconfiguration: when it ran and how it ended."""

    audit_type = "reconfiguration_step"

    reconfiguration = models.ForeignKey(Reconfiguration, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=32)
    state = models.CharField(max_length=16)  # running, succeeded, failed, restored
    detail = models.TextField(blank=True)
    started = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started", "id"]

    def __str__(self) -> str:
        return f"{self.reconfiguration_id}:{self.name} ({self.state})"


class JoinToken(Audited):
    """A one-time, expiring secret that lets one new server enrol as a node (the playbook
    hands it to the node's enrolment step). Only its hash is kept; used once, never again."""

    audit_redact = frozenset({"token_hash"})
    audit_type = "join_token"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    prefix = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=64, unique=True)
    note = models.CharField(max_length=200, blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="join_tokens")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"join token {self.prefix}…"

    @property
    def state(self) -> str:
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= timezone.now() else "unused"
