"""Writes for optimisation jobs, profile searches and gate runs: the tracking row first,
the task after commit (its id is the row's), every state change one audited save;
progress lines are appended without an audit row each (the states are audited).

Each of the three can be cancelled while pending or running: the row is cancelled at
once (audited) and the worker stops at its next progress line, which is its checkpoint
(`Cancelled`), cleaning up as on any other end (a private Triton or engine goes)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
from appliance.optimisation.choices import ACTIVE_JOB_STATES, DEFAULT_KINDS, ENDED_JOB_STATES, CandidateKind, JobState
from appliance.optimisation.models import (
    GateRun,
    OptimisationCandidate,
    OptimisationJob,
    ProfileSearch,
    ProfileSearchResult,
)

# The tracking rows of the optimiser's work: they share states, progress, claiming and cancelling.
Tracked = OptimisationJob | ProfileSearch | GateRun
TrackedType = type[OptimisationJob] | type[ProfileSearch] | type[GateRun]

log = logging.getLogger(__name__)

TASK_RUN = "optimisation.run"


class OptimisationError(DomainError):
    pass


class OptimisationBusy(ConflictError):
    pass


class NotCancellable(ConflictError):
    pass


class Cancelled(Exception):
    """Raised at a worker's checkpoint when its row was cancelled: the worker stops there."""


def _send(task: str, row_id: str) -> None:
    """A job's or a search's task, on the optimiser's queue, its tracking row's id as task id."""
    from appliance.celery import app

    app.send_task(task, args=[row_id], queue=settings.OPTIMISE_QUEUE, task_id=row_id)


def _record_and_send(model: TrackedType, task: str, busy: ConflictError, **fields: Any) -> Tracked:
    """The tracking row, then its task after commit (its id the row's); `busy` when the row's
    one-active-per-version constraint refuses it."""
    try:
        with transaction.atomic():
            row = model.objects.create(**fields)
    except IntegrityError:
        raise busy from None
    row_id = str(row.pk)
    transaction.on_commit(lambda: _send(task, row_id))
    return row


def run_tracked(model: TrackedType, row_id: str, measured_on: str, body: Callable[[Any], None]) -> str:
    """A worker's whole handling of one row: claims it (pending → running, once), runs `body`
    on it as the optimiser (audited so), and records how it ended: "succeeded", "cancelled"
    (stopped at a checkpoint), "failed" (the error on the row), or "not pending"."""
    from appliance.audit.choices import Origin
    from appliance.audit.context import audit_context

    with audit_context(origin=Origin.TASK, actor="optimiser"):
        row = _claim(model, row_id, measured_on)
        if row is None:
            return "not pending"
        try:
            body(row)
        except Cancelled:
            log.info("%s %s cancelled", model._meta.verbose_name, row_id)
            return "cancelled"
        except Exception as exc:
            log.exception("%s %s failed", model._meta.verbose_name, row_id)
            _fail(model, row_id, f"{type(exc).__name__}: {exc}")
            return "failed"
    return "succeeded"


def _progress(model: TrackedType, row_id: UUID | str, message: str) -> None:
    """One more progress line on a row (not audited: its states are). The worker's
    checkpoint: a row cancelled meanwhile raises Cancelled instead."""
    with transaction.atomic():
        row = model.objects.select_for_update().get(pk=row_id)
        if row.state == JobState.CANCELLED:
            raise Cancelled(f"cancelled by {row.cancelled_by or 'an operator'}")
        row.step = message[:200]
        row.progress = [*row.progress, {"time": timezone.now().isoformat(), "message": message}]
        row.save(update_fields=["step", "progress"])


@transaction.atomic
def _fail(model: TrackedType, row_id: UUID | str, error: str) -> None:
    """A row that has not ended fails, saying why (audited)."""
    row = model.objects.select_for_update().get(pk=row_id)
    if row.state in ENDED_JOB_STATES:
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
    job = _record_and_send(OptimisationJob, TASK_RUN, OptimisationBusy(f"an optimisation of {source} is already running"),
                           source=source, validation_set=validation_set, calibration_set=calibration_set,
                           kinds=[str(k) for k in wanted], requested_by=requested_by)  # fmt: skip
    assert isinstance(job, OptimisationJob)
    return job


def _claim(model: TrackedType, row_id: UUID | str, measured_on: str) -> Tracked | None:
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


def _running(model: TrackedType, row_id: UUID | str) -> Tracked | None:
    """The row, locked, if it still runs (a cancelled one is not finished over)."""
    row = model.objects.select_for_update().get(pk=row_id)
    return row if row.state == JobState.RUNNING else None


@transaction.atomic
def cancel(*, row: Tracked, cancelled_by: str = "") -> Tracked:
    """Cancels a pending or running job, search or gate run (audited): a pending one never
    starts; a running one stops at its next checkpoint. 409 once it has ended."""
    locked = type(row).objects.select_for_update().get(pk=row.pk)
    if locked.state in ENDED_JOB_STATES:
        raise NotCancellable(f"it has already ended ({locked.get_state_display().lower()}): nothing to cancel")
    locked.state, locked.finished, locked.cancelled_by = JobState.CANCELLED, timezone.now(), cancelled_by[:150]
    locked.error = f"cancelled by {cancelled_by or 'an operator'}"
    locked.save()
    return locked




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
def job_finish(*, job_id: UUID | str, recommended: OptimisationCandidate | None, recommendation: str) -> None:
    job = _running(OptimisationJob, job_id)
    if not isinstance(job, OptimisationJob):
        return
    job.state, job.finished, job.step = JobState.SUCCEEDED, timezone.now(), "done"
    job.recommended, job.recommendation = recommended, recommendation
    job.save()




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
    input_set: ValidationSet | None = None, time_limit_s: int | None = None, requested_by: str = "",
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
    search = _record_and_send(
        ProfileSearch, TASK_PROFILE_SEARCH, ProfileSearchBusy(f"a profile search of {version} is already pending or running"),
        version=version, node=node, node_name=node.name, objective_p99_ms=objective_p99_ms, concurrency=concurrency,
        requests=requests, input_set=input_set, grid=spec, pruned=pruned, base_profile=base, requested_by=requested_by,
        time_limit_s=settings.PROFILE_SEARCH_TIME_LIMIT_S if time_limit_s is None else time_limit_s,
    )  # fmt: skip
    assert isinstance(search, ProfileSearch)
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
    """The search succeeded (unless it was cancelled meanwhile: then it stays so)."""
    search = _running(ProfileSearch, search_id)
    if not isinstance(search, ProfileSearch):
        return ProfileSearch.objects.get(pk=search_id)
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


# --- Gate runs (optimisation/gaterun.py measures; these record) ---------------------------------

TASK_GATE_RUN = "optimisation.gate_run"


class GateRunBusy(ConflictError):
    pass


@transaction.atomic
def gate_run_create(*, version: ModelVersion, set_names: Sequence[str] | None = None, requested_by: str = "") -> GateRun:
    """Records the run and starts it after commit on the optimiser's queue: the version and
    its parent measured on each named validation set of the model (default: every one).
    Refused (400) for a version without a parent (the reference, not gated), a model
    without sets or a name it lacks, and a version or parent the optimiser cannot run
    (gaterun.refusal); 409 while another run of the version is pending or running."""
    from appliance.optimisation import gaterun

    if version.parent_id is None:
        raise OptimisationError(f"{version} has no parent: it is the reference its children are judged against, "
                                "and is not gated itself")  # fmt: skip
    available = {s.name: s for s in version.model.validation_sets.order_by("name")}
    if not available:
        raise OptimisationError(f"model '{version.model.name}' has no validation set: upload one first")
    names = list(available) if set_names is None else list(dict.fromkeys(set_names))
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise OptimisationError(f"model '{version.model.name}' has no validation set named "
                                f"{', '.join(repr(n) for n in unknown) or 'at all in the request'} "
                                f"(its sets: {', '.join(available)})")  # fmt: skip
    chosen = [available[name] for name in names]
    problem = gaterun.refusal(version, chosen)
    if problem:
        raise OptimisationError(problem)
    run = _record_and_send(GateRun, TASK_GATE_RUN, GateRunBusy(f"a gate run of {version} is already pending or running"),
                           version=version, requested_by=requested_by,
                           sets=[{"id": str(s.pk), "name": s.name, "metric": s.metric} for s in chosen])  # fmt: skip
    assert isinstance(run, GateRun)
    return run




def gate_run_progress(*, run_id: UUID | str, message: str) -> None:
    _progress(GateRun, run_id, message)


@transaction.atomic
def gate_run_record(*, run_id: UUID | str, validation_set: ValidationSet, verdict: dict[str, Any], reason: str,
                    values: dict[str, Any], baseline_values: dict[str, Any]) -> None:  # fmt: skip
    """One set judged: its gate result on the version (what deployment reads) and a line of the
    run's outcome. Nothing is recorded for a run cancelled meanwhile."""
    from appliance.catalog.services import gate_record

    run = _running(GateRun, run_id)
    if not isinstance(run, GateRun):
        raise Cancelled("the run was cancelled")
    gate_record(version=run.version, validation_set=validation_set, passed=verdict["passed"],
                checks=verdict["checks"], values=values, baseline_values=baseline_values,
                measured_on=run.measured_on)  # fmt: skip
    run.outcome = [*run.outcome, {"set": validation_set.name, "metric": validation_set.metric,
                                  "passed": verdict["passed"], "reason": reason, "checks": verdict["checks"],
                                  "values": values, "baseline_values": baseline_values}]  # fmt: skip
    run.save(update_fields=["outcome"])


@transaction.atomic
def gate_run_finish(*, run_id: UUID | str) -> None:
    run = _running(GateRun, run_id)
    if not isinstance(run, GateRun):
        return
    run.state, run.finished, run.step = JobState.SUCCEEDED, timezone.now(), "done"
    run.passed = bool(run.outcome) and all(line["passed"] for line in run.outcome)
    run.save()

