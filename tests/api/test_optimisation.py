"""Optimisation jobs: what the API refuses, and one job run through (the task's body, in
this process; the end-to-end test runs it on the optimiser's Celery worker) on the digits
classifier as ONNX: candidates measured, each a child version with its gate result, a
recommendation, and the gate deciding which of them may be deployed."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

from appliance.catalog.choices import ChangeKind
from appliance.catalog.models import GateResult, ModelVersion
from appliance.catalog.services import version_upload
from appliance.optimisation.choices import CandidateKind, JobState
from appliance.optimisation.jobs import run_job
from appliance.optimisation.models import OptimisationJob
from appliance.optimisation.services import optimisation_job_create
from tests.conftest import assert_audited
from tests.factories import make_node, make_validation_set, make_version, manifest
from triton_models.digits import build as digits_build
from triton_models.digits import onnx as digits_onnx

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def weights() -> dict:
    return digits_build.train()[0]


def _onnx_version(weights: dict, model: str = "digits") -> ModelVersion:
    spec = manifest("digits")
    make_version(model)  # a python version first: the ONNX one is a re-export of its weights
    return version_upload(model=model, fmt="onnx", artifact=io.BytesIO(digits_onnx.graph(weights)),
                          signature=spec["signature"], max_batch_size=spec["max_batch_size"],
                          change_kind=ChangeKind.RE_EXPORT)  # fmt: skip


def _create(api: APIClient, **body: object) -> object:
    return api.post("/api/v1/optimisation-jobs/", body, format="json")


def test_refusals_name_the_problem_and_record_nothing(api: APIClient, weights: dict) -> None:
    source = _onnx_version(weights)
    holdout = make_validation_set("digits", "holdout", content=digits_onnx.validation_set())
    python_version = ModelVersion.objects.get(model__name="digits", number=1)
    make_version("other")
    foreign = make_validation_set("other", "theirs")

    refused = _create(api, version=str(python_version.pk), validation_set=str(holdout.pk))
    assert refused.status_code == 400 and "digits:1 is a python version" in refused.json()["detail"]
    refused = _create(api, version=str(source.pk), validation_set=str(foreign.pk))
    assert refused.status_code == 400 and "belongs to another model" in refused.json()["detail"]
    refused = _create(api, version=str(source.pk), validation_set=str(holdout.pk), kinds=["int4"])
    assert refused.status_code == 400 and "kinds" in refused.json()
    refused = _create(api, version=str(source.pk), validation_set=str(holdout.pk), kinds=["fp16", "fp16"])
    assert refused.status_code == 400 and "distinct" in refused.json()["detail"]
    assert not OptimisationJob.objects.exists()

    started = _create(api, version=str(source.pk), validation_set=str(holdout.pk), kinds=["int8_dynamic"])
    assert started.status_code == 202, started.content
    assert started.json()["state"] == "pending" and started.json()["kinds"] == ["int8_dynamic"]
    assert_audited("optimisation_job.create", target_id=started.json()["id"])
    busy = _create(api, version=str(source.pk), validation_set=str(holdout.pk))
    assert busy.status_code == 409 and "already running" in busy.json()["detail"]


@override_settings(OPTIMISE_SPEED_REQUESTS=40)
def test_a_job_measures_candidates_and_the_gate_decides_which_deploy(api: APIClient, operator: Any,
                                                                    weights: dict) -> None:  # fmt: skip
    source = _onnx_version(weights)
    holdout = make_validation_set("digits", "holdout", content=digits_onnx.validation_set())
    make_node("node-a")
    job = optimisation_job_create(source=source, validation_set=holdout,
                                  kinds=[CandidateKind.FP16, CandidateKind.INT8_DYNAMIC, CandidateKind.INT8_STATIC,
                                         CandidateKind.INT8_MIXED])  # fmt: skip
    assert run_job(str(job.pk)) == "succeeded"
    assert run_job(str(job.pk)) == "not pending", "a redelivered task does nothing"

    body = api.get(f"/api/v1/optimisation-jobs/{job.pk}/").json()
    assert body["state"] == JobState.SUCCEEDED and body["measured_on"] and "ONNX Runtime 1.22.1" in body["measured_on"]
    assert [c["kind"] for c in body["candidates"]] == ["reference", "fp16", "int8_dynamic", "int8_static", "int8_mixed"]
    reference, *candidates = body["candidates"]
    assert reference["version"] is None and reference["passed"]
    for candidate in candidates:
        version = ModelVersion.objects.get(pk=candidate["version"])
        assert (version.parent_id, version.change_kind, version.format) == (source.pk, "quantisation", "onnx")
        assert candidate["kind"] in version.change_note and str(job.pk) in version.change_note
        result = GateResult.objects.get(version=version)
        assert result.passed == candidate["passed"] and result.checks == candidate["checks"]
        assert result.baseline_values == reference["values"]
        assert candidate["size_bytes"] == version.artifact_size
        assert candidate["p50_ms"] > 0 and candidate["throughput"] > 0
        # The gate decides the deployment: 202 where it passed, 409 with the numbers where not.
        deployed = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["node-a"]}, format="json")
        if candidate["passed"]:
            assert deployed.status_code == 202, deployed.content
            api.post(f"/api/v1/deployments/{deployed.json()['id']}/abort/")
        else:
            assert deployed.status_code == 409 and "top1_accuracy measured" in deployed.json()["detail"]
    assert reference["values"]["top1_accuracy"] > 0.9  # the held-out split, as the build measured it
    # The bar for the classifier: INT8 loses at most half a point of held-out accuracy.
    for candidate in candidates:
        if candidate["kind"].startswith("int8"):
            drop = reference["values"]["top1_accuracy"] - candidate["values"]["top1_accuracy"]
            assert drop <= 0.005, (candidate["kind"], drop)
            assert candidate["size_bytes"] < 0.6 * reference["size_bytes"]
    if body["recommended"] is not None:
        chosen = next(c for c in candidates if c["id"] == body["recommended"])
        assert chosen["passed"] and chosen["kind"] in body["recommendation"]
        assert chosen["throughput"] == max(c["throughput"] for c in candidates if c["passed"])
    else:
        assert "keep digits:" in body["recommendation"]
    assert [line["message"] for line in body["progress"]][0].startswith("measuring the reference digits:2")
    assert_audited("optimisation_job.update", target_id=str(job.pk), origin="task")
    json.dumps(body)  # the report is plain JSON

    # The console shows the same report: a row per candidate, the gate's word, the chart, no more polling.
    console = Client()
    console.force_login(operator)
    page = console.get(f"/console/optimisation/{job.pk}/").content.decode()
    assert page.count("<tr") == 1 + len(body["candidates"]) and 'id="chart"' in page and "hx-trigger" not in page
    assert page.count("passes</td>") == sum(c["passed"] for c in body["candidates"])
    model_page = console.get("/console/models/digits/").content.decode()
    assert f'/console/optimisation/{job.pk}/' in model_page and 'id="optimisation-form"' in model_page


def test_a_failed_job_says_why(api: APIClient, weights: dict) -> None:
    source = _onnx_version(weights)
    holdout = make_validation_set("digits", "holdout", content=digits_onnx.validation_set())
    job = optimisation_job_create(source=source, validation_set=holdout, kinds=[CandidateKind.INT8_DYNAMIC])
    # The stored artifact no longer matches its checksum (a disk fault): the job fails, naming it.
    from appliance.catalog.artifacts import artifact_path

    artifact_path(source.artifact_sha256).write_bytes(b"not the model")
    assert run_job(str(job.pk)) == "failed"
    job.refresh_from_db()
    assert job.state == JobState.FAILED and job.error and job.finished is not None
    assert not ModelVersion.objects.filter(parent=source).exists()


def test_a_job_whose_worker_died_is_failed_when_its_message_comes_back(weights: dict) -> None:
    source = _onnx_version(weights)
    holdout = make_validation_set("digits", "holdout", content=digits_onnx.validation_set())
    job = optimisation_job_create(source=source, validation_set=holdout, kinds=[CandidateKind.INT8_DYNAMIC])
    OptimisationJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING)  # claimed, then the worker was lost

    assert run_job(str(job.pk)) == "not pending", "the redelivered message does not run it a second time"
    job.refresh_from_db()
    assert job.state == JobState.FAILED and job.error.startswith("interrupted") and job.finished is not None
    again = optimisation_job_create(source=source, validation_set=holdout, kinds=[CandidateKind.INT8_DYNAMIC])
    assert again.state == JobState.PENDING, "the version is free for a new job"
