"""One gate run, on the optimiser's worker: a version and its parent measured in the same
run, with what serves each format, on each chosen validation set of the model, and the
gate's verdict recorded per set as the version's gate result (what deployment reads).

- ONNX versions: ONNX Runtime on the CPU, one thread, as optimisation jobs measure them
  (the pinned ONNX Runtime the nodes' Triton environment serves ONNX with).
- Generative (vllm) versions: the version's own vLLM engine with the nodes' command line
  (optimisation/textgen.py), one engine at a time: the parent's, then the candidate's.

Other formats are refused when the run is asked for (`refusal`): a Python-backend model
runs only inside Triton, and a TensorRT engine only on the GPU it was built for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from appliance.catalog.artifacts import artifact_read_verified
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.generative import engine_spec
from appliance.catalog.models import ModelVersion, ValidationSet
from appliance.optimisation import gate, host, services
from appliance.optimisation.models import GateRun
from appliance.optimisation.validation_data import (
    GENERATIVE_METRICS,
    TENSOR_METRICS,
    ValidationData,
    check_against_signature,
    metric_refusal,
    parse_validation_set,
)

log = logging.getLogger(__name__)

# What each format is measured with here, and the metrics that apply to it.
MEASURABLE = {ArtifactFormat.ONNX: TENSOR_METRICS, ArtifactFormat.VLLM: GENERATIVE_METRICS}

Measure = Callable[[str, ValidationData], dict[str, float]]


def refusal(version: ModelVersion, sets: list[ValidationSet]) -> str:
    """Why the optimiser cannot run the gate for `version` on `sets`, or ''."""
    parent = version.parent
    assert parent is not None
    for which in (version, parent):
        if which.format not in MEASURABLE:
            return (f"{which} is a {which.format} version: the gate measures ONNX and generative (vllm) versions "
                    "here (a Python-backend model runs only inside Triton; a TensorRT engine is gated on the GPU "
                    "it was built for, which is not built)")  # fmt: skip
    if version.format != parent.format:
        return (f"{version} is {version.format} and its parent {parent} is {parent.format}: the gate compares "
                "versions measured the same way")  # fmt: skip
    for validation_set in sets:
        problem = metric_refusal(validation_set.metric, version.format)
        if problem:
            return f"validation set '{validation_set.name}': {problem}"
    return ""


def measured_on(version: ModelVersion) -> str:
    if version.format == ArtifactFormat.VLLM:
        from appliance.optimisation.textgen import engine_description

        return f"{host.machine()}, {engine_description()}, the model's serving profile, one row at a time"
    import onnxruntime

    return f"{host.machine()}, ONNX Runtime {onnxruntime.__version__} on the CPU"


def run_gate(run_id: str) -> str:
    row = GateRun.objects.select_related("version").filter(pk=run_id).first()
    return services.run_tracked(GateRun, run_id, measured_on(row.version) if row else "", _run)


def _run(run: GateRun) -> None:
    version = run.version
    parent = version.parent
    assert parent is not None

    def say(message: str) -> None:
        services.gate_run_progress(run_id=run.pk, message=message)

    chosen = {str(s.pk): s for s in ValidationSet.objects.filter(pk__in=[entry["id"] for entry in run.sets])}
    missing = [entry["name"] for entry in run.sets if entry["id"] not in chosen]
    if missing:
        raise services.OptimisationError(f"validation set(s) {', '.join(missing)} were deleted after the run was asked for")
    sets = [chosen[entry["id"]] for entry in run.sets]
    problem = refusal(version, sets)
    if problem:
        raise services.OptimisationError(problem)
    data = {}
    for validation_set in sets:
        parsed = parse_validation_set(artifact_read_verified(validation_set.content_sha256), metric=validation_set.metric)
        check_against_signature(parsed, version.signature)
        data[validation_set.pk] = parsed
    values: dict[str, dict[Any, dict[str, float]]] = {}
    for role, which in (("parent", parent), ("candidate", version)):
        say(f"starting {which} ({role})")
        with _measurer(which, run) as measure:
            values[role] = {}
            for validation_set in sets:
                say(f"measuring {which} on '{validation_set.name}' ({validation_set.metric}, "
                    f"{data[validation_set.pk].rows} rows)")  # fmt: skip
                values[role][validation_set.pk] = measure(validation_set.metric, data[validation_set.pk])
    for validation_set in sets:
        baseline, measured = values["parent"][validation_set.pk], values["candidate"][validation_set.pk]
        verdict = gate.verdict(validation_set.metric, measured, baseline, validation_set.max_relative_drop)
        services.gate_run_record(run_id=run.pk, validation_set=validation_set, verdict=verdict.as_dict(),
                                 reason=verdict.reason(), values=measured, baseline_values=baseline)  # fmt: skip
        say(f"'{validation_set.name}': {'passes' if verdict.passed else 'fails: ' + verdict.reason()}")
    services.gate_run_finish(run_id=run.pk)


@contextmanager
def _measurer(version: ModelVersion, run: GateRun) -> Iterator[Measure]:
    artifact = artifact_read_verified(version.artifact_sha256)
    if version.format == ArtifactFormat.VLLM:
        from appliance.optimisation import textgen

        engine = textgen.Engine(artifact=artifact, facts=version.generative or {},
                                engine=engine_spec(version.model.serving_profile or {}),
                                workdir=settings.VAR_DIR / "gate-runs" / str(run.pk),
                                start_timeout_s=settings.GATE_ENGINE_START_TIMEOUT_S)  # fmt: skip
        with engine:
            yield lambda metric, data: textgen.measure(engine, metric, data)
        return
    from appliance.optimisation import metrics, onnxrun

    session = onnxrun.session(artifact, threads=1)
    yield lambda metric, data: metrics.measure(metric, onnxrun.run(session, data.inputs), data.expected)
