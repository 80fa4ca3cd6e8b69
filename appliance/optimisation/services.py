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
from appliance.catalog.profile import ProfileError, check_against, normalise
from appliance.catalog.services import model_update
from appliance.core.errors import ConflictError, DomainError
from appliance.nodes.models import Node
from appliance.optimisation import profiles
from appliance.optimisation.choices import ACTIVE_JOB_STATES, DEFAULT_KINDS, CandidateKind, JobState
from appliance.optimisation.models import (
    OptimisationCandidate,
    OptimisationJob,
    ProfileSearch,
    ProfileSearchResult,
)

TASK_RUN = "optimisation.run"


class OptimisationError(DomainError):
    pass


class OptimisationBusy(ConflictError):
    pass


def _send(task: str, row_id: str) -> None:
    """A job's or a search's task, on the optimiser's queue, its tracking row's id as task id."""
    from appliance.celery import app

    app.send_task(task, args=[row_id], queue=settings.OPTIMISE_QUEUE, task_id=row_id)


def _progress(model: type[OptimisationJob] | type[ProfileSearch], row_id: UUID | str, message: str) -> None:
    """One more progress line on a job's or a search's row (not audited: its states are)."""
    with transaction.atomic():
        row = model.objects.select_for_update().get(pk=row_id)
        row.step = message[:200]
        row.progress = [*row.progress, {"time": timezone.now().isoformat(), "message": message}]
        row.save(update_fields=["step", "progress"])


@transaction.atomic
def _fail(model: type[OptimisationJob] | type[ProfileSearch], row_id: UUID | str, error: str) -> None:
    """A job or search that has not ended fails, saying why (audited)."""
    row = model.objects.select_for_update().get(pk=row_id)
    if row.state in (JobState.SUCCEEDED, JobState.FAILED):
        return
    row.state, row.finished, row.error = JobState.FAILED, timezone.now(), error[:5000]
    row.save()


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
    transaction.on_commit(lambda: _send(TASK_RUN, job_id))
    return job


def _claim(model: type[OptimisationJob] | type[ProfileSearch], row_id: UUID | str, measured_on: str,
           ) -> OptimisationJob | ProfileSearch | None:  # fmt: skip
    """pending → running, once. A row found running was cut off: the optimiser runs one job or
    search at a time on a solo worker, and a message comes back (acks late, rejected when the
    worker is lost) only when that worker died mid-way (its private Triton, bound to it by the
    parent-death signal, went too); it is failed, which frees the version for a new one."""
    with transaction.atomic():
        row = model.objects.select_for_update().filter(pk=row_id).first()
        if row is None or row.state not in ACTIVE_JOB_STATES:
            return None
        if row.state == JobState.RUNNING:
            row.state, row.finished = JobState.FAILED, timezone.now()
            row.error = "interrupted: the optimiser's worker stopped during the run; start a new one"
            row.save()
            return None
        limit = model._meta.get_field("measured_on").max_length
        row.state, row.started, row.measured_on = JobState.RUNNING, timezone.now(), measured_on[:limit]
        row.save()
        return row


def job_claim(*, job_id: UUID | str, measured_on: str) -> OptimisationJob | None:
    job = _claim(OptimisationJob, job_id, measured_on)
    assert job is None or isinstance(job, OptimisationJob)
    return job


def job_progress(*, job_id: UUID | str, message: str) -> None:
    _progress(OptimisationJob, job_id, message)


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


def job_fail(*, job_id: UUID | str, error: str) -> None:
    _fail(OptimisationJob, job_id, error)


# --- Profile searches (optimisation/profiles.py measures; these record) -------------------------

TASK_PROFILE_SEARCH = "optimisation.profile_search"


class ProfileSearchBusy(ConflictError):
    pass


class ProfileSearchNotApplicable(ConflictError):
    pass


@transaction.atomic
def profile_search_create(
    *, version: ModelVersion, node: Node, objective_p99_ms: float, concurrency: int = profiles.DEFAULT_CONCURRENCY,
    requests: int = profiles.DEFAULT_REQUESTS, grid: dict[str, Any] | None = None,
    input_set: ValidationSet | None = None, requested_by: str = "",
) -> ProfileSearch:  # fmt: skip
    """Records the search and starts it after commit on the optimiser's queue. Refused (400)
    where the optimiser cannot measure what the node would serve (profiles.refusal), for a
    grid that is malformed or too large, and for a profile of the grid the version cannot be
    served with; 409 while another search of the version is pending or running."""
    problem = profiles.refusal(version=version, node=node, objective_p99_ms=objective_p99_ms, concurrency=concurrency,
                               requests=requests, input_set=input_set)  # fmt: skip
    if problem:
        raise OptimisationError(problem)
    spec = profiles.normalise_grid(profiles.DEFAULT_GRID if grid is None else grid)
    candidates, pruned = profiles.expand(spec, version_max_batch_size=version.max_batch_size, concurrency=concurrency)
    base = normalise(version.model.serving_profile)
    for candidate in candidates:
        try:
            check_against(version, profiles.serving_profile(candidate, base))
        except ProfileError as exc:
            raise OptimisationError(f"{candidate.label()}: {exc} (the model's serving profile, with the grid's "
                                    "fields changed)") from None  # fmt: skip
    try:
        with transaction.atomic():
            search = ProfileSearch.objects.create(
                version=version, node=node, node_name=node.name, objective_p99_ms=objective_p99_ms,
                concurrency=concurrency, requests=requests, input_set=input_set, grid=spec, pruned=pruned,
                base_profile=base, requested_by=requested_by,
            )  # fmt: skip
    except IntegrityError:
        raise ProfileSearchBusy(f"a profile search of {version} is already pending or running") from None
    search_id = str(search.pk)
    transaction.on_commit(lambda: _send(TASK_PROFILE_SEARCH, search_id))
    return search


def profile_search_claim(*, search_id: UUID | str, measured_on: str) -> ProfileSearch | None:
    search = _claim(ProfileSearch, search_id, measured_on)
    assert search is None or isinstance(search, ProfileSearch)
    return search


def profile_search_progress(*, search_id: UUID | str, message: str) -> None:
    _progress(ProfileSearch, search_id, message)


def profile_search_record(*, search: ProfileSearch, position: int, outcome: profiles.Outcome) -> ProfileSearchResult:
    candidate = outcome.candidate
    return ProfileSearchResult.objects.create(
        search=search, position=position, max_batch_size=candidate.max_batch_size,
        instance_count=candidate.instance_count, max_queue_delay_us=candidate.max_queue_delay_us,
        profile=profiles.serving_profile(candidate, search.base_profile), p50_ms=outcome.p50_ms, p99_ms=outcome.p99_ms,
        throughput=outcome.throughput, errors=outcome.errors,
        met_objective=profiles.meets(outcome, search.objective_p99_ms), client_cpu_us=outcome.client_cpu_us,
        seconds=outcome.seconds, note=outcome.note[:500],
    )  # fmt: skip


@transaction.atomic
def profile_search_finish(*, search_id: UUID | str, recommended: ProfileSearchResult | None, recommendation: str,
                          speed_up: float | None) -> ProfileSearch:  # fmt: skip
    search = ProfileSearch.objects.select_for_update().get(pk=search_id)
    search.state, search.finished, search.step = JobState.SUCCEEDED, timezone.now(), "done"
    search.recommended, search.recommendation, search.speed_up = recommended, recommendation, speed_up
    search.save()
    return search


def profile_search_fail(*, search_id: UUID | str, error: str) -> None:
    _fail(ProfileSearch, search_id, error)


@transaction.atomic
def profile_search_apply(*, search: ProfileSearch, applied_by: str = "") -> ProfileSearch:
    """The one action: the recommended profile becomes the model's serving profile
    (catalog.services.model_update: checked against the newest version, audited); it takes
    effect at the model's next rollout, as any profile change does. Refused (409) before the
    search succeeded, when no profile met the objective, and when the model's profile has
    changed since the search began (the numbers were measured over the old one)."""
    search = ProfileSearch.objects.select_for_update(of=("self",)).select_related("version__model",
                                                                                 "recommended").get(pk=search.pk)
    if search.state != JobState.SUCCEEDED:
        raise ProfileSearchNotApplicable(f"the search is {search.get_state_display().lower()}: nothing to apply yet"
                                         if search.state in ACTIVE_JOB_STATES else
                                         "the search failed: nothing to apply")  # fmt: skip
    if search.recommended is None:
        raise ProfileSearchNotApplicable(f"no profile met the objective (p99 ≤ {search.objective_p99_ms:g} ms at "
                                         f"concurrency {search.concurrency}): nothing to apply")  # fmt: skip
    model = search.version.model
    profile = search.recommended.profile
    current = normalise(model.serving_profile)
    if current not in (search.base_profile, profile):
        raise ProfileSearchNotApplicable(
            f"the serving profile of {model.name} changed after the search began, and the search measured the old "
            "one: start a new search"
        )
    model_update(model=model, serving_profile=profile)
    search.applied, search.applied_by = timezone.now(), applied_by[:150]
    search.save()
    return search
