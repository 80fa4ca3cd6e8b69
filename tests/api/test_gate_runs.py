"""Gate runs over the REST API: a version no optimisation job made (an uploaded child)
judged against its parent on the model's validation sets. What a create refuses (and
records nothing for); the task sent after commit on the optimiser's queue; a whole run in
this process on the digits classifier as ONNX (the generative path runs on the real vLLM
engine in tests/e2e/test_generative.py), whose results decide the deployment; and
cancelling, which the optimisation jobs and profile searches share."""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np
import pytest
from rest_framework.test import APIClient

from appliance.catalog.choices import ChangeKind
from appliance.catalog.models import GateResult, ModelVersion
from appliance.catalog.services import version_upload
from appliance.optimisation import services
from appliance.optimisation.choices import JobState
from appliance.optimisation.gaterun import run_gate
from appliance.optimisation.models import GateRun, OptimisationJob
from tests.broker import received
from tests.conftest import assert_audited
from tests.factories import make_node, make_validation_set, make_version, manifest
from triton_models.digits import build as digits_build
from triton_models.digits import onnx as digits_onnx

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def weights() -> dict:
    return digits_build.train()[0]


def _onnx(graph: bytes, parent: ModelVersion | None = None, note: str = "") -> ModelVersion:
    spec = manifest("digits")
    return version_upload(model="digits", fmt="onnx", artifact=io.BytesIO(graph), signature=spec["signature"],
                          max_batch_size=spec["max_batch_size"], parent=parent,
                          change_kind=ChangeKind.NEW_WEIGHTS if parent else ChangeKind.INITIAL, change_note=note)  # fmt: skip


def _noisy(weights: dict, scale: float) -> dict:
    """The same classifier with its weights disturbed (a bad conversion, say)."""
    rng = np.random.default_rng(7)
    return {k: (v + rng.normal(0, scale * float(np.std(v)), v.shape).astype(v.dtype)
                if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v) for k, v in weights.items()}  # fmt: skip


def _create(api: APIClient, **body: Any) -> Any:
    return api.post("/api/v1/gate-runs/", body, format="json")


def test_refusals_name_the_problem_and_record_nothing(api: APIClient, weights: dict) -> None:
    reference = _onnx(digits_onnx.graph(weights))
    child = _onnx(digits_onnx.graph(weights), parent=reference)

    refused = _create(api, version=str(child.pk))
    assert refused.status_code == 400 and refused.json()["detail"] == "model 'digits' has no validation set: upload one first"
    make_validation_set("digits", "holdout", content=digits_onnx.validation_set())
    refused = _create(api, version=str(reference.pk))
    assert refused.status_code == 400 and "digits:1 has no parent: it is the reference" in refused.json()["detail"]
    refused = _create(api, version=str(child.pk), validation_sets=["holdout", "faces"])
    assert refused.status_code == 400
    assert refused.json()["detail"] == "model 'digits' has no validation set named 'faces' (its sets: holdout)"
    python_child = make_version("digits", parent=reference)
    refused = _create(api, version=str(python_child.pk))
    assert refused.status_code == 400 and "digits:3 is a python version: the gate measures ONNX and generative" in (
        refused.json()["detail"])
    refused = _create(api, version=str(uuid.uuid4()))
    assert refused.status_code == 400 and "version" in refused.json()
    assert not GateRun.objects.exists()


def test_a_run_is_sent_to_the_optimisers_queue_after_commit_and_one_runs_at_a_time(
    api: APIClient, weights: dict, django_capture_on_commit_callbacks: Any, settings: Any,
) -> None:  # fmt: skip
    settings.OPTIMISE_QUEUE = f"test-optimise-{uuid.uuid4().hex[:8]}"  # read back below, from RabbitMQ
    reference = _onnx(digits_onnx.graph(weights))
    child = _onnx(digits_onnx.graph(weights), parent=reference)
    holdout = make_validation_set("digits", "holdout", content=digits_onnx.validation_set())
    with django_capture_on_commit_callbacks(execute=True):
        started = _create(api, version=str(child.pk))
    assert started.status_code == 202, started.content
    body = started.json()
    assert (body["state"], body["model"], body["version_number"], body["parent_version"]) == (
        "pending", "digits", 2, str(reference.pk))
    assert body["sets"] == [{"id": str(holdout.pk), "name": "holdout", "metric": "top1_accuracy"}]
    ((headers, sent),) = received(settings.OPTIMISE_QUEUE, 1)
    assert (headers["task"], headers["id"], sent[0]) == (services.TASK_GATE_RUN, body["id"], [body["id"]])
    assert_audited("gate_run.create", target_id=body["id"], actor="user:olivia")
    busy = _create(api, version=str(child.pk))
    assert busy.status_code == 409 and busy.json()["detail"] == "a gate run of digits:2 is already pending or running"
    assert [r["id"] for r in api.get("/api/v1/gate-runs/", {"model": "digits"}).json()["results"]] == [body["id"]]


def test_a_run_measures_child_and_parent_and_its_results_decide_the_deployment(api: APIClient, weights: dict) -> None:
    reference = _onnx(digits_onnx.graph(weights), note="the reference")
    faithful = _onnx(digits_onnx.graph(weights), parent=reference, note="re-exported")
    broken = _onnx(digits_onnx.graph(_noisy(weights, 1.5)), parent=reference, note="a bad conversion")
    make_validation_set("digits", "holdout", content=digits_onnx.validation_set(), max_relative_drop=0.005)
    make_node("node-a")

    outcomes = {}
    for version in (faithful, broken):
        run = services.gate_run_create(version=version, requested_by="olivia")
        assert run_gate(str(run.pk)) == "succeeded"
        outcomes[version.number] = api.get(f"/api/v1/gate-runs/{run.pk}/").json()

    good, bad = outcomes[2], outcomes[3]
    assert good["state"] == bad["state"] == "succeeded"
    assert "ONNX Runtime" in good["measured_on"] and good["passed"] is True and bad["passed"] is False
    ((line,),) = [good["outcome"]]
    # The parent measured in the same run: a faithful child scores exactly what it does.
    assert line["values"] == line["baseline_values"] and line["values"]["top1_accuracy"] > 0.9
    ((line,),) = [bad["outcome"]]
    assert line["values"]["top1_accuracy"] < line["baseline_values"]["top1_accuracy"] * 0.995
    assert line["reason"].startswith("top1_accuracy ") and "required (parent" in line["reason"]
    assert any("fails: top1_accuracy" in p["message"] for p in bad["progress"])
    assert GateResult.objects.filter(version=faithful, passed=True).count() == 1
    assert GateResult.objects.filter(version=broken, passed=False).count() == 1

    deploy = api.post("/api/v1/deployments/", {"version": str(faithful.pk), "nodes": ["node-a"]}, format="json")
    assert deploy.status_code == 202, deploy.content
    refused = api.post("/api/v1/deployments/", {"version": str(broken.pk), "nodes": ["node-a"]}, format="json")
    assert refused.status_code == 409
    measured = line["values"]["top1_accuracy"]
    assert f"top1_accuracy measured {measured:.6g} < threshold" in refused.json()["detail"]


def test_cancelling_stops_a_run_at_its_next_step_and_an_ended_one_is_not_cancelled(api: APIClient,
                                                                                   weights: dict) -> None:  # fmt: skip
    reference = _onnx(digits_onnx.graph(weights))
    child = _onnx(digits_onnx.graph(weights), parent=reference)
    make_validation_set("digits", "holdout", content=digits_onnx.validation_set())

    # Pending: it never starts.
    pending = services.gate_run_create(version=child)
    cancelled = api.post(f"/api/v1/gate-runs/{pending.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["cancelled_by"] == "olivia" and cancelled.json()["error"] == "cancelled by olivia"
    assert_audited("gate_run.update", target_id=str(pending.pk), actor="user:olivia")
    assert run_gate(str(pending.pk)) == "not pending"
    again = api.post(f"/api/v1/gate-runs/{pending.pk}/cancel/")
    assert again.status_code == 409 and again.json()["detail"] == "it has already ended (cancelled): nothing to cancel"

    # Running: the worker stops at its next checkpoint (a progress line), records nothing more, and
    # the row stays cancelled rather than failed.
    running = services.gate_run_create(version=child)
    steps: list[str] = []

    def body(row: GateRun) -> None:
        services.gate_run_progress(run_id=row.pk, message="first step")
        steps.append("first")
        services.cancel(row=row, cancelled_by="olga")
        services.gate_run_progress(run_id=row.pk, message="second step")
        steps.append("second")

    assert services.run_tracked(GateRun, str(running.pk), "here", body) == "cancelled"
    running.refresh_from_db()
    assert steps == ["first"] and running.state == JobState.CANCELLED and running.error == "cancelled by olga"
    assert [p["message"] for p in running.progress] == ["first step"]
    assert not GateResult.objects.exists()

    # The same action on an optimisation job; a finished one is refused.
    job = OptimisationJob.objects.create(source=reference, validation_set=child.model.validation_sets.get(),
                                         kinds=["fp16"], state=JobState.SUCCEEDED)  # fmt: skip
    refused = api.post(f"/api/v1/optimisation-jobs/{job.pk}/cancel/")
    assert refused.status_code == 409 and "already ended (succeeded)" in refused.json()["detail"]


def test_the_console_starts_a_run_shows_it_live_and_cancels_it(weights: dict, operator: Any, auditor: Any) -> None:
    from django.test import Client

    reference = _onnx(digits_onnx.graph(weights))
    _onnx(digits_onnx.graph(weights), parent=reference)
    make_validation_set("digits", "holdout", content=digits_onnx.validation_set())
    console = Client()
    console.force_login(operator)
    page = console.get("/console/models/digits/?version=2").content.decode()
    assert 'id="gate-run-form"' in page and "Run the gate on version 2" in page
    assert 'id="gate-run-form"' not in console.get("/console/models/digits/?version=1").content.decode()  # the reference
    assert console.post("/console/models/digits/gate-run/", {"version": "x"}).status_code == 400
    refused = console.post("/console/models/digits/gate-run/", {"version": "1"})
    assert refused.status_code == 400 and b"digits:1 has no parent" in refused.content

    started = console.post("/console/models/digits/gate-run/", {"version": "2"})
    run = GateRun.objects.get()
    assert started.status_code == 302 and started["Location"] == f"/console/gate-runs/{run.pk}/"
    pending = console.get(f"/console/gate-runs/{run.pk}/").content.decode()
    assert "hx-trigger" in pending and 'id="cancel"' in pending and "<b>holdout</b> (top1_accuracy)" in pending
    watcher = Client()
    watcher.force_login(auditor)
    assert 'id="cancel"' not in watcher.get(f"/console/gate-runs/{run.pk}/").content.decode()
    assert watcher.post(f"/console/gate-runs/{run.pk}/cancel/").status_code == 403

    assert console.post(f"/console/gate-runs/{run.pk}/cancel/").status_code == 302
    panel = console.get(f"/console/gate-runs/{run.pk}/panel/").content.decode()
    assert "hx-trigger" not in panel and 'id="cancel"' not in panel and "cancelled by olivia" in panel
    assert f"/console/gate-runs/{run.pk}/" in console.get("/console/models/digits/").content.decode()

    # A run that ended: its outcome, with the verdict.
    finished = services.gate_run_create(version=run.version)
    assert run_gate(str(finished.pk)) == "succeeded"
    done = console.get(f"/console/gate-runs/{finished.pk}/").content.decode()
    assert 'id="verdict"' in done and "passes: it may roll out" in done and 'id="outcome"' in done
