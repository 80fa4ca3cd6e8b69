from __future__ import annotations

import uuid

from django.db import models

from appliance.audit.mixins import Audited
from appliance.catalog.models import ModelVersion
from appliance.nodes.models import Node
from appliance.rollouts.choices import DeploymentState, ReplicaState


class Deployment(Audited):
    """A model version placed on a set of nodes; its id is the rollout task's id."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    state = models.CharField(max_length=16, choices=DeploymentState.choices, default=DeploymentState.PENDING)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.version} ({self.state})"


class Replica(Audited):
    """One node's copy of a deployment, loaded in that node's Triton."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="replicas")
    # Set when the replica runs on one MIG device (its own Triton); blank: the node's main Triton.
    mig_uuid = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=16, choices=ReplicaState.choices, default=ReplicaState.PENDING)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["deployment", "node__name"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "node", "mig_uuid"], name="replica_unique_endpoint")
        ]

    def __str__(self) -> str:
        where = f"{self.node.name}/{self.mig_uuid}" if self.mig_uuid else self.node.name
        return f"{self.deployment.version}@{where} ({self.state})"
