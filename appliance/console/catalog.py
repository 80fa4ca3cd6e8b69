"""Console pages of the catalog: models with their versions, lineage, signatures,
serving profile and generated config.pbtxt, validation sets and the accuracy gate's
results; uploading a version (with a progress bar in the browser) or a validation
set; starting a rollout."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework import serializers

from appliance.catalog import generative
from appliance.catalog.api.serializers import ModelVersionCreateSerializer, ValidationSetCreateSerializer
from appliance.catalog.choices import ArtifactFormat, ChangeKind
from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.profile import ProfileError, normalise
from appliance.catalog.selectors import GateStatus, gate_statuses
from appliance.catalog.services import validation_set_upload, version_upload
from appliance.catalog.tritonconfig import render_config
from appliance.console.access import context, domain_errors, guarded, require, scoped
from appliance.core.errors import DomainError
from appliance.nodes.models import Node
from appliance.optimisation.validation_data import METRICS
from appliance.rollouts import services as rollout_services
from appliance.rollouts.choices import Strategy


def _models(request: HttpRequest) -> QuerySet[Model]:
    return scoped(request, Model.objects.all(), "model")


@guarded("model", "read")
def models(request: HttpRequest) -> HttpResponse:
    rows = _models(request).annotate(version_count=Count("versions", distinct=True), tenant_count=Count("grants", distinct=True))
    from appliance.rollouts.models import Deployment

    live = Deployment.objects.filter(state="live", version__model__in=rows).select_related("version")
    serving = {d.version.model_id: d for d in live.order_by("created")}  # the latest live one wins
    listed = [{"model": m, "serving": serving.get(m.pk)} for m in rows.order_by("name")]
    return render(request, "console/models.html", context(request, models=listed, formats=ArtifactFormat.choices))


def _config(version: ModelVersion) -> str:
    try:
        return render_config(version, versions=[version.number])
    except ProfileError as exc:
        return f"# the serving profile does not fit this version: {exc}"


def _generative_line(model: Model, version: ModelVersion | None) -> str:
    """What a generative version is, and what one replica of it needs with the model's profile."""
    if version is None or version.format != ArtifactFormat.VLLM or not version.generative:
        return ""
    facts = version.generative
    try:
        sized = generative.need(facts, generative.engine_spec(normalise(model.serving_profile))).describe()
    except (serializers.ValidationError, KeyError, ValueError):
        sized = "unknown (the profile does not validate)"
    return (f"Generative: {facts['architecture']}, {facts['parameters'] / 1e6:.0f}M parameters, {facts['layers']} layers, "
            f"{facts['kv_heads']} KV heads of {facts['head_dim']}, context {facts['max_position_embeddings']} tokens, "
            f"chat template {'yes' if facts.get('chat_template') else 'no'}. One replica needs {sized} on a CPU node.")  # fmt: skip


@guarded("model", "read")
def model(request: HttpRequest, name: str) -> HttpResponse:
    obj = get_object_or_404(_models(request), name=name)
    versions = list(obj.versions.select_related("parent").order_by("-number"))
    chosen = next((v for v in versions if str(v.number) == request.GET.get("version")), versions[0] if versions else None)
    serving = rollout_services.serving_deployment(obj.pk)
    ctx = context(
        request, model=obj, versions=versions, chosen=chosen, serving=serving,
        config=_config(chosen) if chosen else "", signature=json.dumps(chosen.signature, indent=2) if chosen else "",
        profile=json.dumps(obj.serving_profile, indent=2, sort_keys=True) if obj.serving_profile else "",
        deployments=_deployments_of(obj), generative=_generative_line(obj, chosen),
        change_kinds=ChangeKind.choices, formats=ArtifactFormat.choices, metrics=METRICS,
    )  # fmt: skip
    ctx["version_rows"] = [(v, None) for v in versions]
    if ctx["may"]["validation_set"]["read"]:  # the gate's sets and results are the operators' (accounts/access.py)
        statuses = gate_statuses(versions)
        ctx.update(validation_sets=obj.validation_sets.order_by("name"),
                   version_rows=[(v, _gate_summary(v, statuses[v.pk])) for v in versions],
                   chosen_gate=_gate_details(statuses[chosen.pk]) if chosen and chosen.parent_id else None)  # fmt: skip
    if ctx["may"]["gate_run"]["read"]:
        from appliance.optimisation.models import GateRun

        ctx["gate_runs"] = GateRun.objects.filter(version__model=obj).select_related("version")[:10]
    if ctx["may"]["optimisation_job"]["read"]:
        from appliance.console.optimisation import KIND_CHOICES
        from appliance.optimisation.models import OptimisationJob

        ctx.update(optimisation_jobs=OptimisationJob.objects.filter(source__model=obj).select_related("source")[:10],
                   onnx_versions=[v for v in versions if v.format == ArtifactFormat.ONNX],
                   optimisation_kinds=KIND_CHOICES)  # fmt: skip
    if ctx["may"]["profile_search"]["read"]:
        from appliance.optimisation.models import ProfileSearch

        # One query for the table (not one per version); CPU nodes for the form (a GPU node's
        # numbers would have to come from its GPU: the service refuses those).
        ctx.update(profile_searches=ProfileSearch.objects.filter(version__model=obj).select_related("version")[:10],
                   search_nodes=Node.objects.filter(gpus__isnull=True).order_by("name"))  # fmt: skip
    return render(request, "console/model.html", ctx)


def _gate_details(status: GateStatus) -> list[tuple[Any, Any, list[tuple[bool, str]]]]:
    """(set, latest result, [(passed, "name: measured / threshold (parent)")]) for the chosen version."""
    def shown(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)

    return [
        (validation_set, result, [
            (bool(c.get("passed")), f"{c.get('name')}: {shown(c.get('measured'))} / {shown(c.get('threshold'))} "
                                    f"({shown(c.get('baseline'))})") for c in (result.checks if result else [])
        ])
        for validation_set, result in status
    ]  # fmt: skip


def _gate_summary(version: ModelVersion, status: GateStatus) -> tuple[str, str]:
    """(a CSS state, a few words) for the versions table."""
    if version.parent_id is None:
        return "", "reference (not gated)"
    if not status:
        return "", "no validation set"
    failed = sum(1 for _, result in status if result is not None and not result.passed)
    missing = sum(1 for _, result in status if result is None)
    if not failed and not missing:
        return "live", f"passed ({len(status)} of {len(status)})"
    words = [f"failed on {failed}"] if failed else []
    words += [f"not run on {missing}"] if missing else []
    return ("failed" if failed else "pending"), f"{', '.join(words)} of {len(status)}"


def _deployments_of(model: Model) -> Any:
    from appliance.rollouts.models import Deployment

    return Deployment.objects.filter(version__model=model).select_related("version").order_by("-created")[:10]


def _upload_answer(request: HttpRequest, status: int, message: str = "", url: str = "") -> HttpResponse:
    if request.headers.get("X-Requested-With") == "XMLHttpRequest":
        return JsonResponse({"redirect": url} if url else {"error": message}, status=status)
    if url:
        return redirect(url)
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


class UploadForm(ModelVersionCreateSerializer):
    """The API's upload body, but the model may be new (version_upload creates it)."""

    model = serializers.CharField(max_length=63)  # type: ignore[assignment]


def _messages(errors: dict[str, Any]) -> str:
    return "; ".join(f"{field}: {' '.join(str(e) for e in problems)}" for field, problems in errors.items())


@require_POST
@guarded("version", "create")
def upload(request: HttpRequest) -> HttpResponse:
    """A new version (a new model too, if the name is new). The browser sends it with
    XMLHttpRequest to draw upload progress; all or nothing: a refused upload leaves
    no model or version behind."""
    data: dict[str, Any] = {k: v for k, v in request.POST.items() if v != ""}
    data.update(request.FILES.dict())
    body = UploadForm(data=data)
    if not body.is_valid():
        return _upload_answer(request, 400, _messages(body.errors))
    try:
        version = version_upload(**body.upload_kwargs())
    except DomainError as exc:
        return _upload_answer(request, exc.http_status, str(exc))
    except ValidationError as exc:  # the new model's name
        return _upload_answer(request, 400, _messages(exc.message_dict))
    url = reverse("console:model", args=[version.model.name]) + f"?version={version.number}"
    return _upload_answer(request, 201, url=url)


def _version(request: HttpRequest, name: str, number: int) -> ModelVersion:
    version = ModelVersion.objects.select_related("model").filter(model__in=_models(request), model__name=name,
                                                                  number=number).first()  # fmt: skip
    if version is None:
        raise Http404("no such version")
    return version


@require_POST
@guarded("validation_set", "create")
@domain_errors
def validation_set_add(request: HttpRequest, name: str) -> HttpResponse:
    """A validation set for the model's accuracy gate, through the API's upload service."""
    model = get_object_or_404(_models(request), name=name)
    data: dict[str, Any] = {k: v for k, v in request.POST.items() if v != ""}
    data.update(request.FILES.dict(), model=model.name)
    body = ValidationSetCreateSerializer(data=data)
    if not body.is_valid():
        return HttpResponse(_messages(body.errors), status=400, content_type="text/plain; charset=utf-8")
    validation_set_upload(**body.upload_kwargs())
    return redirect("console:model", name=model.name)


@guarded("deployment", "create")
def rollout_form(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = _version(request, name, number)
    failures = rollout_services.accuracy_gate_failures(version)
    return render(request, "console/rollout_form.html", context(
        request, version=version, strategies=Strategy.choices, nodes=Node.objects.order_by("name"),
        serving=rollout_services.serving_deployment(version.model_id),
        gate_refusal=rollout_services.gate_refusal_text(version, failures) if failures else "",
    ))  # fmt: skip


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise DomainError(f"{what}: whole numbers separated by commas, e.g. 10,50,100") from None


@require_POST
@guarded("deployment", "create")
@domain_errors
def rollout_start(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = _version(request, name, number)
    post = request.POST
    target = post.get("target", "serving")
    nodes = list(Node.objects.filter(name__in=post.getlist("nodes"))) if target == "nodes" else []
    if target == "nodes" and not nodes:
        raise DomainError("choose at least one node, or another target")
    replicas = _ints(post.get("replicas", ""), "replicas")[:1] if target == "replicas" else []
    steps = _ints(post.get("steps", ""), "steps") or None
    seconds = _ints(post.get("step_seconds", ""), "seconds per step")
    override = post.get("gate_override_reason", "").strip()
    if override:
        require(request, "deployment", "override")
    deployment = rollout_services.deployment_create(
        version=version, nodes=nodes, replicas=replicas[0] if replicas else None, strategy=post.get("strategy", ""),
        steps=steps, step_seconds=seconds[0] if seconds else None, gate_override_reason=override,
    )  # fmt: skip
    return redirect("console:deployment", pk=deployment.pk)
