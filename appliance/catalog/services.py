"""Writes for models and their versions."""

from __future__ import annotations

from typing import IO, Any

from django.db import transaction
from django.db.models import Max

from appliance.catalog.artifacts import ArtifactError, artifact_put, artifact_read_verified, check_archive
from appliance.catalog.choices import ArtifactFormat, ChangeKind
from appliance.catalog.ensemble import parse_steps
from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.profile import check_against, normalise
from appliance.catalog.signature import validate_samples, validate_signature
from appliance.core.services import update_locked


@transaction.atomic
def model_create(
    *, name: str, description: str = "", response_cache: bool = False, serving_profile: dict[str, Any] | None = None,
    idle_unload_s: int = 0, autoscale: dict[str, Any] | None = None, semantic_cache: dict[str, Any] | None = None,
) -> Model:
    model = Model(name=name, description=description, response_cache=response_cache,
                  serving_profile=normalise(serving_profile), idle_unload_s=idle_unload_s,
                  autoscale=autoscale or {}, semantic_cache=semantic_cache or {})  # fmt: skip
    model.full_clean()
    model.save()
    return model


def _check_artifact_content(fmt: str, sha256: str) -> None:
    if fmt == ArtifactFormat.PYTHON:
        names = check_archive(artifact_read_verified(sha256))
        if "model.py" not in names:
            raise ArtifactError("a python-format artifact must be a .tar.gz holding model.py at its top level")


@transaction.atomic
def version_upload(
    *,
    model: Model | str,
    fmt: str,
    artifact: IO[bytes],
    signature: Any,
    max_batch_size: int = 0,
    decoupled: bool = False,
    parent: ModelVersion | None = None,
    change_kind: str = ChangeKind.INITIAL,
    change_note: str = "",
    gpu_arch: str = "",
    tensorrt_version: str = "",
    sample_inputs: dict[str, Any] | None = None,
) -> ModelVersion:
    """Stores the artifact and records the version with the next number, for the REST
    API and the console alike. `model` may be a name: the model is created if it is
    new (the console's upload). All or nothing for the rows: a refused upload leaves no
    model or version behind; its artifact file may stay (the store is content-addressed,
    so the file is harmless and reused)."""
    if fmt not in ArtifactFormat.values:
        raise ArtifactError(f"format {fmt!r} is not one of {', '.join(ArtifactFormat.values)}")
    normalised = validate_signature(signature)
    samples = validate_samples(sample_inputs, normalised)
    if decoupled and max_batch_size:
        raise ArtifactError("a decoupled (streaming) model must have max_batch_size 0")
    sha256, size = artifact_put(artifact)
    if size == 0:
        raise ArtifactError("the artifact is empty")
    _check_artifact_content(fmt, sha256)
    steps = parse_steps(artifact_read_verified(sha256), normalised) if fmt == ArtifactFormat.ENSEMBLE else None
    if isinstance(model, str):
        model = Model.objects.filter(name=model).first() or model_create(name=model)
    if parent is not None and parent.model_id != model.pk:
        raise ArtifactError("the parent version belongs to another model")
    locked = Model.objects.select_for_update().get(pk=model.pk)
    number = (locked.versions.aggregate(top=Max("number"))["top"] or 0) + 1
    return ModelVersion.objects.create(
        model=locked,
        number=number,
        format=fmt,
        artifact_sha256=sha256,
        artifact_size=size,
        signature=normalised,
        max_batch_size=max_batch_size,
        decoupled=decoupled,
        parent=parent,
        change_kind=change_kind,
        change_note=change_note,
        gpu_arch=gpu_arch,
        tensorrt_version=tensorrt_version,
        sample_inputs=samples,
        ensemble_steps=steps,
    )


@transaction.atomic
def model_update(
    *, model: Model, description: str | None = None, response_cache: bool | None = None,
    serving_profile: dict[str, Any] | None = None, idle_unload_s: int | None = None,
    autoscale: dict[str, Any] | None = None, semantic_cache: dict[str, Any] | None = None,
) -> Model:
    """A new serving profile is checked against the model's newest version (it applies
    at the next rollout; a node's running config changes only when a version loads)."""
    if serving_profile is not None:
        serving_profile = normalise(serving_profile)
        newest = model.versions.order_by("-number").first()
        if newest is not None:
            check_against(newest, serving_profile)
    if semantic_cache:
        from appliance.gateway.semantic import text_input_problem

        newest = model.versions.order_by("-number").first()
        problem = text_input_problem(newest.signature) if newest is not None else ""
        if problem:
            raise ArtifactError(f"{model.name}: {problem}")
    return update_locked(model, description=description, response_cache=response_cache,
                         serving_profile=serving_profile, idle_unload_s=idle_unload_s, autoscale=autoscale,
                         semantic_cache=semantic_cache)  # fmt: skip


@transaction.atomic
def model_delete(*, model: Model) -> None:
    model.delete()
