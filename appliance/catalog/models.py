from __future__ import annotations

import uuid

from django.db import models

from appliance.accounts.models import slug_validator
from appliance.audit.mixins import Audited
from appliance.catalog.choices import ArtifactFormat, ChangeKind
from appliance.optimisation.validation_data import METRICS


class Model(Audited):
    """A named model that tenants call; versions hold the artifacts."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    # Opt-in exact response cache at the gateway (per tenant and version; the residency policy decides who may use it).
    response_cache = models.BooleanField(default=False)
    # Opt-in semantic cache at the gateway ({threshold, ttl_s, max_entries}; {} is off): gateway/semantic.py.
    semantic_cache = models.JSONField(default=dict, blank=True)
    # How Triton serves it (catalog/profile.py validates; tritonconfig.py turns it into config.pbtxt).
    serving_profile = models.JSONField(default=dict, blank=True)
    # Scale-to-zero: unload every replica after this many seconds without a request (0: always resident).
    idle_unload_s = models.PositiveIntegerField(default=0)
    # Autoscaling between min and max replicas (rollouts/autoscale.py); {} = off.
    autoscale = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(Audited):
    """One immutable artifact of a model with its signature (Triton version = number)."""

    audit_type = "model_version"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    format = models.CharField(max_length=20, choices=ArtifactFormat.choices)
    artifact_sha256 = models.CharField(max_length=64)
    artifact_size = models.BigIntegerField()
    # {"inputs": [{"name", "datatype", "dims"}], "outputs": [...]}; dims exclude the batch dimension.
    signature = models.JSONField()
    max_batch_size = models.PositiveIntegerField(default=0)
    decoupled = models.BooleanField(default=False)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    change_kind = models.CharField(max_length=16, choices=ChangeKind.choices, default=ChangeKind.INITIAL)
    change_note = models.CharField(max_length=500, blank=True)
    # A TensorRT plan runs only where it was built: GPU compute capability ("9.0") and TensorRT version.
    gpu_arch = models.CharField(max_length=16, blank=True)
    tensorrt_version = models.CharField(max_length=32, blank=True)
    # One sample per input, without the batch dimension: {"IMAGE": [...]}; used for warm-up.
    sample_inputs = models.JSONField(null=True, blank=True)
    # Ensembles: the validated steps of the artifact (catalog/ensemble.py).
    ensemble_steps = models.JSONField(null=True, blank=True)
    # Generative (vllm) versions: what sizing and serving read from the artifact (catalog/generative.py).
    generative = models.JSONField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "number"]
        constraints = [models.UniqueConstraint(fields=["model", "number"], name="version_unique_number")]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.number}"


def _relative_drop_validator(value: float) -> None:
    from django.core.exceptions import ValidationError

    if not 0 <= value < 1:
        raise ValidationError(f"max_relative_drop must be at least 0 and below 1 (a fraction: 0.01 is 1 %); got {value}")


class ValidationSet(Audited):
    """Labelled inputs of a model that its derived versions must score on within a margin of their parent."""

    audit_type = "validation_set"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # CASCADE: a model can be deleted only without versions (PROTECT), and then its sets judge nothing.
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="validation_sets")
    name = models.CharField(max_length=63, validators=[slug_validator])
    metric = models.CharField(max_length=32, choices=[(m, m) for m in METRICS])
    # The candidate may score at most this fraction below its parent (0.01: 1 %).
    max_relative_drop = models.FloatField(default=0.01, validators=[_relative_drop_validator])
    # The file, content-addressed in the artifact store (catalog/artifacts.py); its format: optimisation/validation_data.py.
    content_sha256 = models.CharField(max_length=64)
    content_size = models.BigIntegerField()
    rows = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="validation_set_unique_name")]

    def __str__(self) -> str:
        return f"{self.model.name}/{self.name}"


class GateResult(Audited):
    """One run of the accuracy gate: a version (the candidate) against its parent on one validation set."""

    audit_type = "gate_result"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="gate_results")
    # CASCADE: deleting a set (an admin's decision, audited) takes its results along; the audit trail keeps them.
    validation_set = models.ForeignKey(ValidationSet, on_delete=models.CASCADE, related_name="gate_results")
    passed = models.BooleanField()
    # [{"name", "measured", "baseline", "threshold", "passed"}]
    checks = models.JSONField(default=list, blank=True)
    values = models.JSONField(default=dict, blank=True)  # the candidate's metric values
    baseline_values = models.JSONField(default=dict, blank=True)  # the parent's
    measured_on = models.CharField(max_length=200)  # "node-a (CPU, onnxruntime 1.22.1)"
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["version", "validation_set", "-created"], name="gate_result_latest")]

    def __str__(self) -> str:
        return f"{self.version} on {self.validation_set.name}: {'passed' if self.passed else 'failed'}"
