from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.conftest import client_for

pytestmark = pytest.mark.django_db

ENDPOINTS = ["nodes", "models", "versions", "deployments", "tenants", "api-keys", "grants", "audit-events"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_anonymous_callers_are_refused(endpoint: str) -> None:
    response = APIClient().get(f"/api/v1/{endpoint}/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_accounts_that_are_not_operators_are_refused(endpoint: str, outsider: Any) -> None:
    response = client_for(outsider).get(f"/api/v1/{endpoint}/")
    assert response.status_code == 403


def test_unknown_and_expired_tokens_are_refused(operator: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from appliance.accounts.services import operator_token_create

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer op_nothing_here")
    assert client.get("/api/v1/nodes/").json()["detail"] == "Unknown operator token."
    _, token = operator_token_create(user=operator, name="old", expires_at=timezone.now() - timedelta(seconds=1))
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/nodes/").json()["detail"] == "This operator token has expired."


def test_openapi_schema_describes_every_endpoint(api: APIClient) -> None:
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for endpoint in ENDPOINTS:
        assert f"/api/v1/{endpoint}/" in paths


def test_request_id_is_echoed_and_lands_in_the_audit_row(api: APIClient) -> None:
    from appliance.audit.models import AuditEvent

    response = api.post("/api/v1/tenants/", {"slug": "initech", "name": "Initech"}, format="json", HTTP_X_REQUEST_ID="req-42")
    assert response["X-Request-ID"] == "req-42"
    assert AuditEvent.objects.get(action="tenant.create").correlation_id == "req-42"
