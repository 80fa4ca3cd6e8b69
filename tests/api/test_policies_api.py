from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.audit.models import AuditEvent
from appliance.rollouts.models import Deployment
from appliance.rollouts.services import deployment_claim, replica_claim, replica_mark_live
from tests.conftest import assert_audited
from tests.factories import make_node, make_version

pytestmark = pytest.mark.django_db


def test_rules_are_validated(admin_api: APIClient) -> None:
    api = admin_api
    bad = api.post("/api/v1/policy-rules/", {"position": 1, "name": "x", "effect": "maybe",
                                             "classifications": ["secret"]}, format="json")  # fmt: skip
    assert bad.status_code == 400
    assert set(bad.json()) == {"effect", "classifications"}
    ok = api.post("/api/v1/policy-rules/", {"position": 1, "name": "x", "effect": "deny"}, format="json")
    assert ok.status_code == 201
    duplicate = api.post("/api/v1/policy-rules/", {"position": 1, "name": "y", "effect": "deny"}, format="json")
    assert duplicate.status_code == 400 and "position" in duplicate.json()


def test_placement_refuses_a_node_the_policy_forbids_and_audits_the_refusal(
    api: APIClient, admin_api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    version = make_version("digits")
    make_node("dmz-1")
    api.patch("/api/v1/nodes/dmz-1/", {"zone": "dmz"}, format="json")
    api.post("/api/v1/tenants/", {"slug": "vault", "name": "Vault", "classification": "confidential"}, format="json")
    api.post("/api/v1/grants/", {"tenant": "vault", "model": "digits"}, format="json")
    response = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["dmz-1"]}, format="json")
    assert response.status_code == 403
    assert "confidential data of tenant 'vault' is denied on node 'dmz-1'" in response.json()["detail"]
    assert "default" in response.json()["detail"]
    assert not Deployment.objects.exists()
    event = assert_audited("policy.deny", target_id="vault", actor="user:olivia")
    assert event.changes["rule"] == "default"

    admin_api.post("/api/v1/policy-rules/", {"position": 5, "name": "confidential-dmz", "effect": "allow",
                                       "classifications": ["confidential"], "zones": ["dmz"]}, format="json")  # fmt: skip
    with django_capture_on_commit_callbacks(execute=False):
        allowed = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["dmz-1"]}, format="json")
    assert allowed.status_code == 202


def test_dry_run_lists_replicas_that_must_move_and_tenants_losing_service(
    api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    version = make_version("digits")
    make_node("node-a")
    api.post("/api/v1/tenants/", {"slug": "acme", "name": "Acme"}, format="json")
    api.post("/api/v1/grants/", {"tenant": "acme", "model": "digits"}, format="json")
    with django_capture_on_commit_callbacks(execute=False):
        deployment = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["node-a"]}, format="json").json()
    deployment_claim(deployment_id=deployment["id"])
    replica_mark_live(replica=replica_claim(replica_id=deployment["replicas"][0]["id"]))
    before = AuditEvent.objects.count()

    unchanged = api.post("/api/v1/policy-rules/dry-run/", {}, format="json").json()
    assert unchanged == {"replicas_that_must_move": [], "tenants_losing_service": []}

    proposal = {"rules": [{"position": 1, "name": "internal-off-default", "effect": "deny",
                           "classifications": ["internal"], "zones": ["default"]}]}  # fmt: skip
    impact = api.post("/api/v1/policy-rules/dry-run/", proposal, format="json").json()
    assert [(m["tenant"], m["node"], m["rule"]) for m in impact["replicas_that_must_move"]] == [("acme", "node-a", "internal-off-default")]
    assert impact["tenants_losing_service"] == [{"tenant": "acme", "model": "digits"}]

    zone_change = api.post("/api/v1/policy-rules/dry-run/", {"tenants": {"acme": {"allowed_zones": ["eu"]}}}, format="json").json()
    assert zone_change["tenants_losing_service"] == [{"tenant": "acme", "model": "digits"}]
    assert AuditEvent.objects.count() == before, "a dry run changes nothing"
