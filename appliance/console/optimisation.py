"""Console pages of optimisation jobs: start one from a model's page, then watch it (its
progress live, then the candidates' table, a chart and the recommendation)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from appliance.catalog.models import Model
from appliance.console.access import context, domain_errors, guarded, scoped
from appliance.optimisation.choices import DEFAULT_KINDS, CandidateKind, JobState
from appliance.optimisation.models import OptimisationJob
from appliance.optimisation.services import optimisation_job_create

KIND_CHOICES = [(k.value, k.label) for k in DEFAULT_KINDS]


@require_POST
@guarded("optimisation_job", "create")
@domain_errors
def optimisation_start(request: HttpRequest, name: str) -> HttpResponse:
    model = get_object_or_404(scoped(request, Model.objects.all(), "model"), name=name)
    try:
        number = int(request.POST.get("version", ""))
    except ValueError:
        return HttpResponse("version: a version number", status=400, content_type="text/plain; charset=utf-8")
    source = model.versions.filter(number=number).first()
    validation_set = model.validation_sets.filter(name=request.POST.get("validation_set", "")).first()
    if source is None or validation_set is None:
        return HttpResponse("name one of the model's versions and one of its validation sets", status=400,
                            content_type="text/plain; charset=utf-8")  # fmt: skip
    kinds = [k for k, _ in KIND_CHOICES if k in request.POST.getlist("kinds")]
    job = optimisation_job_create(source=source, validation_set=validation_set, kinds=kinds or None,
                                  requested_by=request.user.get_username())  # fmt: skip
    return redirect("console:optimisation-job", pk=job.pk)


def _job_context(request: HttpRequest, pk: str) -> dict[str, Any]:
    job = get_object_or_404(OptimisationJob.objects.select_related("source__model", "validation_set"), pk=pk)
    candidates = list(job.candidates.select_related("version"))
    reference = next((c for c in candidates if c.kind == CandidateKind.REFERENCE), None)
    top = max((c.throughput for c in candidates), default=0.0) or 1.0
    rows = [{
        "candidate": c,
        "speed_up": c.throughput / reference.throughput if reference and reference.throughput else None,
        "size_ratio": c.size_bytes / reference.size_bytes if reference and reference.size_bytes else None,
        "bar": round(100 * c.throughput / top, 1),
    } for c in candidates]  # fmt: skip
    ended = job.state in (JobState.SUCCEEDED, JobState.FAILED)
    return context(request, job=job, rows=rows, ended=ended, progress=list(reversed(job.progress[-12:])))


@guarded("optimisation_job", "read")
def optimisation_job(request: HttpRequest, pk: str) -> HttpResponse:
    return render(request, "console/optimisation_job.html", _job_context(request, pk))


@guarded("optimisation_job", "read")
def optimisation_job_panel(request: HttpRequest, pk: str) -> HttpResponse:
    """The job so far (htmx, every 2 s until it ends)."""
    return render(request, "console/_optimisation_job.html", _job_context(request, pk))
