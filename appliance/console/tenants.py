"""Console pages of tenants and their API keys: create, scope, rotate, revoke. A new
key is shown once, with a copy button and a ready tritonclient snippet; only its
hash is kept."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from appliance.accounts import services
from appliance.accounts.choices import PriorityClass
from appliance.accounts.models import LIMIT_FIELDS, ApiKey, Tenant
from appliance.catalog.models import Model
from appliance.console.access import context, domain_errors, guarded, require, scoped, tenant_scope
from appliance.core.errors import DomainError
from appliance.policies.choices import Classification

NUMPY_TYPES = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "INT8": "int8", "INT16": "int16",
               "INT32": "int32", "INT64": "int64", "UINT8": "uint8", "BOOL": "bool_", "BYTES": "object_"}  # fmt: skip


def snippet(*, key: str, model: Model | None) -> str:
    """A runnable tritonclient call through the gateway with this key (zeros of the right shape)."""
    lines = ["import numpy as np, tritonclient.grpc as grpcclient",
             f'client = grpcclient.InferenceServerClient("{settings.GATEWAY_PUBLIC_ADDRESS}")',
             f'headers = {{"authorization": "Bearer {key}"}}']  # fmt: skip
    version = model.versions.order_by("-number").first() if model is not None else None
    if version is None:
        lines.append('print(client.is_server_ready(headers=headers))  # grant the tenant a model to call one')
        return "\n".join(lines)
    batch = [1] if version.max_batch_size else []
    inputs = []
    for index, spec in enumerate(version.signature["inputs"]):
        dims = batch + [d if d > 0 else 1 for d in spec["dims"]]
        dtype = NUMPY_TYPES.get(spec["datatype"], "float32")
        lines.append(f'x{index} = grpcclient.InferInput("{spec["name"]}", {dims}, "{spec["datatype"]}")')
        lines.append(f"x{index}.set_data_from_numpy(np.zeros({dims}, dtype=np.{dtype}))")
        inputs.append(f"x{index}")
    lines.append(f'result = client.infer("{model.name}", [{", ".join(inputs)}], headers=headers)')  # type: ignore[union-attr]
    lines.extend(f'print(result.as_numpy("{o["name"]}"))' for o in version.signature["outputs"])
    return "\n".join(lines)


def _tenant(request: HttpRequest, slug: str) -> Tenant:
    return get_object_or_404(scoped(request, Tenant.objects.all(), "tenant"), slug=slug)


@guarded("tenant", "read")
def tenants(request: HttpRequest) -> HttpResponse:
    scope = tenant_scope(request)
    if scope is not None:
        return redirect("console:tenant", slug=Tenant.objects.get(pk=scope).slug)
    rows = Tenant.objects.prefetch_related("grants__model").order_by("slug")
    return render(request, "console/tenants.html", context(
        request, tenants=rows, classifications=Classification.choices, priorities=PriorityClass.choices,
    ))  # fmt: skip


def _limits(post: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in LIMIT_FIELDS[1:]:  # the numbers (priority_class is a choice, below)
        text = post.get(name, "").strip()
        if text:
            if not text.isdigit():
                raise DomainError(f"{name.replace('_', ' ')}: a whole number, 0 for no limit")
            values[name] = int(text)
    if post.get("priority_class"):
        values["priority_class"] = post["priority_class"]
    return values


def _zones(text: str) -> list[str]:
    return [z.strip() for z in text.split(",") if z.strip()]


@require_POST
@guarded("tenant", "create")
@domain_errors
def tenant_create(request: HttpRequest) -> HttpResponse:
    post = request.POST
    try:
        tenant = services.tenant_create(slug=post.get("slug", "").strip(), name=post.get("name", "").strip(),
                                        classification=post.get("classification", "internal"),
                                        allowed_zones=_zones(post.get("allowed_zones", "")), **_limits(post))  # fmt: skip
    except ValidationError as exc:
        raise DomainError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
    return redirect("console:tenant", slug=tenant.slug)


@guarded("tenant", "read")
def tenant(request: HttpRequest, slug: str) -> HttpResponse:
    obj = _tenant(request, slug)
    keys = obj.api_keys.prefetch_related("allowed_models").order_by("-created")
    grants = obj.grants.select_related("model").order_by("model__name")
    return render(request, "console/tenant.html", context(
        request, tenant=obj, keys=keys, grants=grants,
        models=Model.objects.order_by("name"), classifications=Classification.choices, priorities=PriorityClass.choices,
        granted=[g.model for g in grants], now=timezone.now(),
    ))  # fmt: skip


@require_POST
@guarded("tenant", "change")
@domain_errors
def tenant_update(request: HttpRequest, slug: str) -> HttpResponse:
    obj = _tenant(request, slug)
    post = request.POST
    try:
        services.tenant_update(tenant=obj, name=post.get("name") or None, classification=post.get("classification") or None,
                               allowed_zones=_zones(post.get("allowed_zones", "")), **_limits(post))  # fmt: skip
    except ValidationError as exc:
        raise DomainError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
    return redirect("console:tenant", slug=obj.slug)


@require_POST
@guarded("grant", "create")
@domain_errors
def grant(request: HttpRequest, slug: str) -> HttpResponse:
    """Grants a model, or with `remove` takes it away."""
    obj = _tenant(request, slug)
    model = get_object_or_404(Model, name=request.POST.get("model", ""))
    if request.POST.get("remove"):
        require(request, "grant", "delete")
        found = obj.grants.filter(model=model).first()
        if found is not None:
            services.grant_delete(grant=found)
    else:
        services.grant_create(tenant=obj, model=model)
    return redirect("console:tenant", slug=obj.slug)


def _shown_once(request: HttpRequest, tenant: Tenant, key: ApiKey, plaintext: str, what: str) -> HttpResponse:
    scope = list(key.allowed_models.all())
    granted = [g.model for g in tenant.grants.select_related("model")]
    model = scope[0] if scope else (granted[0] if granted else None)
    response = render(request, "console/key_created.html", context(
        request, tenant=tenant, key=key, plaintext=plaintext, what=what, snippet=snippet(key=plaintext, model=model),
    ))  # fmt: skip
    response.headers["Cache-Control"] = "no-store"  # the one time the key exists in clear
    return response


@require_POST
@guarded("api_key", "create")
@domain_errors
def key_create(request: HttpRequest, slug: str) -> HttpResponse:
    obj = _tenant(request, slug)
    name = request.POST.get("name", "").strip()
    if not name:
        raise DomainError("name the key (who or what will use it)")
    days = request.POST.get("expires_days", "").strip()
    if days and not days.isdigit():
        raise DomainError("expires after: a whole number of days, or empty for never")
    models = list(Model.objects.filter(name__in=request.POST.getlist("models")))
    key, plaintext = services.api_key_create(
        tenant=obj, name=name[:100], models=models,
        expires_at=timezone.now() + timedelta(days=int(days)) if days else None,
    )  # fmt: skip
    return _shown_once(request, obj, key, plaintext, "created")


def _key(request: HttpRequest, slug: str, pk: str) -> tuple[Tenant, ApiKey]:
    obj = _tenant(request, slug)
    return obj, get_object_or_404(ApiKey, pk=pk, tenant=obj)


@require_POST
@guarded("api_key", "rotate")
@domain_errors
def key_rotate(request: HttpRequest, slug: str, pk: str) -> HttpResponse:
    obj, key = _key(request, slug, pk)
    overlap = request.POST.get("overlap_s", "3600").strip()
    if not overlap.isdigit():
        raise DomainError("overlap: whole seconds the old key keeps working")
    successor, plaintext = services.api_key_rotate(key=key, overlap_s=int(overlap))
    return _shown_once(request, obj, successor, plaintext, f"rotated (the old key stops in {int(overlap)} s)")


@require_POST
@guarded("api_key", "revoke")
@domain_errors
def key_revoke(request: HttpRequest, slug: str, pk: str) -> HttpResponse:
    obj, key = _key(request, slug, pk)
    services.api_key_revoke(key=key)
    return redirect("console:tenant", slug=obj.slug)
