"""Roles shape every endpoint: auditors read everything and change nothing;
tenant admins see and manage only their own tenant; residency policy is for admins.
test_access_matrix.py checks every route against the matrix; these are the stories."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.accounts.models import ApiKey
from appliance.urls import router
from tests.api.test_every_mutation_is_audited import mutating_endpoints
from tests.conftest import client_for
from tests.factories import make_version

pytestmark = pytest.mark.django_db

LISTS = [prefix for prefix, _, _ in router.registry]


@pytest.mark.parametrize("prefix", LISTS)
def test_auditor_reads_every_list(auditor: Any, prefix: str) -> None:
    assert client_for(auditor).get(f"/api/v1/{prefix}/").status_code == 200


@pytest.mark.parametrize("endpoint", sorted(mutating_endpoints()), ids=lambda e: f"{e[0]}.{e[1]}")
def test_auditor_is_refused_every_mutation(auditor: Any, endpoint: tuple[str, str]) -> None:
    prefix, action = endpoint
    client = client_for(auditor)
    detail = f"/api/v1/{prefix}/00000000-0000-0000-0000-000000000000/"
    response = {
        "create": lambda: client.post(f"/api/v1/{prefix}/", {}, format="json"),
        "partial_update": lambda: client.patch(detail, {}, format="json"),
        "destroy": lambda: client.delete(detail),
    }.get(action, lambda: client.post(f"{detail}{action.replace('_', '-')}/", {}, format="json"))()
    assert response.status_code == 403, (endpoint, response.status_code)
    assert "Auditors" in response.json()["detail"]


def test_auditor_may_dry_run_a_policy(auditor: Any) -> None:
    assert client_for(auditor).post("/api/v1/policy-rules/dry-run/", {}, format="json").status_code == 200


def test_only_admins_change_the_residency_policy(api: APIClient, admin_api: APIClient) -> None:
    rule = {"position": 1, "name": "r", "effect": "deny"}
    refused = api.post("/api/v1/policy-rules/", rule, format="json")
    assert refused.status_code == 403 and "administrators" in refused.json()["detail"]
    assert admin_api.post("/api/v1/policy-rules/", rule, format="json").status_code == 201


def test_tenant_admin_sees_and_manages_only_their_tenant(tenant_admin: Any, acme: Any, globex: Any, api: APIClient) -> None:
    make_version("digits")
    make_version("secret-model")
    api.post("/api/v1/grants/", {"tenant": "acme", "model": "digits"}, format="json")
    api.post("/api/v1/grants/", {"tenant": "globex", "model": "secret-model"}, format="json")
    other_key = api.post("/api/v1/api-keys/", {"tenant": "globex", "name": "theirs"}, format="json").json()

    tanya = client_for(tenant_admin)
    assert [t["slug"] for t in tanya.get("/api/v1/tenants/").json()["results"]] == ["acme"]
    assert tanya.get("/api/v1/tenants/globex/").status_code == 404
    assert [m["name"] for m in tanya.get("/api/v1/models/").json()["results"]] == ["digits"]
    assert [g["tenant"] for g in tanya.get("/api/v1/grants/").json()["results"]] == ["acme"]

    mine = tanya.post("/api/v1/api-keys/", {"tenant": "acme", "name": "mine"}, format="json")
    assert mine.status_code == 201
    theirs = tanya.post("/api/v1/api-keys/", {"tenant": "globex", "name": "sneaky"}, format="json")
    assert theirs.status_code == 403
    assert not ApiKey.objects.filter(name="sneaky").exists()
    assert [k["name"] for k in tanya.get("/api/v1/api-keys/").json()["results"]] == ["mine"]
    assert tanya.post(f"/api/v1/api-keys/{other_key['id']}/revoke/").status_code == 404
    assert tanya.post(f"/api/v1/api-keys/{mine.json()['id']}/revoke/").status_code == 200

    for path in ("nodes", "audit-events", "policy-rules", "mig-devices", "reconfigurations"):
        assert tanya.get(f"/api/v1/{path}/").status_code == 403, path
    assert tanya.post("/api/v1/grants/", {"tenant": "acme", "model": "secret-model"}, format="json").status_code == 403


def test_tenant_admin_reads_the_versions_and_deployments_of_granted_models_only(
    tenant_admin: Any, acme: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from appliance.accounts.services import grant_create
    from appliance.rollouts.services import deployment_create
    from tests.factories import make_node

    node = make_node()
    mine, theirs = make_version("digits"), make_version("secret-model")
    grant_create(tenant=acme, model=mine.model)
    with django_capture_on_commit_callbacks(execute=False):
        mine_d = deployment_create(version=mine, nodes=[node])
        theirs_d = deployment_create(version=theirs, nodes=[node])

    tanya = client_for(tenant_admin)
    assert [v["id"] for v in tanya.get("/api/v1/versions/").json()["results"]] == [str(mine.pk)]
    assert tanya.get("/api/v1/versions/?model=secret-model").json()["results"] == []
    assert tanya.get(f"/api/v1/versions/{theirs.pk}/").status_code == 404
    assert tanya.get(f"/api/v1/versions/{mine.pk}/config/").status_code == 200
    assert [d["id"] for d in tanya.get("/api/v1/deployments/").json()["results"]] == [str(mine_d.pk)]
    assert tanya.get(f"/api/v1/deployments/{mine_d.pk}/").status_code == 200
    assert tanya.get(f"/api/v1/deployments/{theirs_d.pk}/").status_code == 404
    # Reading is all: steering a rollout or uploading stays the operators'.
    refused = tanya.post(f"/api/v1/deployments/{mine_d.pk}/pause/")
    assert refused.status_code == 403 and "operators" in refused.json()["detail"]
    assert tanya.post("/api/v1/versions/", {"model": "digits"}, format="json").status_code == 403


def test_api_key_scoped_to_granted_models_only(api: APIClient, acme: Any) -> None:
    make_version("digits")
    make_version("other")
    api.post("/api/v1/grants/", {"tenant": "acme", "model": "digits"}, format="json")
    ok = api.post("/api/v1/api-keys/", {"tenant": "acme", "name": "k", "models": ["digits"]}, format="json")
    assert ok.status_code == 201 and ok.json()["models"] == ["digits"]
    bad = api.post("/api/v1/api-keys/", {"tenant": "acme", "name": "k2", "models": ["other"]}, format="json")
    assert bad.status_code == 400 and "not granted other" in bad.json()["detail"]
    assert not ApiKey.objects.filter(name="k2").exists()


def test_key_scope_is_the_services_rule_for_every_caller(acme: Any, globex: Any) -> None:
    """A command or a task calling the service directly is held to the same rule as the API."""
    from appliance.accounts.services import api_key_create, api_key_rotate, grant_create, grant_delete
    from appliance.core.errors import DomainError

    digits, secret = make_version("digits").model, make_version("secret-model").model
    grant = grant_create(tenant=acme, model=digits)
    grant_create(tenant=globex, model=secret)
    with pytest.raises(DomainError, match="tenant 'acme' is not granted secret-model"):
        api_key_create(tenant=acme, name="sneaky", models=[digits, secret])
    assert not ApiKey.objects.filter(name="sneaky").exists()
    key, _ = api_key_create(tenant=acme, name="ok", models=[digits])
    # Rotation carries the scope over, so it is held to it too: a grant taken away since is refused,
    # rather than widening the key (an empty scope means every granted model).
    grant_delete(grant=grant)
    with pytest.raises(DomainError, match="not granted digits"):
        api_key_rotate(key=key, overlap_s=60)
    assert ApiKey.objects.filter(name="ok").count() == 1


def test_rotation_keeps_the_old_key_for_the_overlap_only(api: APIClient, acme: Any) -> None:
    from django.utils import timezone

    old = api.post("/api/v1/api-keys/", {"tenant": "acme", "name": "svc"}, format="json").json()
    rotated = api.post(f"/api/v1/api-keys/{old['id']}/rotate/", {"overlap_s": 600}, format="json")
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["key"] != old["key"] and new["name"] == "svc" and new["expires_at"] is None
    old_row = ApiKey.objects.get(pk=old["id"])
    assert old_row.is_active
    remaining = (old_row.expires_at - timezone.now()).total_seconds()
    assert 590 < remaining <= 600
    assert api.post(f"/api/v1/api-keys/{old['id']}/revoke/").status_code == 200
    assert api.post(f"/api/v1/api-keys/{old['id']}/rotate/", {}, format="json").status_code == 400
