"""Console pages of optimisation jobs: start one from a model's page, then watch it (its
progress live, then the candidates' table, a chart and the recommendation). Profile
searches alike: started from the model's page, watched live, and applied from their page.
Gate runs alike: started from a version's gate table on the model's page. Each of the
three can be cancelled from its page while it has not ended."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from appliance.catalog.models import Model
from appliance.console.access import context, domain_errors, done, guarded, scoped
from appliance.nodes.models import Node
from appliance.optimisation import profiles, services
from appliance.optimisation.choices import DEFAULT_KINDS, ENDED_JOB_STATES, CandidateKind
from appliance.optimisation.models import GateRun, OptimisationJob, ProfileSearch
from appliance.optimisation.services import optimisation_job_create, profile_search_apply, profile_search_create

KIND_CHOICES = [(k.value, k.label) for k in DEFAULT_KINDS]


def _tracked(request: HttpRequest, row: services.Tracked, resource: str, url: str) -> dict[str, Any]:
    """What the live panel of a job, search or gate run needs: its latest progress lines first,
    whether it ended (the panel stops polling), and whether and where to cancel it."""
    from appliance.accounts.access import permits
    from appliance.accounts.roles import role_of

    return {"ended": row.state in ENDED_JOB_STATES, "progress": list(reversed(row.progress[-12:])),
            "cancel_url": reverse(url, args=[row.pk]),
            "may_cancel": permits(role_of(request.user), resource, "cancel")}  # fmt: skip


def _cancel_view(resource: str, model: services.TrackedType, page: str) -> Callable[..., HttpResponseBase]:
    """The console's Cancel button of one kind of row (`services.cancel`: audited; 409 once ended)."""

    @require_POST
    @guarded(resource, "cancel")
    @domain_errors
    def cancel(request: HttpRequest, pk: str) -> HttpResponse:
        row = model.objects.filter(pk=pk).first()
        if row is None:
            raise Http404(f"no such {model._meta.verbose_name}")
        services.cancel(row=row, cancelled_by=request.user.get_username())
        return done(request, page, row.pk)

    return cancel


optimisation_job_cancel = _cancel_view("optimisation_job", OptimisationJob, "console:optimisation-job")
profile_search_cancel = _cancel_view("profile_search", ProfileSearch, "console:profile-search")
gate_run_cancel = _cancel_view("gate_run", GateRun, "console:gate-run")


# --- Gate runs --------------------------------------------------------------------------------


@require_POST
@guarded("gate_run", "create")
@domain_errors
def gate_run_start(request: HttpRequest, name: str) -> HttpResponse:
    model = get_object_or_404(scoped(request, Model.objects.all(), "model"), name=name)
    try:
        number = int(request.POST.get("version", ""))
    except ValueError:
        return _bad_request("version: a version number")
    version = model.versions.select_related("parent").filter(number=number).first()
    if version is None:
        return _bad_request("name one of the model's versions")
    run = services.gate_run_create(version=version, requested_by=request.user.get_username())
    return redirect("console:gate-run", pk=run.pk)


def _run_context(request: HttpRequest, pk: str) -> dict[str, Any]:
    run = get_object_or_404(GateRun.objects.select_related("version__model", "version__parent"), pk=pk)
    return context(request, run=run, **_tracked(request, run, "gate_run", "console:gate-run-cancel"))


@guarded("gate_run", "read")
def gate_run_page(request: HttpRequest, pk: str) -> HttpResponse:
    return render(request, "console/gate_run.html", _run_context(request, pk))


@guarded("gate_run", "read")
def gate_run_panel(request: HttpRequest, pk: str) -> HttpResponse:
    """The run so far (htmx, every 2 s until it ends)."""
    return render(request, "console/_gate_run.html", _run_context(request, pk))


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
    return context(request, job=job, rows=rows,
                   **_tracked(request, job, "optimisation_job", "console:optimisation-job-cancel"))


@guarded("optimisation_job", "read")
def optimisation_job(request: HttpRequest, pk: str) -> HttpResponse:
    return render(request, "console/optimisation_job.html", _job_context(request, pk))


@guarded("optimisation_job", "read")
def optimisation_job_panel(request: HttpRequest, pk: str) -> HttpResponse:
    """The job so far (htmx, every 2 s until it ends)."""
    return render(request, "console/_optimisation_job.html", _job_context(request, pk))


# --- Profile searches -------------------------------------------------------------------------


def _bad_request(message: str) -> HttpResponse:
    return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")


@require_POST
@guarded("profile_search", "create")
@domain_errors
def profile_search_start(request: HttpRequest, name: str) -> HttpResponse:
    model = get_object_or_404(scoped(request, Model.objects.all(), "model"), name=name)
    try:
        number = int(request.POST.get("version", ""))
        objective = float(request.POST.get("objective_p99_ms", ""))
        concurrency = int(request.POST.get("concurrency") or profiles.DEFAULT_CONCURRENCY)
        requests = int(request.POST.get("requests") or profiles.DEFAULT_REQUESTS)
    except ValueError:
        return _bad_request("version, concurrency and requests are whole numbers; the objective a number of ms")
    version = model.versions.filter(number=number).first()
    node = Node.objects.filter(name=request.POST.get("node", "").strip()).first()
    if version is None or node is None:
        return _bad_request("name one of the model's versions and a node by its name")
    set_name = request.POST.get("input_set", "")
    input_set = model.validation_sets.filter(name=set_name).first() if set_name else None
    if set_name and input_set is None:
        return _bad_request(f"the model has no validation set named {set_name!r}")
    search = profile_search_create(version=version, node=node, objective_p99_ms=objective, concurrency=concurrency,
                                   requests=requests, input_set=input_set,
                                   requested_by=request.user.get_username())  # fmt: skip
    return redirect("console:profile-search", pk=search.pk)


def _search_context(request: HttpRequest, pk: str) -> dict[str, Any]:
    search = get_object_or_404(ProfileSearch.objects.select_related("version__model", "input_set"), pk=pk)
    results = list(search.results.all())
    top = max((r.throughput or 0.0 for r in results), default=0.0) or 1.0
    index = profiles.baseline_of([
        profiles.Outcome(profiles.Candidate(r.max_batch_size, r.instance_count, r.max_queue_delay_us),
                         throughput=r.throughput) for r in results])  # fmt: skip
    baseline = results[index] if index is not None else None
    rows = [{
        "result": r,
        "speed_up": r.throughput / baseline.throughput if r.throughput and baseline and baseline.throughput else None,
        "bar": round(100 * (r.throughput or 0.0) / top, 1),
    } for r in results]  # fmt: skip
    return context(request, search=search, rows=rows,
                   **_tracked(request, search, "profile_search", "console:profile-search-cancel"))


@guarded("profile_search", "read")
def profile_search_page(request: HttpRequest, pk: str) -> HttpResponse:
    return render(request, "console/profile_search.html", _search_context(request, pk))


@guarded("profile_search", "read")
def profile_search_panel(request: HttpRequest, pk: str) -> HttpResponse:
    """The search so far (htmx, every 2 s until it ends)."""
    return render(request, "console/_profile_search.html", _search_context(request, pk))


@require_POST
@guarded("profile_search", "apply")
@domain_errors
def profile_search_apply_view(request: HttpRequest, pk: str) -> HttpResponse:
    search = get_object_or_404(ProfileSearch, pk=pk)
    profile_search_apply(search=search, applied_by=request.user.get_username())
    return done(request, "console:profile-search", search.pk)
