"""The operator console: server-rendered pages, htmx for the parts that refresh.

Roles shape every page (access.py): admins and operators may act, auditors see
everything and change nothing (no buttons, and the server refuses), tenant
admins see only what concerns their tenant. Every action goes through the same
services as the REST API, so it is audited the same way (origin `web`). This
module: overview, deployments, metrics and audit; fleet.py, catalog.py,
tenants.py and policies.py hold the other pages."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from django.db.models import Max, Q, QuerySet, Sum
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from appliance.accounts.models import ModelGrant, Tenant
from appliance.audit.chain import link_pending, verify
from appliance.audit.export import export_lines
from appliance.audit.models import AuditEvent
from appliance.audit.selectors import moment
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import Model, ModelVersion
from appliance.console.access import FROM_URL, actor_of, context, domain_errors, guarded, scoped, tenant_scope
from appliance.gateway.contract import KV_HIGH_WATERMARK
from appliance.metrics import selectors as metrics
from appliance.metrics.models import EnginePoint, Resolution
from appliance.nodes.choices import ACTIVE_RECONFIGURATION_STATES
from appliance.nodes.models import Gpu, Node, Reconfiguration
from appliance.rollouts import services
from appliance.rollouts.choices import ACTIVE_DEPLOYMENT_STATES
from appliance.rollouts.models import Deployment, Replica


def _deployments(request: HttpRequest) -> QuerySet[Deployment]:
    qs = Deployment.objects.select_related("version__model", "previous__version").prefetch_related("replicas__node")
    return scoped(request, qs, "deployment")


def _alerts() -> list[dict[str, str]]:
    """What needs an operator now: unhealthy or faulted nodes, GPUs that cannot be read,
    rollouts that failed in the last day."""
    alerts = []
    for n in Node.objects.filter(Q(health__in=["unhealthy", "degraded"]) | ~Q(fault="")).order_by("name")[:20]:
        why = n.fault or "; ".join(n.health_reasons) or n.health
        alerts.append({"level": "bad" if n.health == "unhealthy" else "warn", "what": f"node {n.name}", "why": why,
                       "url": f"nodes/{n.name}/"})  # fmt: skip
    for g in Gpu.objects.exclude(readout_error="").select_related("node")[:20]:
        alerts.append({"level": "bad", "what": f"GPU {g.index} of {g.node.name}", "why": g.readout_error,
                       "url": f"nodes/{g.node.name}/"})  # fmt: skip
    alerts += _engine_alerts()
    since = timezone.now() - timedelta(days=1)
    for d in Deployment.objects.filter(state__in=["failed", "rolled_back"], updated__gte=since).select_related("version__model")[:20]:
        alerts.append({"level": "warn", "what": f"rollout of {d.version}", "why": d.error or d.get_state_display(),
                       "url": f"deployments/{d.pk}/"})  # fmt: skip
    return alerts


ENGINE_ALERT_MINUTES = 15


def _engine_alerts() -> list[dict[str, str]]:
    """Generative engines that preempted sequences, or whose KV cache reached the gateway's
    watermark (it then sheds new streams), in the last ENGINE_ALERT_MINUTES: the KV cache is
    too small for the load the engine gets."""
    since = timezone.now() - timedelta(minutes=ENGINE_ALERT_MINUTES)
    rows = (EnginePoint.objects.filter(resolution=Resolution.MINUTE, start__gte=since)
            .values("node", "model", "version").annotate(preempted=Sum("preemptions"), highest=Max("kv_usage_max"))
            .filter(Q(preempted__gt=0) | Q(highest__gte=KV_HIGH_WATERMARK)).order_by("model", "version", "node")[:20])  # fmt: skip
    alerts = []
    for r in rows:
        seen = [f"preempted {r['preempted']} sequences"] if r["preempted"] else []
        if r["highest"] >= KV_HIGH_WATERMARK:
            seen.append(f"its KV cache reached {100 * r['highest']:.0f}% (the gateway held new streams back)")
        alerts.append({"level": "warn", "what": f"engine of {r['model']}:{r['version']} on {r['node']}",
                       "why": f"{' and '.join(seen)} in the last {ENGINE_ALERT_MINUTES} minutes: its KV cache is small "
                              "for its load (raise the serving profile's kv_cache_mib or lower max_num_seqs)",
                       "url": f"metrics/?model={r['model']}&window=1h"})  # fmt: skip
    return alerts


@guarded("overview", "read")
def overview(request: HttpRequest) -> HttpResponse:
    ctx = context(request)
    hour_ago = timezone.now() - timedelta(hours=1)
    tenant = Tenant.objects.filter(pk=tenant_scope(request)).first() if ctx["is_tenant_admin"] else None
    slug = tenant.slug if tenant else None
    ctx.update(
        tenant=tenant, traffic=metrics.totals(since=hour_ago, tenant=slug),
        top_models=metrics.top(by="model", since=hour_ago, tenant=slug),
        chart=metrics.traffic_series(window=metrics.WINDOWS["6h"], tenant=slug),
    )  # fmt: skip
    if not ctx["is_tenant_admin"]:
        ctx.update(
            health=sorted(Counter(Node.objects.values_list("health", flat=True)).items()),
            nodes=Node.objects.count(), top_tenants=metrics.top(by="tenant", since=hour_ago), alerts=_alerts(),
            reconfigurations=Reconfiguration.objects.filter(state__in=ACTIVE_RECONFIGURATION_STATES).select_related("node"),
            events=AuditEvent.objects.order_by("-sequence")[:10],
        )  # fmt: skip
    return render(request, "console/overview.html", ctx)


@guarded("deployment", "read")
def rollouts_panel(request: HttpRequest) -> HttpResponse:
    """The active rollouts, refreshed by htmx every two seconds."""
    active = _deployments(request).filter(state__in=ACTIVE_DEPLOYMENT_STATES)
    return render(request, "console/_rollouts.html", context(request, active=active))


@guarded("deployment", "read")
def deployments(request: HttpRequest) -> HttpResponse:
    return render(request, "console/deployments.html", context(request, deployments=_deployments(request)[:100]))


def _deployment(request: HttpRequest, pk: str) -> Deployment:
    obj = _deployments(request).filter(pk=pk).first()
    if obj is None:
        raise Http404("no such deployment")
    return obj


@guarded("deployment", "read")
def deployment(request: HttpRequest, pk: str) -> HttpResponse:
    return render(request, "console/deployment.html", context(request, d=_deployment(request, pk)))


@guarded("deployment", "read")
def deployment_panel(request: HttpRequest, pk: str) -> HttpResponse:
    """State, traffic split, gate decisions and replicas (htmx, every second while active)."""
    return render(request, "console/_deployment.html", context(request, d=_deployment(request, pk)))


ACTIONS = {
    "pause": lambda d, actor: services.deployment_pause(deployment_id=d.pk),
    "resume": lambda d, actor: services.deployment_resume(deployment_id=d.pk),
    "abort": lambda d, actor: services.deployment_abort(deployment_id=d.pk, actor=actor),
    "rollback": lambda d, actor: services.deployment_rollback(deployment_id=d.pk, actor=actor),
}


@require_POST
@guarded("deployment", FROM_URL)
@domain_errors
def deployment_action(request: HttpRequest, pk: str, action: str) -> HttpResponse:
    obj = _deployment(request, pk)
    if action not in ACTIONS:
        raise Http404("no such action")
    result = ACTIONS[action](obj, actor_of(request))
    return redirect("console:deployment", pk=result.pk)


def _engine_charts(engines: dict[str, Any] | None) -> list[dict[str, str]]:
    """The engine charts of a generative model, one line per version (data-fields/labels of console.js)."""
    if not engines:
        return []
    versions = engines["versions"]

    def chart(title: str, measures: tuple[tuple[str, str], ...]) -> dict[str, str]:
        pairs = [(f"{field}_v{v}", f"v{v} {label}".strip()) for v in versions for field, label in measures]
        return {"title": title, "fields": ",".join(f for f, _ in pairs), "labels": ",".join(lbl for _, lbl in pairs)}

    return [
        chart("Engine KV cache in use (%; mean and highest read-out)", (("kv", "mean"), ("kv_max", "highest"))),
        chart("Engine sequences running and requests waiting", (("running", "running"), ("waiting", "waiting"))),
        chart("Engine preemptions per minute (sequences evicted from the KV cache)", (("preemptions", ""),)),
    ]


@guarded("metrics", "read")
def metrics_page(request: HttpRequest) -> HttpResponse:
    """Charts per model or per tenant over a window, from the time series (metrics app)."""
    ctx = context(request)
    window = metrics.window_of(request.GET.get("window"))
    scope = tenant_scope(request)
    models = scoped(request, Model.objects.order_by("name"), "model")
    tenants = scoped(request, Tenant.objects.order_by("slug"), "tenant")
    model = request.GET.get("model", "")
    tenant = request.GET.get("tenant", "")
    if model and not models.filter(name=model).exists():
        raise Http404("no such model")
    if tenant and not tenants.filter(slug=tenant).exists():
        raise Http404("no such tenant")
    if scope is not None and not tenant:
        tenant = tenants.first().slug  # type: ignore[union-attr]
    traffic = metrics.traffic_series(window=window, model=model or None, tenant=tenant or None)
    # The fleet's side (nodes, GPUs, engines shared with other tenants) is staff's: a tenant admin
    # sees the tenant's own traffic (the role matrix).
    nodes, gpu, engines = None, None, None
    if scope is None:
        if model or tenant:
            live = Replica.objects.filter(state="live")
            live = live.filter(deployment__version__model__name=model) if model else live.filter(
                deployment__version__model__in=ModelGrant.objects.filter(tenant__slug=tenant).values("model_id"))  # fmt: skip
            nodes = sorted(set(live.values_list("node__name", flat=True)))
        gpu = metrics.gpu_series(window=window, nodes=nodes)
        generative = bool(model) and ModelVersion.objects.filter(model__name=model, format=ArtifactFormat.VLLM).exists()
        engines = metrics.engine_series(window=window, model=model) if generative else None
    ctx.update(window=window, windows=metrics.WINDOWS.values(), model=model, tenant=tenant, models=models,
               tenants=tenants, traffic=traffic, gpu=gpu, gpu_nodes=nodes, gpu_empty=nodes == [], engines=engines,
               engine_charts=_engine_charts(engines))  # fmt: skip
    return render(request, "console/metrics.html", ctx)


def _audit_events(request: HttpRequest) -> tuple[QuerySet[AuditEvent], dict[str, str]]:
    link_pending()
    events = AuditEvent.objects.order_by("-sequence")
    filters = {k: request.GET.get(k, "").strip() for k in ("actor", "action", "target", "since", "until")}
    if filters["actor"]:
        events = events.filter(actor__icontains=filters["actor"])
    if filters["action"]:
        events = events.filter(action__icontains=filters["action"])
    if filters["target"]:
        events = events.filter(Q(target_repr__icontains=filters["target"]) | Q(target_id=filters["target"]))
    if filters["since"]:
        events = events.filter(time__gte=moment("since", filters["since"]))
    if filters["until"]:
        events = events.filter(time__lte=moment("until", filters["until"]))
    return events, filters


@guarded("audit_event", "read")
@domain_errors
def audit(request: HttpRequest) -> HttpResponseBase:
    events, filters = _audit_events(request)
    query = request.GET.urlencode()
    return render(request, "console/audit.html", context(request, events=events[:100], filters=filters, query=query))


@guarded("audit_event", "read")
@domain_errors
def audit_export(request: HttpRequest, fmt: str) -> HttpResponseBase:
    """The filtered trail as CSV or JSON lines, oldest first, streamed."""
    if fmt not in ("csv", "jsonl"):
        raise Http404("csv or jsonl")
    events, _ = _audit_events(request)
    response = StreamingHttpResponse(export_lines(events.order_by("sequence").iterator(chunk_size=2000), fmt),
                                     content_type="text/csv" if fmt == "csv" else "application/jsonl")  # fmt: skip
    response.headers["Content-Disposition"] = f'attachment; filename="audit.{fmt}"'
    return response


@guarded("audit_event", "read")
def audit_verify(request: HttpRequest) -> HttpResponse:
    """Recomputes the whole hash chain and every signed checkpoint (htmx, on demand: seconds on a large trail)."""
    verdict = verify()
    return render(request, "console/_chain.html", context(request, verdict=verdict, checked_at=timezone.now()))


