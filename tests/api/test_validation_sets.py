"""Validation sets of a model (catalog.services.validation_set_upload) through the REST API
and the console: stored content-addressed like artifacts, parsed by the optimisation
app's parser, whose messages reach the operator unchanged (400), and checked against the
signature of the model's newest version."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from appliance.catalog.artifacts import artifact_path
from appliance.catalog.models import GateResult, ValidationSet
from appliance.catalog.selectors import gate_status
from appliance.catalog.services import gate_record
from appliance.core.errors import DomainError
from appliance.optimisation.validation_data import ValidationSetError, parse_validation_set
from tests.conftest import assert_audited, client_for
from tests.factories import make_gate_result, make_validation_set, make_version, validation_npz

pytestmark = pytest.mark.django_db


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _upload(api: APIClient, content: bytes, **fields: Any) -> Any:
    body = {"model": "digits", "name": "holdout", "metric": "top1_accuracy", "content": SimpleUploadedFile("v.npz", content)}
    return api.post("/api/v1/validation-sets/", body | fields, format="multipart")


def test_an_upload_is_stored_content_addressed_and_listed(api: APIClient) -> None:
    make_version("digits")
    content = validation_npz(rows=30)
    created = _upload(api, content, max_relative_drop="0.02")
    assert created.status_code == 201, created.content
    body = created.json()
    assert {k: body[k] for k in ("model", "name", "metric", "max_relative_drop", "rows", "content_size")} == {
        "model": "digits", "name": "holdout", "metric": "top1_accuracy", "max_relative_drop": 0.02, "rows": 30,
        "content_size": len(content),
    }  # fmt: skip
    stored = artifact_path(body["content_sha256"])
    assert stored.read_bytes() == content, "the file is in the artifact store, named by its sha256"
    again = _upload(api, content, name="holdout-copy")
    assert again.status_code == 201 and again.json()["content_sha256"] == body["content_sha256"], "the same bytes, once"
    assert_audited("validation_set.create", target_id=body["id"], actor="user:olivia", origin="api")

    make_version("other")
    _upload(api, content, model="other")
    listed = api.get("/api/v1/validation-sets/?model=digits").json()
    assert [(s["model"], s["name"]) for s in listed["results"]] == [("digits", "holdout"), ("digits", "holdout-copy")]
    assert api.get(f"/api/v1/validation-sets/{body['id']}/").json()["rows"] == 30
    assert api.get("/api/v1/validation-sets/").json()["count"] == 3


def test_a_model_without_a_version_takes_any_well_formed_set(api: APIClient) -> None:
    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    response = _upload(api, _npz(**{"input.TEXT": np.zeros((4, 7), np.int64), "expected.EMBEDDING": np.ones((4, 8), np.float32)}),
                       metric="embedding_agreement")  # fmt: skip
    assert response.status_code == 201, response.content
    assert response.json()["rows"] == 4


BAD_FILES = [
    ("not a zip", b"label,image\n1,0 0 0\n", "it is not a zip file"),
    ("a single .npy", b"\x93NUMPY\x01\x00" + b"x" * 100, "is a single .npy array"),
    ("no expected array", _npz(**{"input.IMAGE": np.zeros((5, 64), np.float32)}), "no expected.<tensor> array"),
    ("rows differ", _npz(**{"input.IMAGE": np.zeros((5, 64), np.float32), "expected.LABEL": np.zeros(4, np.int64)}),
     "row counts differ"),
    ("float labels", _npz(**{"input.IMAGE": np.zeros((5, 64), np.float32), "expected.LABEL": np.zeros(5, np.float32)}),
     "must hold integer class labels"),
    ("object array", _npz(**{"input.IMAGE": np.array([{"a": 1}] * 5, dtype=object),
                             "expected.LABEL": np.zeros(5, np.int64)}), "holds Python objects"),
    ("negative labels", _npz(**{"input.IMAGE": np.zeros((5, 64), np.float32), "expected.LABEL": -np.ones(5, np.int64)}),
     "negative class labels"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "words"), [(c, w) for _, c, w in BAD_FILES], ids=[i for i, _, _ in BAD_FILES])
def test_each_bad_file_is_refused_with_the_parsers_message(api: APIClient, content: bytes, words: str) -> None:
    make_version("digits")
    with pytest.raises(ValidationSetError) as parsed:
        parse_validation_set(content, metric="top1_accuracy")
    response = _upload(api, content)
    assert response.status_code == 400
    assert response.json() == {"detail": str(parsed.value)} and words in str(parsed.value)
    assert not ValidationSet.objects.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (validation_npz(image_dims=32), "input.IMAGE has shape (20, 32): after the rows the model takes dims [64] (-1 is any size)"),
        (validation_npz(dtype="float64"), "input.IMAGE is float64 but the model's input is FP32: save it with .astype(np.float32)"),
        (_npz(**{"input.PIXELS": np.zeros((3, 64), np.float32), "expected.LABEL": np.zeros(3, np.int64)}),
         "the model's input(s) IMAGE have no array: add input.IMAGE"),
        (_npz(**{"input.IMAGE": np.zeros((3, 64), np.float32), "expected.CLASS": np.zeros(3, np.int64)}),
         "expected.CLASS names no output of the model (its outputs: LABEL, PROBABILITIES)"),
    ],
    ids=["dims", "dtype", "input name", "output name"],
)  # fmt: skip
def test_a_file_that_does_not_fit_the_newest_versions_signature_is_refused(api: APIClient, content: bytes, message: str) -> None:
    make_version("digits")
    response = _upload(api, content)
    assert response.status_code == 400
    assert response.json() == {"detail": message}


def test_fields_are_checked_and_a_name_is_unique_per_model(api: APIClient) -> None:
    make_version("digits")
    for fields, field in [({"name": "Not A Slug"}, "name"), ({"metric": "bleu"}, "metric"),
                          ({"max_relative_drop": "1"}, "max_relative_drop"), ({"max_relative_drop": "-0.1"}, "max_relative_drop"),
                          ({"model": "nope"}, "model")]:  # fmt: skip
        response = _upload(api, validation_npz(), **fields)
        assert response.status_code == 400 and field in response.json(), (fields, response.content)
    empty = api.post("/api/v1/validation-sets/", {"model": "digits", "name": "x", "metric": "top1_accuracy",
                                                  "content": SimpleUploadedFile("v.npz", b"")}, format="multipart")  # fmt: skip
    assert empty.status_code == 400 and "content" in empty.json()
    assert _upload(api, validation_npz()).status_code == 201
    duplicate = _upload(api, validation_npz(rows=7))
    assert duplicate.status_code == 409
    assert duplicate.json() == {"detail": "model 'digits' already has a validation set named 'holdout'"}
    make_version("other")
    assert _upload(api, validation_npz(), model="other").status_code == 201, "the same name on another model"


def test_deleting_a_set_is_an_admins_and_takes_its_results(api: APIClient, admin_api: APIClient, auditor: Any) -> None:
    parent = make_version("digits")
    child = make_version("digits", parent=parent, change_kind="quantisation")
    holdout = make_validation_set("digits")
    make_gate_result(child, holdout, measured=0.5)
    assert client_for(auditor).post("/api/v1/validation-sets/", {}, format="multipart").status_code == 403
    refused = api.delete(f"/api/v1/validation-sets/{holdout.pk}/")
    assert refused.status_code == 403 and "administrators" in refused.json()["detail"]
    assert admin_api.delete(f"/api/v1/validation-sets/{holdout.pk}/").status_code == 204
    assert not ValidationSet.objects.exists() and not GateResult.objects.exists()
    assert_audited("validation_set.delete", target_id=str(holdout.pk), actor="user:ada")
    assert_audited("gate_result.delete", actor="user:ada")


def test_gate_record_keeps_the_verdict_consistent_with_its_checks() -> None:
    parent = make_version("digits")
    child = make_version("digits", parent=parent, change_kind="quantisation")
    holdout = make_validation_set("digits")
    check = {"name": "top1_accuracy", "measured": 0.9, "baseline": 0.97, "threshold": 0.96, "passed": False}
    common = {"version": child, "validation_set": holdout, "values": {}, "baseline_values": {}, "measured_on": "node-a (CPU)"}
    with pytest.raises(DomainError, match="a passed gate needs at least one check, and every check passed"):
        gate_record(passed=True, checks=[check], **common)
    with pytest.raises(DomainError, match="a failed gate needs a failed check"):
        gate_record(passed=False, checks=[check | {"passed": True}], **common)
    with pytest.raises(DomainError, match="lacks threshold"):
        gate_record(passed=False, checks=[{k: v for k, v in check.items() if k != "threshold"}], **common)
    with pytest.raises(DomainError, match="belongs to model 'digits', not to other:1"):
        gate_record(passed=False, checks=[check], **common | {"version": make_version("other")})
    nothing_measured = gate_record(passed=False, checks=[], **common)
    assert_audited("gate_result.create", target_id=str(nothing_measured.pk))


def test_gate_status_is_the_latest_result_of_each_set() -> None:
    parent = make_version("digits")
    child = make_version("digits", parent=parent, change_kind="quantisation")
    holdout, faces = make_validation_set("digits", "holdout"), make_validation_set("digits", "faces")
    make_gate_result(child, holdout, measured=0.5)
    latest = make_gate_result(child, holdout, measured=0.97)
    make_gate_result(parent, faces, measured=0.97)  # another version's run
    assert gate_status(child) == [(faces, None), (holdout, latest)]
    assert latest.passed and gate_status(make_version("other")) == []


# --- the console ----------------------------------------------------------------------


def test_the_model_page_lists_the_sets_and_the_gate_and_uploads_one(operator: Any, tenant_admin: Any) -> None:
    parent = make_version("digits")
    child = make_version("digits", parent=parent, change_kind="quantisation")
    holdout = make_validation_set("digits", max_relative_drop=0.02)
    make_gate_result(child, holdout, measured=0.90)
    console = Client()
    console.force_login(operator)
    page = console.get("/console/models/digits/?version=2").content.decode()
    assert 'id="validation-sets"' in page and "holdout" in page and "0.02" in page
    assert "failed on 1 of 1" in page and "reference (not gated)" in page
    assert "top1_accuracy: 0.9 / 0.9506 (0.97)" in page and "node-a (CPU, onnxruntime 1.22.1)" in page
    added = console.post("/console/models/digits/validation-sets/", {"name": "faces", "metric": "top1_accuracy",
                         "max_relative_drop": "0.01", "content": SimpleUploadedFile("v.npz", validation_npz())})  # fmt: skip
    assert added.status_code == 302 and added.url == "/console/models/digits/"
    assert ValidationSet.objects.filter(model__name="digits", name="faces").exists()
    assert_audited("validation_set.create", actor="user:olivia", origin="web")
    page = console.get("/console/models/digits/?version=2").content.decode()
    assert "never run on this version" in page and "failed on 1, not run on 1 of 2" in page
    bad = console.post("/console/models/digits/validation-sets/", {"name": "bad", "metric": "top1_accuracy",
                       "content": SimpleUploadedFile("v.npz", validation_npz(image_dims=32))})  # fmt: skip
    assert bad.status_code == 400
    assert bad.content.decode() == "input.IMAGE has shape (20, 32): after the rows the model takes dims [64] (-1 is any size)"
    tanya = Client()
    tanya.force_login(tenant_admin)
    from appliance.accounts.models import ModelGrant

    ModelGrant.objects.create(tenant=tenant_admin.appliance_role.tenant, model=parent.model)
    theirs = tanya.get("/console/models/digits/").content.decode()
    assert "Model digits" in theirs and "validation-sets" not in theirs, "the gate is the operators'"
