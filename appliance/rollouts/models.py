from __future__ import annotations

import uuid

from django.db import models

from appliance.audit.mixins import Audited
from appliance.catalog.models import ModelVersion
from appliance.nodes.models import Node
from appliance.rollouts.choices import DeploymentState, ReplicaState, Strategy


def default_gate() -> dict[str, float]:
    return dict(DEFAULT_GATE)


# Compared each tick of a traffic step, new version against the old one over the same window.
DEFAULT_GATE = {
    "min_requests": 20,  # the new version's requests in the window before the gate judges at all
    "max_error_rate_increase": 0.01,  # new error rate may exceed the old one by at most this (absolute)
    "latency_quantile": 0.95,  # the latency compared (p95: a p99 of a few hundred requests is their maximum)
    "max_latency_ratio": 1.5,  # new quantile at most this times the old one …
    "latency_slack_ms": 5.0,  # … or the old one plus this, whichever is larger (sub-ms noise)
    # Generative versions: decoding speed (output tokens/s after each request's first token, over the
    # window's streams) at least this times the old one's; 0 turns it off. A version's latency above is
    # its time to first token, so the two gates judge the two halves of a stream.
    "min_tokens_per_s_ratio": 0.67,
}


class Deployment(Audited):
    """A model version placed on a set of nodes, and the rollout that brings traffic to
    it: the replicas load beside the serving version, then traffic shifts by the
    strategy's steps, each gated on the new version's success rate and latency
    against the old one's in the same window (rollouts/progress.py)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    state = models.CharField(max_length=16, choices=DeploymentState.choices, default=DeploymentState.PENDING)
    error = models.TextField(blank=True)
    # The deployment serving when this one began (None for a model's first); it keeps serving until promotion.
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="successors")
    strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.ALL_AT_ONCE)
    steps = models.JSONField(default=list)  # traffic percentages, ending at 100
    step_index = models.IntegerField(default=-1)  # -1: replicas still loading
    step_started = models.DateTimeField(null=True, blank=True)
    step_seconds = models.PositiveIntegerField(default=0)  # how long each step is held under the gate
    traffic_percent = models.PositiveSmallIntegerField(default=0)  # the share the gateway sends to this version
    gate = models.JSONField(default=default_gate)
    gate_log = models.JSONField(default=list)  # one entry per judged step: the numbers and the verdict
    paused = models.BooleanField(default=False)
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


class AutoscaleDecision(Audited):
    """One scaling decision and the measurements it was taken from."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="scale_decisions")
    time = models.DateTimeField(auto_now_add=True, db_index=True)
    replicas_before = models.PositiveIntegerField()
    replicas_after = models.PositiveIntegerField()
    # {"queue_ms": …, "utilisation": …, "requests_per_s": …, "per_replica": {node: {...}}}
    inputs = models.JSONField()
    reason = models.CharField(max_length=500)

    class Meta:
        ordering = ["-time"]

    def __str__(self) -> str:
        return f"{self.deployment.version}: {self.replicas_before} → {self.replicas_after}"
