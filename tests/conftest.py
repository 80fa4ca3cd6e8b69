"""Shared fixtures: named personas, an authenticated REST client, audit assertions.

The suite runs against the real PostgreSQL and RabbitMQ; tests/environment.py
gives each run its own queue namespace and var/ directory.
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.audit.models import AuditEvent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # End-to-end tests commit data to the test database; run them after the rest.
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed end-to-end test carries the tails of its fleet's logs (agents, Tritons,
    worker, gateway), so that a failure in CI, where the logs are gone, explains itself."""
    outcome = yield
    report = outcome.get_result()
    fleet = getattr(item, "funcargs", {}).get("fleet")
    if report.failed and call.when == "call" and hasattr(fleet, "log_tails"):
        report.sections.append(("fleet logs", fleet.log_tails()))


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment: None, django_db_blocker: Any) -> Any:
    """Always create the test database: the end-to-end tests use it from module
    fixtures, which pytest-django's own detection (by markers) does not see."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        teardown_databases(config, verbosity=0)


@pytest.fixture(scope="module")
def db_unblocked(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """Database access for a whole module of end-to-end tests, whose processes need
    committed rows (no per-test transaction to roll back)."""
    with django_db_blocker.unblock():
        yield


def _account(django_user_model: Any, username: str, role: str | None, tenant: Any = None) -> Any:
    from appliance.accounts.models import AccountRole

    user = django_user_model.objects.create_user(username, password=f"{username}-pass-1234")
    if role is not None:
        AccountRole.objects.create(user=user, role=role, tenant=tenant)
    return user


@pytest.fixture
def admin(django_user_model: Any) -> Any:
    """Ada, an administrator."""
    return _account(django_user_model, "ada", "admin")


@pytest.fixture
def operator(django_user_model: Any) -> Any:
    """Olivia, a platform operator."""
    return _account(django_user_model, "olivia", "operator")


@pytest.fixture
def auditor(django_user_model: Any) -> Any:
    """Audrey, an auditor: reads everything, changes nothing."""
    return _account(django_user_model, "audrey", "auditor")


@pytest.fixture
def tenant_admin(django_user_model: Any, acme: Any) -> Any:
    """Tanya, the administrator of tenant acme."""
    return _account(django_user_model, "tanya", "tenant_admin", acme)


@pytest.fixture
def outsider(django_user_model: Any) -> Any:
    """Oscar, a logged-in account with no appliance role."""
    return _account(django_user_model, "oscar", None)


def client_for(user: Any) -> APIClient:
    from appliance.accounts.services import operator_token_create

    _, token = operator_token_create(user=user, name="tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def api(operator: Any) -> APIClient:
    return client_for(operator)


@pytest.fixture
def admin_api(admin: Any) -> APIClient:
    return client_for(admin)


@pytest.fixture
def acme(db: None) -> Any:
    """Tenant one: the risk-analytics team."""
    from appliance.accounts.services import tenant_create

    return tenant_create(slug="acme", name="Acme risk analytics")


@pytest.fixture
def globex(db: None) -> Any:
    """Tenant two: the radiology team."""
    from appliance.accounts.services import tenant_create

    return tenant_create(slug="globex", name="Globex radiology")


def assert_audited(action: str, *, target_id: str | None = None, actor: str | None = None, origin: str | None = None) -> AuditEvent:
    """The newest audit event for action (and target) exists and names the actor."""
    qs = AuditEvent.objects.filter(action=action)
    if target_id is not None:
        qs = qs.filter(target_id=str(target_id))
    event = qs.order_by("-time").first()
    assert event is not None, f"no audit event {action} for {target_id}; have {[e.action for e in AuditEvent.objects.all()]}"
    if actor is not None:
        assert event.actor == actor
    if origin is not None:
        assert event.origin == origin
    assert event.correlation_id
    return event
