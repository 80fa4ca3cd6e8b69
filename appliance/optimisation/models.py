"""An optimisation job (the tracking row; its id is the Celery task id) and the
candidates it measured. Quantised candidates become child versions of the source
(lineage `quantisation`) with a gate result each (catalog.GateResult)."""

from __future__ import annotations

import uuid

from django.db import models

from appliance.audit.mixins import Audited
from appliance.optimisation.choices import ACTIVE_JOB_STATES, CandidateKind, JobState


class OptimisationJob(Audited):
    audit_type = "optimisation_job"
    audit_ignore = frozenset({"progress"})

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source = models.ForeignKey("catalog.ModelVersion", on_delete=models.PROTECT, related_name="optimisation_jobs")
    validation_set = models.ForeignKey("catalog.ValidationSet", on_delete=models.PROTECT, related_name="+")
    # Calibration inputs for static INT8 (another set of the model; blank: the validation set's own inputs).
    calibration_set = models.ForeignKey("catalog.ValidationSet", null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="+")  # fmt: skip
    kinds = models.JSONField()  # [CandidateKind, …] to build, in order
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    step = models.CharField(max_length=200, blank=True)
    # [{"time", "message"}]: what the console shows live (not audited line by line; the states are).
    progress = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    measured_on = models.CharField(max_length=300, blank=True)
    recommended = models.ForeignKey("OptimisationCandidate", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")  # fmt: skip
    recommendation = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["source"], condition=models.Q(state__in=ACTIVE_JOB_STATES),
                                    name="one_active_optimisation_per_version"),
        ]  # fmt: skip

    def __str__(self) -> str:
        return f"optimisation of {self.source_id} ({self.state})"


class OptimisationCandidate(Audited):
    audit_type = "optimisation_candidate"

    job = models.ForeignKey(OptimisationJob, on_delete=models.CASCADE, related_name="candidates")
    kind = models.CharField(max_length=16, choices=CandidateKind.choices)
    # The child version it became (none for the reference: that is the source itself).
    version = models.ForeignKey("catalog.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")  # fmt: skip
    size_bytes = models.BigIntegerField()
    p50_ms = models.FloatField()
    p99_ms = models.FloatField()
    throughput = models.FloatField(help_text="rows per second at the job's concurrency, one row per call")
    values = models.JSONField()  # the metric's values on the validation set
    checks = models.JSONField(default=list)  # the gate's checks against the reference
    passed = models.BooleanField()
    kept_in_float = models.JSONField(default=list, blank=True)  # node names (mixed precision)
    search = models.JSONField(default=list, blank=True)  # mixed precision: [{"kept", "passed", "reason"}] per step
    note = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "id"]

    def __str__(self) -> str:
        return f"{self.kind} ({'passes' if self.passed else 'fails'} the gate)"
