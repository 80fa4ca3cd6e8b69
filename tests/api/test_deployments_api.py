from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.rollouts.models import Deployment
from tests.conftest import assert_audited
from tests.factories import make_node, make_version

pytestmark = pytest.mark.django_db


def test_create_deployment_records_replicas_and_enqueues_after_commit(
    api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    version = make_version()
    make_node("node-a")
    make_node("node-b")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["node-b", "node-a"]}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["state"] == "pending" and body["model"] == "digits" and body["version_number"] == 1
    assert [r["node"] for r in body["replicas"]] == ["node-a", "node-b"]
    assert len(callbacks) == 1
    assert_audited("deployment.create", target_id=body["id"], actor="user:olivia", origin="api")
    assert_audited("replica.create")


def test_deployment_refuses_unknown_nodes_and_busy_models(api: APIClient, django_capture_on_commit_callbacks: Any) -> None:
    version = make_version()
    make_node("node-a")
    unknown = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["ghost"]}, format="json")
    assert unknown.status_code == 400
    assert "ghost" in str(unknown.json())
    with django_capture_on_commit_callbacks(execute=False):
        api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["node-a"]}, format="json")
    busy = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["node-a"]}, format="json")
    assert busy.status_code == 409
    assert "already in progress" in busy.json()["detail"]
    assert Deployment.objects.count() == 1
    assert api.get("/api/v1/deployments/?model=digits").json()["count"] == 1
