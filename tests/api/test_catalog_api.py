from __future__ import annotations

import hashlib
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from appliance.audit.models import AuditEvent
from appliance.catalog.models import ModelVersion
from tests.conftest import assert_audited
from tests.factories import manifest, python_artifact

pytestmark = pytest.mark.django_db


def _upload(api: APIClient, data: bytes, **fields: object) -> object:
    spec = manifest("digits")
    body = {
        "model": "digits",
        "format": "python",
        "signature": json.dumps(spec["signature"]),
        "max_batch_size": spec["max_batch_size"],
        "artifact": SimpleUploadedFile("digits.tar.gz", data),
    }
    body.update(fields)
    return api.post("/api/v1/versions/", body, format="multipart")


def test_model_create_update_and_audit(api: APIClient) -> None:
    response = api.post("/api/v1/models/", {"name": "digits", "description": "classifier"}, format="json")
    assert response.status_code == 201
    assert_audited("model.create", target_id=response.json()["id"], actor="user:olivia")
    assert api.patch("/api/v1/models/digits/", {"description": "v2"}, format="json").json()["description"] == "v2"
    assert assert_audited("model.update").changes == {"description": ["classifier", "v2"]}


def test_version_upload_stores_the_artifact_by_sha256(api: APIClient) -> None:
    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    data = python_artifact()
    response = _upload(api, data, change_note="first")
    assert response.status_code == 201, response.json()
    version = response.json()
    assert version["number"] == 1
    assert version["artifact_sha256"] == hashlib.sha256(data).hexdigest()
    assert version["artifact_size"] == len(data)
    assert_audited("model_version.create", target_id=version["id"])
    unexplained = _upload(api, data, parent=version["id"], change_note="re-export")
    assert unexplained.status_code == 400
    assert "say what changed" in str(unexplained.json())
    second = _upload(api, data, parent=version["id"], change_kind="re_export", change_note="re-export")
    assert (second.json()["number"], second.json()["parent"], second.json()["change_kind"]) == (2, version["id"], "re_export")
    listed = api.get("/api/v1/versions/?model=digits").json()["results"]
    assert [v["number"] for v in listed] == [1, 2]


def test_generated_config_is_served(api: APIClient) -> None:
    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    version = _upload(api, python_artifact()).json()
    text = api.get(f"/api/v1/versions/{version['id']}/config/").content.decode()
    assert 'name: "digits"' in text and 'backend: "python"' in text and "max_batch_size: 64" in text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"signature": "{not json"}, "not valid JSON"),
        ({"signature": json.dumps({"inputs": [], "outputs": []})}, "signature.inputs"),
        ({"format": "pytorch"}, "not a valid choice"),
        ({"artifact": SimpleUploadedFile("x.tar.gz", b"not a tarball")}, "not a readable tar archive"),
        ({"decoupled": True}, "max_batch_size 0"),
    ],
)
def test_bad_uploads_are_refused_with_the_reason_and_write_nothing(api: APIClient, fields: dict, message: str) -> None:
    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    before = AuditEvent.objects.count()
    response = _upload(api, python_artifact(), **fields)
    assert response.status_code == 400
    assert message in json.dumps(response.json())
    assert ModelVersion.objects.count() == 0
    assert AuditEvent.objects.count() == before


def test_python_artifact_without_model_py_is_refused(api: APIClient) -> None:
    from triton_models.packaging import pack_files

    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    response = _upload(api, pack_files({"other.py": b""}))
    assert response.status_code == 400
    assert "model.py" in response.json()["detail"]


def test_model_with_versions_cannot_be_deleted(api: APIClient) -> None:
    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    _upload(api, python_artifact())
    response = api.delete("/api/v1/models/digits/")
    assert response.status_code == 409


def test_serving_profile_is_validated_and_shapes_the_generated_config(api: APIClient) -> None:
    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    version = _upload(api, python_artifact()).json()
    bad = api.patch("/api/v1/models/digits/", {"serving_profile": {"instance_group": {"count": 0}}}, format="json")
    assert bad.status_code == 400 and "count" in str(bad.json())
    too_big = api.patch("/api/v1/models/digits/", {"serving_profile": {"max_batch_size": 1000}}, format="json")
    assert too_big.status_code == 400 and "exceeds what version 1 supports (64)" in str(too_big.json())
    profile = {"max_batch_size": 32, "dynamic_batching": {"max_queue_delay_us": 250}, "instance_group": {"count": 2}}
    ok = api.patch("/api/v1/models/digits/", {"serving_profile": profile, "idle_unload_s": 600}, format="json")
    assert ok.status_code == 200, ok.json()
    assert ok.json()["serving_profile"]["instance_group"]["count"] == 2 and ok.json()["idle_unload_s"] == 600
    assert_audited("model.update")
    text = api.get(f"/api/v1/versions/{version['id']}/config/").content.decode()
    assert "max_batch_size: 32" in text and "max_queue_delay_microseconds: 250" in text and "count: 2" in text


def test_tensorrt_plans_record_where_they_run(api: APIClient) -> None:
    api.post("/api/v1/models/", {"name": "engine"}, format="json")
    missing = _upload(api, b"plan-bytes", model="engine", format="tensorrt_plan")
    assert missing.status_code == 400 and "records gpu_arch and tensorrt_version" in str(missing.json())
    plan = _upload(api, b"plan-bytes", model="engine", format="tensorrt_plan", gpu_arch="9.0", tensorrt_version="10.5.0")
    assert plan.status_code == 201, plan.json()
    assert (plan.json()["gpu_arch"], plan.json()["tensorrt_version"]) == ("9.0", "10.5.0")
    stray = _upload(api, python_artifact(), model="engine", gpu_arch="9.0")
    assert stray.status_code == 400 and "tensorrt_plan versions only" in str(stray.json())
