"""Enrolment of a new server (the provisioning playbook's side of it runs in
tests/provisioning): one-time, expiring join tokens made by staff; a node enrols once with
one, with its zone, site and compliance tags, and gets a credential of its own; a wrong,
used, expired or revoked token is refused saying which; a re-run makes no second node; a
revoked credential cuts the node off from routing, placement and its own agent."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from appliance.audit.models import AuditEvent
from appliance.core.errors import DomainError
from appliance.nodes import services
from appliance.nodes.choices import AdminState, Health
from appliance.nodes.models import JoinToken, Node
from appliance.nodes.selectors import routable_nodes
from tests.conftest import assert_audited
from tests.factories import make_version, python_artifact

pytestmark = pytest.mark.django_db

MACHINE = "0123456789abcdef0123456789abcdef"


def _token(api: APIClient, **body: Any) -> dict[str, Any]:
    response = api.post("/api/v1/join-tokens/", {"note": "rack 4, slot 2", **body}, format="json")
    assert response.status_code == 201, response.content
    return dict(response.json())


def _enrol(token: str, name: str = "gpu-07", **extra: Any) -> Any:
    body = {"token": token, "name": name, "zone": "eu-fra", "site": "fra-1", "compliance_tags": ["pci-dss", "hipaa"],
            "machine_id": MACHINE, **extra}  # fmt: skip
    return APIClient().post("/api/v1/enrol/", body, format="json")


def test_a_join_token_is_shown_once_and_stored_hashed(api: APIClient, operator: Any) -> None:
    made = _token(api, ttl_s=600)
    assert made["token"].startswith(made["prefix"] + "_") and made["state"] == "unused"
    assert made["created_by"] == operator.username
    row = JoinToken.objects.get(pk=made["id"])
    assert made["token"] not in {row.token_hash, row.prefix} and len(row.token_hash) == 64
    assert 590 <= (row.expires_at - timezone.now()).total_seconds() <= 600
    listed = api.get("/api/v1/join-tokens/").json()["results"]
    assert [t["prefix"] for t in listed] == [made["prefix"]] and "token" not in listed[0]
    event = assert_audited("join_token.create", target_id=made["id"], actor=f"user:{operator.username}")
    assert made["token"] not in str(event.changes) and event.changes["token_hash"] == [None, "[redacted]"]


def test_a_token_s_life_is_bounded(api: APIClient) -> None:
    for ttl in (10, 30 * 24 * 3600):
        response = api.post("/api/v1/join-tokens/", {"ttl_s": ttl}, format="json")
        assert response.status_code == 400 and "ttl_s" in response.json()
    assert not JoinToken.objects.exists()


def test_a_server_enrols_once_with_its_zone_site_and_tags(api: APIClient) -> None:
    made = _token(api)
    response = _enrol(made["token"])
    assert response.status_code == 201, response.content
    body = response.json()
    node = Node.objects.get(name="gpu-07")
    assert (node.zone, node.site, node.compliance_tags, node.machine_id) == ("eu-fra", "fra-1", ["hipaa", "pci-dss"], MACHINE)
    assert body["credential"].startswith("nc_") and body["node"]["enrolled"] is True
    assert node.credential_hash and body["credential"] not in node.credential_hash
    token = api.get(f"/api/v1/join-tokens/{made['id']}/").json()
    assert token["state"] == "used" and token["used_by"] == "gpu-07"
    created = assert_audited("node.create", target_id=str(node.pk), actor="enrolment:gpu-07", origin="api")
    assert created.changes["credential_hash"] == [None, "[redacted]"]
    # The node reads itself with its own credential; nothing else does.
    me = APIClient().get("/api/v1/node-self/", HTTP_AUTHORIZATION=f"Bearer {body['credential']}")
    assert me.status_code == 200 and me.json()["zone"] == "eu-fra" and me.json()["mig_layouts"] == {}
    assert APIClient().get("/api/v1/node-self/", HTTP_AUTHORIZATION=f"Bearer {made['token']}").status_code == 401
    assert APIClient().get("/api/v1/node-self/").status_code == 401


def test_wrong_used_expired_and_revoked_tokens_are_refused_saying_which(api: APIClient) -> None:
    used = _token(api)
    assert _enrol(used["token"]).status_code == 201
    again = _enrol(used["token"], name="gpu-08")
    assert again.status_code == 403
    assert again.json()["detail"].startswith(f"join token {used['prefix']}… was already used at ")
    assert "(by node gpu-07)" in again.json()["detail"]
    wrong = _enrol(used["token"][:-4] + "AAAA", name="gpu-08")
    assert wrong.status_code == 401 and wrong.json()["detail"] == "the join token is not valid (ask an operator for a new one)"
    stale = _token(api)
    JoinToken.objects.filter(pk=stale["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = _enrol(stale["token"], name="gpu-08")
    assert expired.status_code == 403 and " expired at " in expired.json()["detail"]
    withdrawn = _token(api)
    assert api.post(f"/api/v1/join-tokens/{withdrawn['id']}/revoke/").json()["state"] == "revoked"
    revoked = _enrol(withdrawn["token"], name="gpu-08")
    assert revoked.status_code == 403 and " was revoked at " in revoked.json()["detail"]
    # Nothing was created by the refusals, and a used token cannot be withdrawn after the fact.
    assert list(Node.objects.values_list("name", flat=True)) == ["gpu-07"]
    assert api.post(f"/api/v1/join-tokens/{used['id']}/revoke/").status_code == 409
    malformed = APIClient().post("/api/v1/enrol/", {"token": "x", "name": "Not A Slug!"}, format="json")
    assert malformed.status_code == 400 and "name" in malformed.json()


def test_a_second_enrolment_under_the_same_name_makes_no_second_node(api: APIClient) -> None:
    assert _enrol(_token(api)["token"]).status_code == 201
    second = _token(api)
    clash = _enrol(second["token"])
    assert clash.status_code == 409 and "already enrolled" in clash.json()["detail"]
    assert Node.objects.filter(name="gpu-07").count() == 1
    assert api.get(f"/api/v1/join-tokens/{second['id']}/").json()["state"] == "unused"  # the refusal spent nothing


def test_an_enrolled_node_s_agent_must_present_its_credential(api: APIClient) -> None:
    credential = _enrol(_token(api)["token"]).json()["credential"]
    endpoints = {"zone": "eu-fra", "grpc_address": "10.0.0.7:8201", "http_address": "10.0.0.7:8200",
                 "metrics_address": "10.0.0.7:8202"}  # fmt: skip
    with pytest.raises(services.EnrolmentRefused, match="must present the node's credential"):
        services.node_register(name="gpu-07", **endpoints)
    other = _enrol(_token(api)["token"], name="gpu-08").json()["credential"]
    with pytest.raises(services.EnrolmentRefused, match="not node gpu-07's"):
        services.node_register(name="gpu-07", credential=other, **endpoints)
    node = services.node_register(name="gpu-07", credential=credential, **endpoints)
    assert node.grpc_address == "10.0.0.7:8201" and node.zone == "eu-fra"


def test_a_revoked_node_is_cut_off_until_it_enrols_again(api: APIClient, operator: Any) -> None:
    credential = _enrol(_token(api)["token"]).json()["credential"]
    node = Node.objects.get(name="gpu-07")
    Node.objects.filter(pk=node.pk).update(health=Health.HEALTHY, last_heartbeat=timezone.now())
    assert services.node_heartbeat(node_id=node.pk, triton_ready=True) is True
    assert routable_nodes().filter(pk=node.pk).exists()
    revoked = api.post("/api/v1/nodes/gpu-07/revoke-credential/")
    assert revoked.status_code == 200 and revoked.json()["admin_state"] == "revoked"
    assert revoked.json()["credential_revoked"] is not None
    assert_audited("node.update", target_id=str(node.pk), actor=f"user:{operator.username}")
    # The gateway's next snapshot and every placement leave it out; its agent learns at its next beat.
    assert not routable_nodes().filter(pk=node.pk).exists()
    assert services.node_heartbeat(node_id=node.pk, triton_ready=True) is False
    me = APIClient().get("/api/v1/node-self/", HTTP_AUTHORIZATION=f"Bearer {credential}")
    assert me.status_code == 401 and "credential was revoked at" in me.json()["detail"]
    deploy = api.post("/api/v1/deployments/", {"version": str(make_version().pk), "nodes": ["gpu-07"]}, format="json")
    assert deploy.status_code == 400 and "gpu-07 is revoked" in deploy.json()["detail"]
    assert api.post("/api/v1/nodes/gpu-07/undrain/").status_code == 409  # not by a click: by a new enrolment
    with pytest.raises(DomainError):
        services.node_register(name="gpu-07", zone="eu-fra", grpc_address="", http_address="", metrics_address="",
                               credential=credential)  # fmt: skip
    # A new token re-admits the same server as the same node, with a new credential.
    again = _enrol(_token(api)["token"])
    assert again.status_code == 201 and again.json()["credential"] != credential
    node.refresh_from_db()
    assert node.admin_state == AdminState.ACTIVE and node.credential_revoked is None
    assert Node.objects.filter(name="gpu-07").count() == 1


def test_a_node_that_never_enrolled_holds_no_credential_to_revoke(api: APIClient) -> None:
    api.post("/api/v1/nodes/", {"name": "legacy"}, format="json")
    refused = api.post("/api/v1/nodes/legacy/revoke-credential/")
    assert refused.status_code == 400 and "holds no credential" in refused.json()["detail"]
    assert not AuditEvent.objects.filter(action="node.update", target_repr="legacy").exists()


def test_only_staff_make_join_tokens(auditor: Any) -> None:
    from tests.conftest import client_for

    refused = client_for(auditor).post("/api/v1/join-tokens/", {}, format="json")
    assert refused.status_code == 403 and not JoinToken.objects.exists()


def test_the_console_makes_a_token_once_and_revokes_a_node(operator: Any) -> None:
    from django.test import Client

    browser = Client()
    browser.force_login(operator)
    page = browser.post("/console/join-tokens/new/", {"note": "gpu-07 in rack 4", "ttl_s": "900"})
    assert page.status_code == 200
    token = JoinToken.objects.get()
    plaintext = page.content.decode().split('<code id="new-token">')[1].split("</code>")[0]
    assert plaintext.startswith(token.prefix) and token.note == "gpu-07 in rack 4"
    assert plaintext not in browser.get("/console/join-tokens/").content.decode()  # listed, never shown again
    bad = browser.post("/console/join-tokens/new/", {"ttl_s": "5"})
    assert bad.status_code == 400 and JoinToken.objects.count() == 1
    assert _enrol(plaintext).status_code == 201
    assert "Enrolled" in browser.get("/console/nodes/gpu-07/").content.decode()
    browser.post("/console/nodes/gpu-07/revoke-credential/")
    assert Node.objects.get(name="gpu-07").admin_state == AdminState.REVOKED


def test_a_node_fetches_only_the_artifacts_placed_on_it(api: APIClient, django_capture_on_commit_callbacks: Any) -> None:
    from appliance.catalog.artifacts import artifact_path
    from appliance.rollouts import services as rollouts

    credential = _enrol(_token(api)["token"]).json()["credential"]
    node = Node.objects.get(name="gpu-07")
    placed = make_version("digits")
    elsewhere = make_version("other", artifact=python_artifact("class TritonPythonModel:\n    other = 1\n"))
    with django_capture_on_commit_callbacks(execute=False):
        deployment = rollouts.deployment_create(version=placed, nodes=[node])
    door = APIClient()
    pending = door.get(f"/api/v1/node-artifacts/{placed.artifact_sha256}/", HTTP_AUTHORIZATION=f"Bearer {credential}")
    assert pending.status_code == 404  # not before the node's agent has taken the replica on (claimed it)
    rollouts.replica_claim(replica_id=deployment.replicas.get().pk)
    answer = door.get(f"/api/v1/node-artifacts/{placed.artifact_sha256}/", HTTP_AUTHORIZATION=f"Bearer {credential}")
    assert answer.status_code == 200
    assert b"".join(answer.streaming_content) == artifact_path(placed.artifact_sha256).read_bytes()
    other = door.get(f"/api/v1/node-artifacts/{elsewhere.artifact_sha256}/", HTTP_AUTHORIZATION=f"Bearer {credential}")
    assert other.status_code == 404
    assert door.get(f"/api/v1/node-artifacts/{placed.artifact_sha256}/").status_code == 401
