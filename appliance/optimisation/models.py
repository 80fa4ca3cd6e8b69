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
    cancelled_by = models.CharField(max_length=150, blank=True)
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


class ProfileSearch(Audited):
    """A search over serving profiles of a version for a node, and the profile it recommends."""

    audit_type = "profile_search"
    audit_ignore = frozenset({"progress"})

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey("catalog.ModelVersion", on_delete=models.PROTECT, related_name="profile_searches")
    # The node the numbers stand for (measured on the optimiser's host, which is that node's hardware kind:
    # optimisation/profiles.py). SET_NULL: a finished search stays readable after its node is removed.
    node = models.ForeignKey("nodes.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    node_name = models.CharField(max_length=63)
    objective_p99_ms = models.FloatField(help_text="the latency objective: p99 in ms at `concurrency`")
    concurrency = models.PositiveIntegerField()
    requests = models.PositiveIntegerField(help_text="measured requests per profile (after a warm-up)")
    # The whole search's budget: no profile is started past it; those measured by then are judged.
    time_limit_s = models.PositiveIntegerField(default=3600, help_text="no profile is started after this many "
                                               "seconds; the recommendation is made from those measured")  # fmt: skip
    # The model's own validation set whose inputs the requests carry (none: the version's samples, or zeros).
    input_set = models.ForeignKey("catalog.ValidationSet", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="+")  # fmt: skip
    grid = models.JSONField()  # {"max_batch_size": [...], "instance_count": [...], "max_queue_delay_us": [...]}
    pruned = models.JSONField(default=list, blank=True)  # ["why a part of the grid was not measured", ...]
    # The model's serving profile (normalised) when the search was asked for: every profile tried is it with
    # the grid's fields changed, and applying is refused once it has changed.
    base_profile = models.JSONField()
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    step = models.CharField(max_length=200, blank=True)
    progress = models.JSONField(default=list, blank=True)  # [{"time", "message"}], as OptimisationJob's
    error = models.TextField(blank=True)
    measured_on = models.CharField(max_length=500, blank=True)
    recommended = models.ForeignKey("ProfileSearchResult", null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")  # fmt: skip
    recommendation = models.TextField(blank=True)
    # The recommended profile's throughput over the no-batching baseline's (same run, same machine).
    speed_up = models.FloatField(null=True, blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    cancelled_by = models.CharField(max_length=150, blank=True)
    applied_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    applied = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["version"], condition=models.Q(state__in=ACTIVE_JOB_STATES),
                                    name="one_active_profile_search_per_version"),
        ]  # fmt: skip

    def __str__(self) -> str:
        return f"profile search of {self.version_id} for {self.node_name} ({self.state})"


class ProfileSearchResult(Audited):
    """One serving profile a search measured (or could not load), with its numbers."""

    audit_type = "profile_search_result"

    search = models.ForeignKey(ProfileSearch, on_delete=models.CASCADE, related_name="results")
    position = models.PositiveIntegerField()
    max_batch_size = models.PositiveIntegerField()
    instance_count = models.PositiveIntegerField()
    max_queue_delay_us = models.PositiveIntegerField()
    profile = models.JSONField()  # the whole serving profile, as applying it would save it
    # None where the profile did not load or no request succeeded.
    p50_ms = models.FloatField(null=True, blank=True)
    p99_ms = models.FloatField(null=True, blank=True)
    throughput = models.FloatField(null=True, blank=True, help_text="successful requests per second")
    errors = models.PositiveIntegerField(default=0)
    met_objective = models.BooleanField(default=False)
    # CPU the load generator spent per request (its share of the same 2-core kind of machine).
    client_cpu_us = models.FloatField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    note = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["search", "position"]

    def __str__(self) -> str:
        return (f"batch {self.max_batch_size}, {self.instance_count} instance(s), delay {self.max_queue_delay_us} µs "
                f"({'meets' if self.met_objective else 'misses'} the objective)")  # fmt: skip


class GateRun(Audited):
    """One run of the accuracy gate on a version that no optimisation job made (an uploaded
    child: a fine-tune, an externally quantised model, a generative model's new weights):
    the version and its parent measured in the same run on each validation set of the
    model, one catalog.GateResult per set (optimisation/gaterun.py)."""

    audit_type = "gate_run"
    audit_ignore = frozenset({"progress"})

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey("catalog.ModelVersion", on_delete=models.PROTECT, related_name="gate_runs")
    # The sets judged, as they were when the run was asked for: [{"id", "name", "metric"}].
    sets = models.JSONField()
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    step = models.CharField(max_length=200, blank=True)
    progress = models.JSONField(default=list, blank=True)  # [{"time", "message"}], as OptimisationJob's
    error = models.TextField(blank=True)
    measured_on = models.CharField(max_length=500, blank=True)
    # Per set once measured: [{"set", "metric", "passed", "reason", "values", "baseline_values"}].
    outcome = models.JSONField(default=list, blank=True)
    passed = models.BooleanField(null=True, blank=True)  # every set passed (None until the run ends well)
    requested_by = models.CharField(max_length=150, blank=True)
    cancelled_by = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["version"], condition=models.Q(state__in=ACTIVE_JOB_STATES),
                                    name="one_active_gate_run_per_version"),
        ]  # fmt: skip

    def __str__(self) -> str:
        return f"gate run of {self.version_id} ({self.state})"
