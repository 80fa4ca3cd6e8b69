"""One upload service (catalog.services.version_upload) behind the REST API and the
console: all or nothing for the rows, whichever face calls it."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from appliance.catalog.artifacts import ArtifactError
from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.services import version_upload
from tests.factories import make_version, manifest, python_artifact

pytestmark = pytest.mark.django_db


def test_a_refused_upload_of_a_new_model_leaves_no_model_behind() -> None:
    other = make_version("digits")
    with pytest.raises(ArtifactError, match="parent version belongs to another model"):
        version_upload(model="brand-new", fmt="python", artifact=io.BytesIO(python_artifact()),
                       signature=manifest("digits")["signature"], parent=other, change_kind="new_weights")  # fmt: skip
    assert not Model.objects.filter(name="brand-new").exists(), "the model created on the way is rolled back"
    created = version_upload(model="brand-new", fmt="python", artifact=io.BytesIO(python_artifact()),
                             signature=manifest("digits")["signature"])  # fmt: skip
    assert (created.model.name, created.number) == ("brand-new", 1)


def test_the_api_and_the_console_upload_through_the_same_service(operator: Any, api: Any) -> None:
    make_version("digits")
    body = {"format": "python", "signature": json.dumps(manifest("digits")["signature"]), "max_batch_size": "8"}
    by_api = api.post("/api/v1/versions/", body | {"model": "digits", "artifact": SimpleUploadedFile("m.tar.gz", python_artifact())})
    assert by_api.status_code == 201, by_api.content
    console = Client()
    console.force_login(operator)
    by_console = console.post("/console/models/upload/", body | {"model": "digits",
                              "artifact": SimpleUploadedFile("m.tar.gz", python_artifact())})  # fmt: skip
    assert by_console.status_code == 302 and by_console.url == "/console/models/digits/?version=3"
    rows = ModelVersion.objects.filter(model__name="digits").order_by("number")
    assert [(v.number, v.max_batch_size, v.artifact_sha256) for v in rows][1:] == [
        (2, 8, by_api.json()["artifact_sha256"]), (3, 8, by_api.json()["artifact_sha256"])
    ]
    # The console may name a new model: the service checks the name and creates nothing when it is bad.
    bad = body | {"model": "Not A Name", "artifact": SimpleUploadedFile("m.tar.gz", python_artifact())}
    refused = console.post("/console/models/upload/", bad)
    assert refused.status_code == 400 and "name" in refused.content.decode()
    assert not Model.objects.filter(name="Not A Name").exists()
