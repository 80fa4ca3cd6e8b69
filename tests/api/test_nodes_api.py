from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from appliance.audit.models import AuditEvent
from tests.conftest import assert_audited

pytestmark = pytest.mark.django_db


def test_register_list_update_delete_node(api: APIClient) -> None:
    created = api.post("/api/v1/nodes/", {"name": "gpu-01", "zone": "eu-west"}, format="json")
    assert created.status_code == 201, created.json()
    node = created.json()
    assert (node["name"], node["zone"], node["state"]) == ("gpu-01", "eu-west", "unknown")
    event = assert_audited("node.create", target_id=node["id"], actor="user:olivia", origin="api")
    assert event.changes["zone"] == [None, "eu-west"]

    assert [n["name"] for n in api.get("/api/v1/nodes/").json()["results"]] == ["gpu-01"]
    updated = api.patch("/api/v1/nodes/gpu-01/", {"zone": "eu-central"}, format="json")
    assert updated.json()["zone"] == "eu-central"
    assert assert_audited("node.update", target_id=node["id"]).changes == {"zone": ["eu-west", "eu-central"]}

    assert api.delete("/api/v1/nodes/gpu-01/").status_code == 204
    assert_audited("node.delete", target_id=node["id"])
    assert api.get("/api/v1/nodes/gpu-01/").status_code == 404


def test_bad_node_names_are_refused_and_nothing_is_written(api: APIClient) -> None:
    before = AuditEvent.objects.count()
    response = api.post("/api/v1/nodes/", {"name": "Bad Name!"}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()
    assert AuditEvent.objects.count() == before


def test_duplicate_node_is_a_clear_error(api: APIClient) -> None:
    api.post("/api/v1/nodes/", {"name": "gpu-01"}, format="json")
    response = api.post("/api/v1/nodes/", {"name": "gpu-01"}, format="json")
    assert response.status_code == 400
    assert "already exists" in str(response.json())


def test_drain_maintenance_undrain_are_audited_and_shown(api: APIClient) -> None:
    node_id = api.post("/api/v1/nodes/", {"name": "gpu-01"}, format="json").json()["id"]
    drained = api.post("/api/v1/nodes/gpu-01/drain/").json()
    assert (drained["admin_state"], drained["state"]) == ("draining", "draining")
    assert assert_audited("node.update", target_id=node_id).changes == {"admin_state": ["active", "draining"]}
    assert api.post("/api/v1/nodes/gpu-01/maintenance/").json()["state"] == "maintenance"
    assert api.post("/api/v1/nodes/gpu-01/undrain/").json()["state"] == "unknown", "health decides once active"


def test_health_history_is_kept(api: APIClient) -> None:
    from appliance.nodes.services import node_set_health

    node_id = api.post("/api/v1/nodes/", {"name": "gpu-01"}, format="json").json()["id"]
    assert node_set_health(node_id=node_id, health="healthy", reasons=[])
    assert not node_set_health(node_id=node_id, health="healthy", reasons=[])
    assert node_set_health(node_id=node_id, health="unhealthy", reasons=["GPU 0: XID 79"])
    history = api.get("/api/v1/nodes/gpu-01/health-history/").json()
    assert history["count"] == 2, "a page, like every list"
    assert [(h["previous"], h["health"], h["reasons"]) for h in history["results"]] == [
        ("healthy", "unhealthy", ["GPU 0: XID 79"]),
        ("unknown", "healthy", []),
    ]
    assert api.get("/api/v1/nodes/gpu-01/").json()["health_reasons"] == ["GPU 0: XID 79"]
