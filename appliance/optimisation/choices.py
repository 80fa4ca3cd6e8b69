from django.db import models


class JobState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_JOB_STATES = (JobState.PENDING, JobState.RUNNING)
ENDED_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class CandidateKind(models.TextChoices):
    """What the job makes of an ONNX version (the reference is the version itself)."""

    REFERENCE = "reference", "Reference (the version as uploaded)"
    FP16 = "fp16", "FP16 (weights and activations; inputs and outputs kept)"
    INT8_DYNAMIC = "int8_dynamic", "INT8 dynamic (per-channel weights; activations quantised at run time)"
    INT8_STATIC = "int8_static", "INT8 static (QDQ, per-channel, calibrated)"
    INT8_MIXED = "int8_mixed", "INT8 mixed precision (dynamic; the most sensitive layers kept in float)"


# What a job builds unless asked otherwise, in this order.
DEFAULT_KINDS = (CandidateKind.FP16, CandidateKind.INT8_DYNAMIC, CandidateKind.INT8_STATIC, CandidateKind.INT8_MIXED)
