from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.accounts.models import ApiKey
from appliance.accounts.secrets import hash_secret
from appliance.audit.models import AuditEvent
from tests.conftest import assert_audited

pytestmark = pytest.mark.django_db


def test_tenant_create_update(api: APIClient) -> None:
    created = api.post("/api/v1/tenants/", {"slug": "acme", "name": "Acme"}, format="json")
    assert created.status_code == 201
    assert_audited("tenant.create", target_id=created.json()["id"], actor="user:olivia", origin="api")
    assert api.patch("/api/v1/tenants/acme/", {"name": "Acme Corp"}, format="json").json()["name"] == "Acme Corp"
    assert_audited("tenant.update", target_id=created.json()["id"])


def test_api_key_is_shown_once_and_stored_hashed(api: APIClient, acme: Any) -> None:
    response = api.post("/api/v1/api-keys/", {"tenant": "acme", "name": "batch"}, format="json")
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    key = body["key"]
    row = ApiKey.objects.get(pk=body["id"])
    assert row.key_hash == hash_secret(key)
    assert key not in str(ApiKey.objects.filter(pk=row.pk).values().get())
    assert body["prefix"] == row.prefix and key.startswith(row.prefix)
    detail = api.get(f"/api/v1/api-keys/{row.pk}/").json()
    assert "key" not in detail
    event = assert_audited("api_key.create", target_id=row.pk)
    assert event.changes["key_hash"] == [None, "[redacted]"]
    assert key not in str(event.changes)


def test_api_key_revoke(api: APIClient, acme: Any) -> None:
    key_id = api.post("/api/v1/api-keys/", {"tenant": "acme", "name": "k"}, format="json").json()["id"]
    response = api.post(f"/api/v1/api-keys/{key_id}/revoke/")
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert "revoked_at" in assert_audited("api_key.update", target_id=key_id).changes


def test_api_key_expiry_must_be_in_the_future(api: APIClient, acme: Any) -> None:
    response = api.post(
        "/api/v1/api-keys/", {"tenant": "acme", "name": "k", "expires_at": "2001-01-01T00:00:00Z"}, format="json"
    )
    assert response.status_code == 400
    assert "future" in response.json()["detail"]
    assert not ApiKey.objects.exists()


def test_grants(api: APIClient, acme: Any) -> None:
    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    created = api.post("/api/v1/grants/", {"tenant": "acme", "model": "digits"}, format="json")
    assert created.status_code == 201
    assert_audited("model_grant.create", target_id=created.json()["id"])
    unknown = api.post("/api/v1/grants/", {"tenant": "acme", "model": "nope"}, format="json")
    assert unknown.status_code == 400
    assert api.delete(f"/api/v1/grants/{created.json()['id']}/").status_code == 204
    assert_audited("model_grant.delete", target_id=created.json()["id"])


def test_audit_trail_is_read_only_and_filterable(api: APIClient, acme: Any) -> None:
    api.post("/api/v1/tenants/", {"slug": "globex", "name": "Globex"}, format="json")
    events = api.get("/api/v1/audit-events/?action=tenant.create&actor=user:olivia").json()["results"]
    assert [e["target_repr"] for e in events] == ["globex"]
    event_id = events[0]["id"]
    assert api.delete(f"/api/v1/audit-events/{event_id}/").status_code == 405
    assert api.post("/api/v1/audit-events/", {}, format="json").status_code == 405
    assert api.get("/api/v1/audit-events/?since=yesterday").status_code == 400
    assert AuditEvent.objects.filter(pk=event_id).exists()


def test_tenant_with_keys_cannot_be_deleted_but_an_empty_one_can(api: APIClient, acme: Any, globex: Any) -> None:
    api.post("/api/v1/api-keys/", {"tenant": "acme", "name": "k"}, format="json")
    refused = api.delete("/api/v1/tenants/acme/")
    assert refused.status_code == 409
    assert "still has API keys" in refused.json()["detail"]
    assert api.delete("/api/v1/tenants/globex/").status_code == 204
    assert_audited("tenant.delete", target_id=globex.pk)


def test_audit_export_over_the_api(api: APIClient, acme: Any) -> None:
    response = api.get("/api/v1/audit-events/export/?format=csv&action=tenant.create")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    body = b"".join(response.streaming_content).decode()
    assert body.splitlines()[0].startswith("sequence,") and "acme" in body
    jsonl = api.get("/api/v1/audit-events/export/")
    assert jsonl["Content-Type"] == "application/x-ndjson"
    assert api.get("/api/v1/audit-events/export/?format=xml").status_code == 400
