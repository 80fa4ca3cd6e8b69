"""Console pages of provisioning: start a run (add a node, re-provision one, check every node
for drift), watch its events and log live, and see which nodes drifted from the playbook."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from appliance.console.access import context, domain_errors, guarded
from appliance.provisioning import services
from appliance.provisioning.choices import ACTIVE_RUN_STATES, RunKind
from appliance.provisioning.models import ProvisioningRun


@guarded("provisioning_run", "read")
def runs(request: HttpRequest) -> HttpResponse:
    return render(request, "console/provisioning.html", context(
        request, runs=ProvisioningRun.objects.defer("log")[:50], kinds=RunKind.choices, drift=services.latest_drift(),
    ))  # fmt: skip


@require_POST
@guarded("provisioning_run", "create")
@domain_errors
def run_start(request: HttpRequest) -> HttpResponse:
    kind = request.POST.get("kind", "")
    if kind not in RunKind.values:
        return HttpResponse(f"kind: one of {', '.join(RunKind.values)}", status=400, content_type="text/plain; charset=utf-8")
    run = services.run_create(kind=kind, limit=request.POST.get("limit", "").strip()[:200],
                              requested_by=request.user.get_username())  # fmt: skip
    return redirect("console:provisioning-run", pk=run.pk)


def _run_context(request: HttpRequest, pk: str) -> dict[str, Any]:
    run = get_object_or_404(ProvisioningRun, pk=pk)
    return context(request, run=run, events=list(run.events.order_by("-counter")[:40]),
                   ended=run.state not in ACTIVE_RUN_STATES)  # fmt: skip


@guarded("provisioning_run", "read")
def run_page(request: HttpRequest, pk: str) -> HttpResponse:
    return render(request, "console/provisioning_run.html", _run_context(request, pk))


@guarded("provisioning_run", "read")
def run_panel(request: HttpRequest, pk: str) -> HttpResponse:
    """The run so far (htmx, every 2 s until it ends)."""
    return render(request, "console/_provisioning_run.html", _run_context(request, pk))
