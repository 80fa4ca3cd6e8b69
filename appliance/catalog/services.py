"""Writes for models, their versions, their validation sets and the gate's results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import IO, Any

from django.db import transaction
from django.db.models import Max

from appliance.catalog.artifacts import ArtifactError, artifact_put, artifact_read_verified, check_archive
from appliance.catalog.choices import ArtifactFormat, ChangeKind
from appliance.catalog.ensemble import parse_steps
from appliance.catalog.generative import SIGNATURE as GENERATIVE_SIGNATURE
from appliance.catalog.generative import facts_from_artifact
from appliance.catalog.models import GateResult, Model, ModelVersion, ValidationSet
from appliance.catalog.profile import check_against, normalise
from appliance.catalog.signature import validate_samples, validate_signature
from appliance.core.errors import ConflictError, DomainError
from appliance.core.services import update_locked
from appliance.optimisation.validation_data import (
    METRICS,
    ValidationSetError,
    check_against_signature,
    metric_refusal,
    parse_validation_set,
)


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
    generative = fmt == ArtifactFormat.VLLM
    if generative:
        # The tensors of Triton's vLLM backend, streamed: the runner serves exactly these.
        if signature not in (None, {}) and validate_signature(signature) != validate_signature(GENERATIVE_SIGNATURE):
            raise ArtifactError("a vllm version has the signature of Triton's vLLM backend; leave signature out")
        if max_batch_size:
            raise ArtifactError("a vllm version batches inside its engine: max_batch_size must be 0")
        signature, decoupled = GENERATIVE_SIGNATURE, True
    elif signature is None:
        raise ArtifactError("signature: required for a version of this format")
    normalised = validate_signature(signature)
    samples = validate_samples(sample_inputs, normalised)
    if decoupled and max_batch_size:
        raise ArtifactError("a decoupled (streaming) model must have max_batch_size 0")
    sha256, size = artifact_put(artifact)
    if size == 0:
        raise ArtifactError("the artifact is empty")
    _check_artifact_content(fmt, sha256)
    facts = facts_from_artifact(artifact_read_verified(sha256)) if generative else None
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
        generative=facts,
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


@transaction.atomic
def validation_set_upload(
    *, model: Model, name: str, metric: str, max_relative_drop: float = 0.01, content: IO[bytes]
) -> ValidationSet:
    """Stores the file content-addressed (as artifacts are), parses it for `metric` and
    checks it against the signature of the model's newest version, where it has one.
    Refused with the parser's own message (ValidationSetError, 400); a name the model
    already uses is 409."""
    if metric not in METRICS:
        raise ValidationSetError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if not (isinstance(max_relative_drop, int | float) and math.isfinite(max_relative_drop) and 0 <= max_relative_drop < 1):
        raise ValidationSetError(f"max_relative_drop is a fraction at least 0 and below 1 (0.01 is 1 %); got {max_relative_drop}")
    newest = model.versions.order_by("-number").first()
    problem = metric_refusal(metric, newest.format) if newest is not None else ""
    if problem:
        raise ValidationSetError(problem)
    sha256, size = artifact_put(content)
    if size == 0:
        raise ValidationSetError("the validation set file is empty")
    parsed = parse_validation_set(artifact_read_verified(sha256), metric=metric)
    if newest is not None:
        check_against_signature(parsed, newest.signature)
    locked = Model.objects.select_for_update().get(pk=model.pk)
    if locked.validation_sets.filter(name=name).exists():
        raise ConflictError(f"model '{model.name}' already has a validation set named '{name}'")
    validation_set = ValidationSet(model=locked, name=name, metric=metric, max_relative_drop=max_relative_drop,
                                   content_sha256=sha256, content_size=size, rows=parsed.rows)  # fmt: skip
    validation_set.full_clean()
    validation_set.save()
    return validation_set


@transaction.atomic
def validation_set_delete(*, validation_set: ValidationSet) -> None:
    """The set and its gate results go (audited, each); the file stays in the store, which
    is content-addressed and may hold the same bytes for another set."""
    validation_set.delete()


_CHECK_KEYS = ("name", "measured", "baseline", "threshold", "passed")


@transaction.atomic
def gate_record(
    *,
    version: ModelVersion,
    validation_set: ValidationSet,
    passed: bool,
    checks: Sequence[dict[str, Any]],
    values: dict[str, Any],
    baseline_values: dict[str, Any],
    measured_on: str,
) -> GateResult:
    """Records one run of the accuracy gate (the optimisation job calls this). The
    verdict must agree with its checks: a pass needs at least one check and every check
    passed; a failure needs a failed check, or none at all (the run could not measure)."""
    if validation_set.model_id != version.model_id:
        raise DomainError(f"validation set '{validation_set.name}' belongs to model '{validation_set.model.name}', "
                          f"not to {version}")  # fmt: skip
    rows = [dict(check) for check in checks]
    for check in rows:
        missing = [key for key in _CHECK_KEYS if key not in check]
        if missing:
            raise DomainError(f"gate check {check.get('name', '?')!r} lacks {', '.join(missing)}")
    if passed and not (rows and all(check["passed"] for check in rows)):
        raise DomainError("a passed gate needs at least one check, and every check passed")
    if not passed and rows and all(check["passed"] for check in rows):
        raise DomainError("a failed gate needs a failed check (or none: the run could not measure)")
    result = GateResult(version=version, validation_set=validation_set, passed=passed, checks=rows, values=values,
                        baseline_values=baseline_values, measured_on=measured_on)  # fmt: skip
    result.full_clean()
    result.save()
    return result
