"""The operator console: server-rendered pages, htmx for the parts that refresh.

Roles shape every page: admins and operators may act, auditors see everything
and change nothing (no buttons, and the server refuses), tenant admins see only
what concerns their tenant. Every action goes through the same services as the
REST API, so it is audited the same way (origin `web`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from appliance.accounts.choices import Role
from appliance.accounts.models import ModelGrant
from appliance.accounts.roles import role_of, tenant_id_of
from appliance.audit.models import AuditEvent
from appliance.core.errors import DomainError
from appliance.nodes.mig.catalog import GPU_MODELS
from appliance.nodes.models import Node
from appliance.rollouts import services
from appliance.rollouts.choices import ACTIVE_DEPLOYMENT_STATES
from appliance.rollouts.models import Deployment

ACTORS = (Role.ADMIN, Role.OPERATOR)


def _context(request: HttpRequest, **values: Any) -> dict[str, Any]:
    role = role_of(request.user)
    if role is None:
        raise PermissionDenied("this account has no role in the appliance")
    return {"role": role, "can_act": role in ACTORS, "is_tenant_admin": role == Role.TENANT_ADMIN, **values}


def _deployments(request: HttpRequest) -> QuerySet[Deployment]:
    qs = Deployment.objects.select_related("version__model", "previous__version").prefetch_related("replicas__node")
    tenant = tenant_id_of(request.user)
    if tenant is not None:
        qs = qs.filter(version__model__in=ModelGrant.objects.filter(tenant_id=tenant).values("model_id"))
    return qs


def _fleet_only(request: HttpRequest) -> None:
    if role_of(request.user) == Role.TENANT_ADMIN:
        raise PermissionDenied("the fleet is not a tenant admin's to see")


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    context = _context(request)
    if not context["is_tenant_admin"]:
        context["health"] = sorted(Counter(Node.objects.values_list("health", flat=True)).items())
        context["nodes"] = Node.objects.count()
        context["events"] = AuditEvent.objects.order_by("-sequence")[:10]
    return render(request, "console/overview.html", context)


@login_required
def rollouts_panel(request: HttpRequest) -> HttpResponse:
    """The active rollouts, refreshed by htmx every two seconds."""
    active = _deployments(request).filter(state__in=ACTIVE_DEPLOYMENT_STATES)
    return render(request, "console/_rollouts.html", _context(request, active=active))


@login_required
def nodes(request: HttpRequest) -> HttpResponse:
    _fleet_only(request)
    rows = Node.objects.prefetch_related("gpus").order_by("name")
    return render(request, "console/nodes.html", _context(request, nodes=rows))


def _colour(key: str) -> str:
    hue = int(hashlib.sha256(key.encode()).hexdigest()[:4], 16) % 360
    return f"hsl({hue}, 60%, 55%)"


@login_required
def node(request: HttpRequest, name: str) -> HttpResponse:
    _fleet_only(request)
    obj = get_object_or_404(Node.objects.prefetch_related("gpus__mig_devices__tenant"), name=name)
    gpus = []
    for gpu in obj.gpus.all():
        slots = GPU_MODELS[gpu.model].memory_slices if gpu.model in GPU_MODELS else 8
        slices = [
            {"profile": d.profile, "left": 100 * d.start / slots, "width": 100 * d.size / slots,
             "tenant": d.tenant.slug if d.tenant else "", "colour": _colour(d.tenant.slug) if d.tenant else "#9aa5b1"}
            for d in gpu.mig_devices.all()
        ]  # fmt: skip
        gpus.append({"gpu": gpu, "slices": slices})
    history = obj.health_history.order_by("-time")[:20]
    return render(request, "console/node.html", _context(request, node=obj, gpus=gpus, history=history))


@login_required
def deployments(request: HttpRequest) -> HttpResponse:
    return render(request, "console/deployments.html", _context(request, deployments=_deployments(request)[:100]))


@login_required
def deployment(request: HttpRequest, pk: str) -> HttpResponse:
    obj = _deployments(request).filter(pk=pk).first()
    if obj is None:
        raise Http404("no such deployment")
    return render(request, "console/deployment.html", _context(request, d=obj))


ACTIONS = {
    "pause": lambda d, actor: services.deployment_pause(deployment_id=d.pk),
    "resume": lambda d, actor: services.deployment_resume(deployment_id=d.pk),
    "abort": lambda d, actor: services.deployment_abort(deployment_id=d.pk, actor=actor),
    "rollback": lambda d, actor: services.deployment_rollback(deployment_id=d.pk, actor=actor),
}


@require_POST
@login_required
def deployment_action(request: HttpRequest, pk: str, action: str) -> HttpResponse:
    context = _context(request)
    if not context["can_act"]:
        raise PermissionDenied("only admins and operators change rollouts")
    obj = _deployments(request).filter(pk=pk).first()
    if obj is None or action not in ACTIONS:
        raise Http404("no such deployment or action")
    try:
        result = ACTIONS[action](obj, f"user:{request.user.get_username()}")
    except DomainError as exc:
        return HttpResponse(str(exc), status=exc.http_status, content_type="text/plain")
    return redirect("console:deployment", pk=result.pk)


@login_required
def audit(request: HttpRequest) -> HttpResponse:
    _fleet_only(request)
    events = AuditEvent.objects.order_by("-sequence")
    actor, action = request.GET.get("actor", "").strip(), request.GET.get("action", "").strip()
    if actor:
        events = events.filter(actor__icontains=actor)
    if action:
        events = events.filter(action__icontains=action)
    return render(request, "console/audit.html", _context(request, events=events[:100], actor=actor, action=action))
