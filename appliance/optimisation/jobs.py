"""One optimisation job, run by the optimiser's worker: from an ONNX version, the
candidates asked for (FP16, INT8 dynamic, INT8 static, INT8 mixed precision), each
measured where ONNX versions are served on CPU nodes here (ONNX Runtime on the CPU, one
thread per request, as catalog/onnx_runner.py runs it inside Triton; the same pinned
ONNX Runtime as the Triton environment), judged by the gate against the version itself
on the model's validation set, and kept as a child version (lineage `quantisation`)
with its gate result, passed or not: a failing candidate stays visible and is refused
at deployment with its numbers.

The reference (the source version) is measured in the same run, so speed-ups are
ratios of numbers taken minutes apart on the same machine.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import onnxruntime
from django.conf import settings

from appliance.catalog.artifacts import artifact_read_verified
from appliance.catalog.choices import ArtifactFormat, ChangeKind
from appliance.catalog.services import gate_record, version_upload
from appliance.optimisation import gate, host, metrics, onnxrun, quantise
from appliance.optimisation.choices import CandidateKind
from appliance.optimisation.models import OptimisationCandidate, OptimisationJob
from appliance.optimisation.services import candidate_record, job_finish, job_progress, run_tracked
from appliance.optimisation.validation_data import ValidationData, parse_validation_set

log = logging.getLogger(__name__)

CONCURRENCY = 16


def measured_on() -> str:
    return f"{host.machine()}, ONNX Runtime {onnxruntime.__version__} on the CPU, one thread per request"


def _load(sha256: str, metric: str) -> ValidationData:
    return parse_validation_set(artifact_read_verified(sha256), metric=metric)


def run_job(job_id: str) -> str:
    return run_tracked(OptimisationJob, job_id, measured_on(), _run)


def _run(job: OptimisationJob) -> None:
    source, vset = job.source, job.validation_set
    metric, drop = vset.metric, vset.max_relative_drop

    def say(message: str) -> None:
        job_progress(job_id=job.pk, message=message)

    reference = artifact_read_verified(source.artifact_sha256)
    data = _load(vset.content_sha256, metric)
    calibration = (_load(job.calibration_set.content_sha256, job.calibration_set.metric).inputs
                   if job.calibration_set is not None else data.inputs)  # fmt: skip
    calibration = {name: rows[: settings.OPTIMISE_CALIBRATION_ROWS] for name, rows in calibration.items()}
    sample = {name: rows[:1] for name, rows in data.inputs.items()}

    def values_of(model: bytes) -> dict[str, float]:
        return metrics.measure(metric, onnxrun.run(onnxrun.session(model, threads=1), data.inputs), data.expected)

    def speed_of(model: bytes) -> dict[str, Any]:
        return onnxrun.measure_speed(model, sample, requests=settings.OPTIMISE_SPEED_REQUESTS, concurrency=CONCURRENCY)

    say(f"measuring the reference {source} on {data.rows} rows of '{vset.name}'")
    baseline = values_of(reference)
    judge: Callable[[dict[str, float]], gate.Verdict] = lambda values: gate.verdict(metric, values, baseline, drop)  # noqa: E731
    reference_row = candidate_record(job=job, kind=CandidateKind.REFERENCE, version=None, size_bytes=len(reference),
                                     speed=speed_of(reference), values=baseline, verdict=judge(baseline).as_dict(),
                                     note=f"{source} as uploaded")  # fmt: skip
    rows = [reference_row]
    for kind in job.kinds:
        say(f"building {CandidateKind(kind).label}")
        kept: tuple[str, ...] = ()
        search: list[dict[str, Any]] = []
        if kind == CandidateKind.FP16:
            model = quantise.fp16(reference)
        elif kind == CandidateKind.INT8_DYNAMIC:
            model = quantise.int8_dynamic(reference)
        elif kind == CandidateKind.INT8_STATIC:
            model = quantise.int8_static(reference, calibration)
        else:
            result = quantise.int8_mixed(reference, calibration, lambda m: judge(values_of(m)),
                                         max_steps=settings.OPTIMISE_MIXED_MAX_STEPS)  # fmt: skip
            model, kept = result.model, result.excluded
            search = [{"kept_in_float": list(s.excluded), "passed": s.verdict.passed, "reason": s.verdict.reason()}
                      for s in result.steps]  # fmt: skip
            if not result.passed:
                say("mixed precision found no model that passes: " + "; ".join(
                    f"kept {', '.join(s['kept_in_float']) or 'none'}: {s['reason'] or 'passes'}" for s in search)[:1000])
        say(f"measuring {kind} ({len(model) / 1e6:.1f} MB)")
        values = values_of(model)
        verdict = judge(values)
        speed = speed_of(model)
        note = f"{kind}: {CandidateKind(kind).label} of {source} (optimisation job {job.pk})"
        if kept:
            note += f"; kept in float: {', '.join(kept)}"
        version = version_upload(model=source.model, fmt=ArtifactFormat.ONNX, artifact=io.BytesIO(model),
                                 signature=source.signature, max_batch_size=source.max_batch_size, parent=source,
                                 change_kind=ChangeKind.QUANTISATION, change_note=note[:500],
                                 sample_inputs=source.sample_inputs)  # fmt: skip
        gate_record(version=version, validation_set=vset, passed=verdict.passed, checks=verdict.as_dict()["checks"],
                    values=values, baseline_values=baseline, measured_on=job.measured_on)  # fmt: skip
        rows.append(candidate_record(job=job, kind=kind, version=version, size_bytes=len(model), speed=speed,
                                     values=values, verdict=verdict.as_dict(), kept_in_float=kept, search=search,
                                     note=verdict.reason() or "passes the gate"))  # fmt: skip
        say(f"{kind}: {version} — {'passes' if verdict.passed else 'fails'} the gate")
    best, why = recommend(rows)
    job_finish(job_id=job.pk, recommended=best, recommendation=why)


def recommend(rows: list[OptimisationCandidate]) -> tuple[OptimisationCandidate | None, str]:
    """The passing candidate with the most throughput (then the smallest), and why; none
    when no candidate passed or none is faster than the reference."""
    reference = next(r for r in rows if r.kind == CandidateKind.REFERENCE)
    passing = [r for r in rows if r.kind != CandidateKind.REFERENCE and r.passed]
    failing = [r.kind for r in rows if r.kind != CandidateKind.REFERENCE and not r.passed]
    tail = f" Failed the gate: {', '.join(failing)}." if failing else ""
    if not passing:
        return None, f"No candidate passed the gate: keep {reference.note}.{tail}"
    best = max(passing, key=lambda r: (r.throughput, -r.size_bytes))
    speed_up = best.throughput / reference.throughput if reference.throughput else float("nan")
    if speed_up <= 1.0:
        return None, (f"The passing candidates are no faster than the reference here (best: {best.kind}, "
                      f"{speed_up:.2f}x): keep {reference.note}.{tail}")  # fmt: skip
    checks = "; ".join(f"{c['name']} {c['measured']:.4f} ≥ {c['threshold']:.4f}" for c in best.checks)
    return best, (f"{best.kind} ({best.version}): {speed_up:.2f}x the reference's throughput at concurrency "
                  f"{CONCURRENCY}, {best.size_bytes / reference.size_bytes:.2f}x its size, p50 {best.p50_ms:.2f} ms "
                  f"vs {reference.p50_ms:.2f} ms; passes the gate ({checks}).{tail}")  # fmt: skip

