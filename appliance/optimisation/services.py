"""Writes for optimisation jobs: the tracking row first, the task after commit (its id
is the row's), every state change one audited save; progress lines are appended
without an audit row each (the job's states are audited)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import ModelVersion, ValidationSet
from appliance.core.errors import ConflictError, DomainError
from appliance.optimisation.choices import DEFAULT_KINDS, CandidateKind, JobState
from appliance.optimisation.models import OptimisationCandidate, OptimisationJob

TASK_RUN = "optimisation.run"


class OptimisationError(DomainError):
    pass


class OptimisationBusy(ConflictError):
    pass


def _send(job_id: str) -> None:
    from appliance.celery import app

    app.send_task(TASK_RUN, args=[job_id], queue=settings.OPTIMISE_QUEUE, task_id=job_id)


@transaction.atomic
def optimisation_job_create(
    *, source: ModelVersion, validation_set: ValidationSet, calibration_set: ValidationSet | None = None,
    kinds: Sequence[str] | None = None, requested_by: str = "",
) -> OptimisationJob:  # fmt: skip
    """Records the job and starts it after commit on the optimiser's queue. Refused for a
    version that is not ONNX, for sets of another model, and while another job of the same
    version runs (409)."""
    if source.format != ArtifactFormat.ONNX:
        raise OptimisationError(
            f"{source} is a {source.format} version: candidates are made from ONNX versions (a TensorRT engine is "
            "built from an ONNX version on the GPU node that will serve it)"
        )
    for chosen in (validation_set, calibration_set):
        if chosen is not None and chosen.model_id != source.model_id:
            raise OptimisationError(f"validation set '{chosen}' belongs to another model than {source}")
    wanted = list(DEFAULT_KINDS if kinds is None else kinds)
    unknown = [k for k in wanted if k not in CandidateKind.values or k == CandidateKind.REFERENCE]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        allowed = ", ".join(k for k in CandidateKind.values if k != CandidateKind.REFERENCE)
        raise OptimisationError(f"kinds must be distinct values among {allowed}; got {', '.join(map(str, wanted)) or 'none'}")
    try:
        with transaction.atomic():
            job = OptimisationJob.objects.create(source=source, validation_set=validation_set,
                                                 calibration_set=calibration_set, kinds=[str(k) for k in wanted],
                                                 requested_by=requested_by)  # fmt: skip
    except IntegrityError:
        raise OptimisationBusy(f"an optimisation of {source} is already running") from None
    job_id = str(job.pk)
    transaction.on_commit(lambda: _send(job_id))
    return job


def job_claim(*, job_id: UUID | str, measured_on: str) -> OptimisationJob | None:
    """pending → running, once (a redelivered task finds it taken and does nothing)."""
    with transaction.atomic():
        job = OptimisationJob.objects.select_for_update().filter(pk=job_id, state=JobState.PENDING).first()
        if job is None:
            return None
        job.state, job.started, job.measured_on = JobState.RUNNING, timezone.now(), measured_on[:300]
        job.save()
        return job


def job_progress(*, job_id: UUID | str, message: str) -> None:
    with transaction.atomic():
        job = OptimisationJob.objects.select_for_update().get(pk=job_id)
        job.step = message[:200]
        job.progress = [*job.progress, {"time": timezone.now().isoformat(), "message": message}]
        job.save(update_fields=["step", "progress"])


def candidate_record(*, job: OptimisationJob, kind: str, version: ModelVersion | None, size_bytes: int,
                     speed: dict[str, Any], values: dict[str, float], verdict: dict[str, Any],
                     kept_in_float: Sequence[str] = (), search: Sequence[dict[str, Any]] = (),
                     note: str = "") -> OptimisationCandidate:  # fmt: skip
    return OptimisationCandidate.objects.create(
        job=job, kind=kind, version=version, size_bytes=size_bytes, p50_ms=speed["p50_ms"], p99_ms=speed["p99_ms"],
        throughput=speed["throughput_rows_s"], values=values, checks=verdict["checks"], passed=verdict["passed"],
        kept_in_float=list(kept_in_float), search=list(search), note=note[:500],
    )  # fmt: skip


@transaction.atomic
def job_finish(*, job_id: UUID | str, recommended: OptimisationCandidate | None, recommendation: str) -> OptimisationJob:
    job = OptimisationJob.objects.select_for_update().get(pk=job_id)
    job.state, job.finished, job.step = JobState.SUCCEEDED, timezone.now(), "done"
    job.recommended, job.recommendation = recommended, recommendation
    job.save()
    return job


@transaction.atomic
def job_fail(*, job_id: UUID | str, error: str) -> None:
    job = OptimisationJob.objects.select_for_update().get(pk=job_id)
    if job.state in (JobState.SUCCEEDED, JobState.FAILED):
        return
    job.state, job.finished, job.error = JobState.FAILED, timezone.now(), error[:5000]
    job.save()
