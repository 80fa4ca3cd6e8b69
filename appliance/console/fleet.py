"""Console pages of the fleet: nodes (list with filters, detail with actions), the
MIG layout editor (the planner's placement or its refusal before anything is
applied) and a reconfiguration watched step by step."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from appliance.console.access import FROM_URL, context, domain_errors, done, guarded
from appliance.nodes import services as node_services
from appliance.nodes.choices import RECONFIGURATION_STEPS, AdminState, Health
from appliance.nodes.mig.catalog import GPU_MODELS
from appliance.nodes.mig.planner import plan
from appliance.nodes.models import Gpu, JoinToken, Node, Reconfiguration

MAX_INSTANCES = 7  # no GPU we know has more than seven MIG instances
GREY = "#9aa5b1"


def colour(key: str) -> str:
    hue = int(hashlib.sha256(key.encode()).hexdigest()[:4], 16) % 360
    return f"hsl({hue}, 60%, 55%)"


def _slices(slots: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bars of a GPU drawn by memory-slice position: {profile, start, size, tenant}."""
    return [
        {"profile": r["profile"], "left": 100 * r["start"] / slots, "width": 100 * r["size"] / slots,
         "tenant": r.get("tenant") or "", "colour": colour(r["tenant"]) if r.get("tenant") else GREY}
        for r in rows
    ]  # fmt: skip


def _gpu_picture(gpu: Gpu) -> dict[str, Any]:
    slots = GPU_MODELS[gpu.model].memory_slices if gpu.model in GPU_MODELS else 8
    rows = [{"profile": d.profile, "start": d.start, "size": d.size, "tenant": d.tenant.slug if d.tenant else ""}
            for d in gpu.mig_devices.all()]  # fmt: skip
    return {"gpu": gpu, "slices": _slices(slots, rows), "editable": gpu.model in GPU_MODELS}


@guarded("node", "read")
def nodes(request: HttpRequest) -> HttpResponse:
    rows = Node.objects.annotate(gpu_count=Count("gpus")).order_by("name")  # a count, not 4 GPU rows per node
    filters = {k: request.GET.get(k, "").strip() for k in ("q", "health", "state", "zone")}
    if filters["q"]:
        rows = rows.filter(name__icontains=filters["q"])
    if filters["health"]:
        rows = rows.filter(health=filters["health"])
    if filters["state"]:
        rows = rows.filter(admin_state=filters["state"])
    if filters["zone"]:
        rows = rows.filter(zone=filters["zone"])
    zones = Node.objects.order_by("zone").values_list("zone", flat=True).distinct()
    return render(request, "console/nodes.html", context(
        request, nodes=rows, filters=filters, zones=zones, healths=Health.choices, states=AdminState.choices,
    ))  # fmt: skip


@guarded("node", "read")
def node(request: HttpRequest, name: str) -> HttpResponse:
    obj = get_object_or_404(Node.objects.prefetch_related("gpus__mig_devices__tenant"), name=name)
    gpus = [_gpu_picture(gpu) for gpu in obj.gpus.all()]
    history = obj.health_history.order_by("-time")[:20]
    runs = obj.reconfigurations.order_by("-created")[:5]
    return render(request, "console/node.html", context(request, node=obj, gpus=gpus, history=history, runs=runs,
                                                        replicas=obj.replicas.select_related("deployment__version__model")
                                                        .exclude(state="retired")[:50]))  # fmt: skip


NODE_ACTIONS = {
    "drain": lambda n: node_services.node_set_admin_state(node=n, admin_state=AdminState.DRAINING),
    "maintenance": lambda n: node_services.node_set_admin_state(node=n, admin_state=AdminState.MAINTENANCE),
    "undrain": lambda n: node_services.node_set_admin_state(node=n, admin_state=AdminState.ACTIVE),
    "clear-fault": lambda n: node_services.node_clear_fault(node=n),
    "revoke-credential": lambda n: node_services.node_revoke_credential(node=n),
}


@require_POST
@guarded("node", FROM_URL)
@domain_errors
def node_action(request: HttpRequest, name: str, action: str) -> HttpResponse:
    obj = get_object_or_404(Node, name=name)
    if action not in NODE_ACTIONS:
        raise Http404("no such action")
    NODE_ACTIONS[action](obj)
    return redirect("console:node", name=obj.name)


def _layout_of(request: HttpRequest) -> list[str]:
    source = request.POST if request.method == "POST" else request.GET
    return [p for p in source.getlist("profile") if p][:MAX_INSTANCES]


def _gpu(name: str, index: int) -> Gpu:
    gpu = Gpu.objects.select_related("node").prefetch_related("mig_devices__tenant").filter(node__name=name, index=index).first()
    if gpu is None:
        raise Http404("no such GPU")
    return gpu


def _preview(gpu: Gpu, layout: list[str]) -> dict[str, Any]:
    if not layout:
        return {"ok": False, "reason": "choose at least one profile", "slices": []}
    result = plan(GPU_MODELS[gpu.model], layout)
    if not result.ok:
        return {"ok": False, "reason": result.reason, "slices": []}
    slots = GPU_MODELS[gpu.model].memory_slices
    rows = [{"profile": p.profile, "start": p.start, "size": p.size} for p in result.placements]
    moves, problem = node_services.plan_moves(gpu, [{"profile": p.profile, "start": p.start} for p in result.placements])
    return {"ok": not problem, "reason": problem, "slices": _slices(slots, rows), "moves": moves,
            "placements": [str(p) for p in result.placements]}  # fmt: skip


@guarded("node", "read")
def mig_editor(request: HttpRequest, name: str, index: int) -> HttpResponse:
    gpu = _gpu(name, index)
    if gpu.model not in GPU_MODELS:
        raise Http404("this GPU is not a MIG-capable model we know")
    model = GPU_MODELS[gpu.model]
    current = [d.profile for d in gpu.mig_devices.all()]
    chosen = current + [""] * (MAX_INSTANCES - len(current))
    return render(request, "console/mig_editor.html", context(
        request, gpu=gpu, picture=_gpu_picture(gpu), profiles=model.profiles, chosen=chosen,
        preview=_preview(gpu, current) if current else None,
    ))  # fmt: skip


@guarded("mig_layout", "plan")
def mig_preview(request: HttpRequest, name: str, index: int) -> HttpResponse:
    """The planner's answer for the chosen profiles (htmx, as they change). Reads only."""
    gpu = _gpu(name, index)
    return render(request, "console/_mig_preview.html", context(request, preview=_preview(gpu, _layout_of(request))))


@require_POST
@guarded("node", "reconfigure")
@domain_errors
def mig_apply(request: HttpRequest, name: str, index: int) -> HttpResponse:
    gpu = _gpu(name, index)
    run = node_services.reconfiguration_create(node=gpu.node, gpu_index=gpu.index, layout=_layout_of(request))
    return done(request, "console:reconfiguration", run.pk)


def _run_context(request: HttpRequest, pk: str) -> dict[str, Any]:
    run = get_object_or_404(Reconfiguration.objects.select_related("node"), pk=pk)
    done = {s.name: s for s in run.steps.all()}
    steps = [{"name": n, "state": done[n].state if n in done else "waiting", "detail": done[n].detail if n in done else ""}
             for n in RECONFIGURATION_STEPS]  # fmt: skip
    # After a failure the agent records how it restored the previous layout.
    steps += [{"name": s.name, "state": s.state, "detail": s.detail} for s in done.values() if s.name not in RECONFIGURATION_STEPS]
    finished = sum(1 for s in steps if s["state"] in ("succeeded", "skipped"))
    ended = run.state in ("succeeded", "failed")
    percent = 100 if run.state == "succeeded" else round(100 * finished / len(steps))
    return context(request, run=run, steps=steps, percent=percent, ended=ended)


@guarded("reconfiguration", "read")
def reconfiguration(request: HttpRequest, pk: str) -> HttpResponse:
    return render(request, "console/reconfiguration.html", _run_context(request, pk))


@guarded("reconfiguration", "read")
def reconfiguration_panel(request: HttpRequest, pk: str) -> HttpResponse:
    """The steps so far (htmx, every second until the run ends)."""
    return render(request, "console/_reconfiguration.html", _run_context(request, pk))


def _join_tokens_page(request: HttpRequest, made: dict[str, Any] | None = None) -> HttpResponse:
    return render(request, "console/join_tokens.html", context(
        request, tokens=JoinToken.objects.select_related("used_by")[:50], default_ttl=settings.JOIN_TOKEN_DEFAULT_TTL_S,
        min_ttl=settings.JOIN_TOKEN_MIN_TTL_S, max_ttl=settings.JOIN_TOKEN_MAX_TTL_S, made=made,
    ))  # fmt: skip


@guarded("join_token", "read")
def join_tokens(request: HttpRequest) -> HttpResponse:
    """One-time tokens for enrolling new servers (the provisioning playbook presents one)."""
    return _join_tokens_page(request)


@require_POST
@guarded("join_token", "create")
@domain_errors
def join_token_create(request: HttpRequest) -> HttpResponse:
    """Makes a token and shows it this once (the page is the only place its plaintext appears)."""
    try:
        ttl = int(request.POST.get("ttl_s", settings.JOIN_TOKEN_DEFAULT_TTL_S))
    except ValueError:
        ttl = -1  # refused below with the allowed range
    token, plaintext = node_services.join_token_create(ttl_s=ttl, note=request.POST.get("note", "")[:200],
                                                       created_by=request.user.get_username())  # fmt: skip
    return _join_tokens_page(request, {"token": token, "plaintext": plaintext})


@require_POST
@guarded("join_token", "revoke")
@domain_errors
def join_token_revoke(request: HttpRequest, pk: str) -> HttpResponse:
    node_services.join_token_revoke(token=get_object_or_404(JoinToken, pk=pk))
    return done(request, "console:join-tokens")
