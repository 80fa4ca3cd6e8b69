"""The accuracy gate holds rollouts back (rollouts.services.deployment_create): a version
with a parent, of a model with validation sets, is deployed only once its latest gate
result on every set passed; otherwise 409 with the numbers, in the REST API and the
console alike. An admin may override with a reason, which is audited; no one else may."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils.html import escape
from rest_framework.test import APIClient

from appliance.audit.models import AuditEvent
from appliance.catalog.models import ModelVersion
from appliance.rollouts import services as rollouts
from appliance.rollouts.models import Deployment
from tests.conftest import assert_audited
from tests.factories import make_gate_result, make_node, make_validation_set, make_version

pytestmark = pytest.mark.django_db

WHERE = "validation set 'holdout' (top1_accuracy, at most 1 % below the parent)"
ON = "on node-a (CPU, onnxruntime 1.22.1)"
ADMIN_MAY = "An admin may deploy it anyway with a gate override reason (gate_override_reason)."


@pytest.fixture
def lineage() -> tuple[ModelVersion, ModelVersion]:
    """digits:1, the reference, and digits:2 quantised from it; one validation set; node-a."""
    parent = make_version("digits")
    child = make_version("digits", parent=parent, change_kind="quantisation")
    make_validation_set("digits", "holdout", max_relative_drop=0.01)
    make_node("node-a")
    return parent, child


def _deploy(api: APIClient, version: ModelVersion, **fields: Any) -> Any:
    return api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["node-a"]} | fields, format="json")


def test_a_failed_gate_refuses_the_deployment_with_the_numbers(api: APIClient, lineage: Any) -> None:
    _, child = lineage
    make_gate_result(child, child.model.validation_sets.get(), measured=0.9, baseline=0.97)
    response = _deploy(api, child)
    assert response.status_code == 409
    assert response.json() == {"detail": f"digits:2 has not passed the accuracy gate: {WHERE}: top1_accuracy measured "
                               f"0.9 < threshold 0.9603 (parent 0.97; {ON}). {ADMIN_MAY}"}  # fmt: skip
    assert not Deployment.objects.exists()


def test_a_gate_never_run_refuses_the_deployment(api: APIClient, lineage: Any) -> None:
    _, child = lineage
    make_validation_set("digits", "faces", metric="top1_accuracy", max_relative_drop=0.05)
    make_gate_result(child, child.model.validation_sets.get(name="holdout"), measured=0.97)
    response = _deploy(api, child)
    assert response.status_code == 409
    assert response.json() == {"detail": "digits:2 has not passed the accuracy gate: validation set 'faces' "
                               "(top1_accuracy, at most 5 % below the parent): the gate was never run on this version. "
                               f"{ADMIN_MAY}"}  # fmt: skip


def test_a_passed_gate_allows_it_and_only_the_latest_result_counts(api: APIClient, lineage: Any) -> None:
    _, child = lineage
    holdout = child.model.validation_sets.get()
    make_gate_result(child, holdout, measured=0.97)
    make_gate_result(child, holdout, measured=0.5)
    assert _deploy(api, child).status_code == 409, "passed once, then failed: the latest run decides"
    make_gate_result(child, holdout, measured=0.965)  # above 0.9603
    response = _deploy(api, child)
    assert response.status_code == 202, response.content
    assert response.json()["version_number"] == 2


def test_a_version_without_a_parent_is_not_gated(api: APIClient, lineage: Any) -> None:
    parent, _ = lineage
    assert _deploy(api, parent).status_code == 202, "the reference the others are measured against"
    assert rollouts.accuracy_gate_failures(parent) == []


def test_a_version_that_has_served_is_not_gated_again(api: APIClient, lineage: Any) -> None:
    """A rollback to it, or more replicas of it, must not wait for a gate a newer set added."""
    _, child = lineage
    make_gate_result(child, child.model.validation_sets.get(), measured=0.97)
    deployment = Deployment.objects.get(pk=_deploy(api, child).json()["id"])
    Deployment.objects.filter(pk=deployment.pk).update(state="superseded")
    make_validation_set("digits", "faces")
    assert rollouts.accuracy_gate_failures(child) == []
    assert _deploy(api, child).status_code == 202


def test_a_model_without_validation_sets_is_not_gated(api: APIClient) -> None:
    parent = make_version("digits")
    child = make_version("digits", parent=parent, change_kind="new_weights")
    make_node("node-a")
    assert _deploy(api, child).status_code == 202


def test_an_admin_overrides_the_gate_with_a_reason_and_it_is_audited(admin_api: APIClient, lineage: Any) -> None:
    _, child = lineage
    make_gate_result(child, child.model.validation_sets.get(), measured=0.9)
    response = _deploy(admin_api, child, gate_override_reason="  INC-4411: the old version leaks memory; 0.6 % worse is fine  ")
    assert response.status_code == 202, response.content
    event = assert_audited("deployment.gate_override", target_id=str(child.pk), actor="user:ada", origin="api")
    assert event.target_repr == "digits:2"
    assert event.changes == {
        "version": "digits:2", "deployment": response.json()["id"],
        "failing": [f"{WHERE}: top1_accuracy measured 0.9 < threshold 0.9603 (parent 0.97; {ON})"],
        "reason": "INC-4411: the old version leaks memory; 0.6 % worse is fine",
    }  # fmt: skip


def test_an_override_where_the_gate_passes_records_nothing(admin_api: APIClient, lineage: Any) -> None:
    _, child = lineage
    make_gate_result(child, child.model.validation_sets.get(), measured=0.97)
    assert _deploy(admin_api, child, gate_override_reason="just in case").status_code == 202
    assert not AuditEvent.objects.filter(action="deployment.gate_override").exists()


def test_only_an_admin_may_override(api: APIClient, admin_api: APIClient, lineage: Any) -> None:
    parent, child = lineage
    make_gate_result(child, child.model.validation_sets.get(), measured=0.9)
    refused = _deploy(api, child, gate_override_reason="I am sure")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "Only administrators may override this (deployment)."}
    assert _deploy(api, parent, gate_override_reason="x").status_code == 403, "asked for, whatever the gate says"
    assert not Deployment.objects.exists()
    blank = _deploy(admin_api, child, gate_override_reason="   ")
    assert blank.status_code == 400 and "gate_override_reason" in blank.json()
    assert not AuditEvent.objects.filter(action="deployment.gate_override").exists()


# --- the console ----------------------------------------------------------------------


def _console(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_console_shows_the_same_refusal_and_takes_an_admins_override(operator: Any, admin: Any, lineage: Any) -> None:
    _, child = lineage
    make_gate_result(child, child.model.validation_sets.get(), measured=0.9)
    text = (f"digits:2 has not passed the accuracy gate: {WHERE}: top1_accuracy measured 0.9 < threshold 0.9603 "
            f"(parent 0.97; {ON}). {ADMIN_MAY}")  # fmt: skip
    olivia, ada = _console(operator), _console(admin)
    form = olivia.get("/console/models/digits/versions/2/rollout/").content.decode()
    assert escape(text) in form and 'name="gate_override_reason"' not in form, "only an admin sees the override"
    assert 'name="gate_override_reason"' in ada.get("/console/models/digits/versions/2/rollout/").content.decode()
    start = "/console/models/digits/versions/2/rollout/start/"
    refused = olivia.post(start, {"strategy": "all_at_once", "target": "nodes", "nodes": ["node-a"]})
    assert refused.status_code == 409
    assert refused.content.decode() == text
    assert olivia.post(start, {"strategy": "all_at_once", "target": "nodes", "nodes": ["node-a"],
                               "gate_override_reason": "sure"}).status_code == 403  # fmt: skip
    assert not Deployment.objects.exists()
    done = ada.post(start, {"strategy": "all_at_once", "target": "nodes", "nodes": ["node-a"],
                            "gate_override_reason": "INC-4411"})  # fmt: skip
    assert done.status_code == 302
    event = assert_audited("deployment.gate_override", target_id=str(child.pk), actor="user:ada", origin="web")
    assert event.changes["reason"] == "INC-4411"
