from __future__ import annotations

import uuid

from django.db import models

from appliance.accounts.models import slug_validator
from appliance.audit.mixins import Audited
from appliance.nodes.choices import NodeState


class Node(Audited):
    """A server that runs one node agent and its Triton Inference Server."""

    audit_ignore = frozenset({"updated", "last_heartbeat"})

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
    state = models.CharField(max_length=16, choices=NodeState.choices, default=NodeState.PENDING)
    triton_version = models.CharField(max_length=32, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Gpu(Audited):
    """One accelerator of a node, as its agent last reported it."""

    audit_ignore = frozenset({"updated"})

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

    class Meta:
        ordering = ["gpu", "start"]
        constraints = [models.UniqueConstraint(fields=["gpu", "start"], name="mig_device_unique_start")]

    def __str__(self) -> str:
        return f"{self.gpu}: {self.profile}@{self.start}"
