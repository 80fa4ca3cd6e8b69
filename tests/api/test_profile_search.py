"""Profile searches over the REST API: what a create refuses (and records nothing for), the
task sent after commit on the optimiser's queue under the row's id, and what `apply` refuses
and does. The measuring itself runs in tests/e2e/test_profile_search.py (a real Triton and
the optimiser's Celery worker); here a search's outcome is recorded through the services its
task calls."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.services import model_update, version_upload
from appliance.nodes.models import Gpu, Node
from appliance.optimisation import profiles, services
from appliance.optimisation.models import ProfileSearch
from tests.broker import received
from tests.conftest import assert_audited
from tests.factories import make_node, make_validation_set, make_version, manifest
from triton_models.minilm import validation as minilm_validation

pytestmark = pytest.mark.django_db


def _onnx(model: str = "digits", **fields: Any) -> ModelVersion:
    spec = manifest("digits")
    values: dict[str, Any] = {"signature": spec["signature"], "max_batch_size": spec["max_batch_size"]}
    values.update(fields)
    return version_upload(model=model, fmt="onnx", artifact=io.BytesIO(b"an ONNX file"), **values)


def _create(api: APIClient, **body: Any) -> Any:
    return api.post("/api/v1/profile-searches/", body, format="json")


@pytest.fixture
def version(db: None) -> ModelVersion:
    make_version("digits")
    return _onnx()


@pytest.fixture
def cpu_node(db: None) -> Node:
    return make_node("cpu-1")


def test_a_search_is_recorded_and_sent_to_the_optimisers_queue_after_commit(
    api: APIClient, version: ModelVersion, cpu_node: Node, django_capture_on_commit_callbacks: Any, settings: Any,
) -> None:  # fmt: skip
    settings.OPTIMISE_QUEUE = f"test-optimise-{uuid.uuid4().hex[:8]}"  # read back below, from RabbitMQ
    with django_capture_on_commit_callbacks(execute=True):
        started = _create(api, version=str(version.pk), node="cpu-1", objective_p99_ms=25.5, concurrency=8)
    assert started.status_code == 202, started.content
    body = started.json()
    assert (body["state"], body["node"], body["model"], body["version_number"]) == ("pending", "cpu-1", "digits", 2)
    assert (body["objective_p99_ms"], body["concurrency"], body["requests"]) == (25.5, 8, profiles.DEFAULT_REQUESTS)
    assert body["grid"] == profiles.DEFAULT_GRID and body["results"] == [] and body["recommended"] is None
    # At concurrency 8, max batch size 32 behaves as 8: pruned, and said so.
    assert any("32: a batch never holds more than the 8 requests" in line for line in body["pruned"])
    ((headers, sent),) = received(settings.OPTIMISE_QUEUE, 1)
    assert (headers["task"], headers["id"], sent[0]) == (services.TASK_PROFILE_SEARCH, body["id"], [body["id"]])
    assert_audited("profile_search.create", target_id=body["id"], actor="user:olivia")
    listed = api.get("/api/v1/profile-searches/", {"model": "digits"}).json()
    assert [s["id"] for s in listed["results"]] == [body["id"]]
    assert api.get("/api/v1/profile-searches/", {"model": "other"}).json()["results"] == []
    busy = _create(api, version=str(version.pk), node="cpu-1", objective_p99_ms=50)
    assert busy.status_code == 409 and "already pending or running" in busy.json()["detail"]


def test_refusals_name_the_problem_and_record_nothing(api: APIClient, version: ModelVersion, cpu_node: Node) -> None:
    gpu_node = make_node("gpu-1")
    Gpu.objects.create(node=gpu_node, index=0, uuid="GPU-1", product="NVIDIA H100", model="H100-80GB", memory_mib=81559)
    tensorrt_only = make_node("trt-1")
    Node.objects.filter(pk=tensorrt_only.pk).update(backends=["tensorrt"])
    python_version = ModelVersion.objects.get(model__name="digits", number=1)
    text = _onnx("embedder", signature=minilm_validation.SIGNATURE, max_batch_size=64)
    make_version("other")
    foreign = make_validation_set("other", "theirs")
    base = {"version": str(version.pk), "node": "cpu-1", "objective_p99_ms": 50}

    def refused(words: str, status: int = 400, **change: Any) -> None:
        answer = _create(api, **(base | change))
        assert answer.status_code == status, answer.content
        assert words in json.dumps(answer.json(), ensure_ascii=False), answer.json()

    refused("node gpu-1 has GPUs", node="gpu-1")
    refused("node trt-1 cannot serve digits:2", node="trt-1")
    refused("inputs of variable size and no stored samples", version=str(text.pk))
    refused("belongs to another model", input_set=str(foreign.pk))
    refused("greater than or equal to 0.001", objective_p99_ms=0)
    refused("A valid number is required", objective_p99_ms="NaN")
    refused("at least the concurrency", concurrency=100, requests=60)
    refused("repeats a value", grid={"max_batch_size": [8, 8]})
    refused("at most 24 are measured", grid={"max_batch_size": [1, 2, 4, 8, 16, 32],
                                             "instance_count": [1, 2, 3], "max_queue_delay_us": [0, 100, 1000]})  # fmt: skip
    refused("Object with name=nowhere does not exist", node="nowhere")
    # The model's own profile, with the grid's fields changed, must serve the version: warm-up from samples
    # needs stored samples.
    Model.objects.filter(name="digits").update(serving_profile={"warmup": {"source": "samples"}})
    refused("no batching, 1 instance: warm-up from samples: version 2 has no stored sample inputs")
    assert not ProfileSearch.objects.exists()

    # Not refused: a python version, and batch sizes a version cannot take are pruned (and said so).
    Model.objects.filter(name="digits").update(serving_profile={})
    small = _onnx("small", max_batch_size=4)
    for chosen in (python_version, small):
        answer = _create(api, **(base | {"version": str(chosen.pk)}))
        assert answer.status_code == 202, answer.content
    assert "max batch size 8, 32: above what the version takes (4)" in answer.json()["pruned"]


def _succeeded(search: ProfileSearch, *, met: bool = True) -> ProfileSearch:
    """What the task records for a search that measured two profiles."""
    services.profile_search_claim(search_id=search.pk, measured_on="test host")
    outcomes = [Outcome(1, 100.0, 300.0), Outcome(8, 350.0, 40.0 if met else 400.0)]
    results = [services.profile_search_record(search=search, position=i, outcome=o) for i, o in enumerate(outcomes)]
    best, speed_up, why = profiles.recommend(outcomes, objective_p99_ms=search.objective_p99_ms,
                                             concurrency=search.concurrency)  # fmt: skip
    return services.profile_search_finish(search_id=search.pk, recommended=None if best is None else results[best],
                                          recommendation=why, speed_up=speed_up)  # fmt: skip


def Outcome(batch: int, throughput: float, p99: float) -> profiles.Outcome:  # noqa: N802 (reads as the type)
    return profiles.Outcome(profiles.Candidate(batch, 1, 0), p50_ms=p99 / 2, p99_ms=p99, throughput=throughput)


def test_apply_makes_the_recommendation_the_models_serving_profile(api: APIClient, version: ModelVersion,
                                                                   cpu_node: Node) -> None:  # fmt: skip
    search_id = _create(api, version=str(version.pk), node="cpu-1", objective_p99_ms=50).json()["id"]
    early = api.post(f"/api/v1/profile-searches/{search_id}/apply/")
    assert early.status_code == 409 and "nothing to apply yet" in early.json()["detail"]
    search = _succeeded(ProfileSearch.objects.get(pk=search_id))
    assert search.speed_up == pytest.approx(3.5)

    applied = api.post(f"/api/v1/profile-searches/{search_id}/apply/")
    assert applied.status_code == 200, applied.content
    assert applied.json()["applied_by"] == "olivia" and applied.json()["applied"]
    profile = Model.objects.get(name="digits").serving_profile
    assert profile["max_batch_size"] == 8 and profile["dynamic_batching"]["enabled"] is True
    assert profile == applied.json()["results"][1]["profile"]
    event = assert_audited("model.update", actor="user:olivia")
    assert "serving_profile" in json.dumps(event.changes)
    assert api.post(f"/api/v1/profile-searches/{search_id}/apply/").status_code == 200, "applying again changes nothing"

    # A later search measured over that profile; then the operator changes it: the numbers no longer hold.
    second = _succeeded(ProfileSearch.objects.get(pk=_create(api, version=str(version.pk), node="cpu-1",
                                                                 objective_p99_ms=50).json()["id"]))  # fmt: skip
    model_update(model=Model.objects.get(name="digits"), serving_profile={**profile, "onnx_threads": 2})
    stale = api.post(f"/api/v1/profile-searches/{second.pk}/apply/")
    assert stale.status_code == 409 and "changed after the search began" in stale.json()["detail"]


def test_apply_refuses_when_no_profile_met_the_objective(api: APIClient, version: ModelVersion, cpu_node: Node) -> None:
    search_id = _create(api, version=str(version.pk), node="cpu-1", objective_p99_ms=50).json()["id"]
    search = _succeeded(ProfileSearch.objects.get(pk=search_id), met=False)
    assert search.recommended is None and search.recommendation.startswith("No profile met p99 ≤ 50 ms")
    refused = api.post(f"/api/v1/profile-searches/{search_id}/apply/")
    assert refused.status_code == 409 and "no profile met the objective" in refused.json()["detail"]
    assert Model.objects.get(name="digits").serving_profile == ProfileSearch.objects.get(pk=search_id).base_profile


def test_a_redelivered_search_found_running_is_failed_and_frees_the_version(version: ModelVersion,
                                                                           cpu_node: Node) -> None:  # fmt: skip
    search = services.profile_search_create(version=version, node=cpu_node, objective_p99_ms=10)
    assert services.profile_search_claim(search_id=search.pk, measured_on="h") is not None
    assert services.profile_search_claim(search_id=search.pk, measured_on="h") is None
    search.refresh_from_db()
    assert search.state == "failed" and search.error.startswith("interrupted")
    assert services.profile_search_create(version=version, node=cpu_node, objective_p99_ms=10).state == "pending"


def test_the_console_starts_a_search_shows_it_and_applies_it(version: ModelVersion, cpu_node: Node, operator: Any,
                                                             auditor: Any) -> None:  # fmt: skip
    from django.test import Client

    console = Client()
    console.force_login(operator)
    model_page = console.get("/console/models/digits/").content.decode()
    assert 'id="profile-search-form"' in model_page and '<option value="2">2 (ONNX)</option>' in model_page
    form = {"version": "2", "node": "cpu-1", "objective_p99_ms": "40", "concurrency": "16", "requests": "500"}
    assert console.post("/console/models/digits/profile-search/", form | {"objective_p99_ms": "fast"}).status_code == 400
    assert console.post("/console/models/digits/profile-search/", form | {"node": "nowhere"}).status_code == 400
    refused = console.post("/console/models/digits/profile-search/", form | {"concurrency": "1000"})
    assert refused.status_code == 400 and b"concurrency: from 1 to 256" in refused.content
    started = console.post("/console/models/digits/profile-search/", form)
    search = ProfileSearch.objects.get()
    assert started.status_code == 302 and started["Location"] == f"/console/profile-searches/{search.pk}/"
    assert (search.concurrency, search.requests, search.objective_p99_ms, search.requested_by) == (16, 500, 40.0, "olivia")
    pending = console.get(f"/console/profile-searches/{search.pk}/").content.decode()
    assert "hx-trigger" in pending and 'id="profile-search-apply"' not in pending

    _succeeded(search)
    page = console.get(f"/console/profile-searches/{search.pk}/panel/").content.decode()
    assert "hx-trigger" not in page and page.count("<tr") == 1 + 2 and 'class="recommended"' in page
    assert "(3.50×)" in page and 'id="profile-search-apply"' in page
    watcher = Client()
    watcher.force_login(auditor)
    assert 'id="profile-search-apply"' not in watcher.get(f"/console/profile-searches/{search.pk}/").content.decode()
    assert watcher.post(f"/console/profile-searches/{search.pk}/apply/").status_code == 403

    applied = console.post(f"/console/profile-searches/{search.pk}/apply/")
    assert applied.status_code == 302 and Model.objects.get(name="digits").serving_profile["max_batch_size"] == 8
    assert 'id="applied"' in console.get(f"/console/profile-searches/{search.pk}/").content.decode()
    assert f"/console/profile-searches/{search.pk}/" in console.get("/console/models/digits/").content.decode()


def test_a_search_sweeps_what_finished_searches_of_this_appliance_left_behind(
    version: ModelVersion, cpu_node: Node, settings: Any, tmp_path: Any,
) -> None:  # fmt: skip
    """A worker killed mid-search leaves its scratch directory; the next search's task removes
    it once the row is no longer running, and leaves directories it knows nothing of."""
    from appliance.optimisation import tasks

    settings.VAR_DIR = tmp_path
    search = services.profile_search_create(version=version, node=cpu_node, objective_p99_ms=10)
    services.profile_search_claim(search_id=search.pk, measured_on="h")
    root = profiles.scratch_root()
    for name in (str(search.pk), "not-a-search"):
        (root / name).mkdir(parents=True)
    tasks._sweep()
    assert profiles.scratch_ids() == sorted([str(search.pk), "not-a-search"]), "running: kept"
    services.profile_search_fail(search_id=search.pk, error="worker died")
    tasks._sweep()
    assert profiles.scratch_ids() == ["not-a-search"]
