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
