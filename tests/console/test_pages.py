"""The console's pages and roles, through Django's test client (the browser test is test_browser.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from appliance.accounts.models import ModelGrant
from appliance.nodes.models import Gpu, MigDevice
from appliance.rollouts import services
from appliance.rollouts.choices import DeploymentState
from appliance.rollouts.models import Deployment
from tests.conftest import assert_audited
from tests.factories import make_node, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(acme: Any, django_capture_on_commit_callbacks: Any) -> dict[str, Any]:
    node = make_node("gpu-01")
    gpu = Gpu.objects.create(node=node, index=0, uuid="GPU-x", product="NVIDIA H100 80GB HBM3", model="H100-80GB",
                             memory_mib=81559, mig_enabled=True)  # fmt: skip
    MigDevice.objects.create(gpu=gpu, uuid="MIG-a", profile="3g.40gb", start=0, size=4, gpu_instance_id=1, tenant=acme)
    MigDevice.objects.create(gpu=gpu, uuid="MIG-b", profile="2g.20gb", start=4, size=2, gpu_instance_id=2)
    granted = make_version("digits")
    other = make_version("secret-model")
    ModelGrant.objects.create(tenant=acme, model=granted.model)
    with django_capture_on_commit_callbacks(execute=False):
        mine = services.deployment_create(version=granted, nodes=[node], strategy="canary")
        theirs = services.deployment_create(version=other, nodes=[node])
    return {"node": node, "mine": mine, "theirs": theirs}


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_is_sent_to_login() -> None:
    response = Client().get("/console/")
    assert response.status_code == 302 and response.url.startswith("/console/login/")


def test_login_form_accepts_an_operator_and_refuses_an_account_without_role(operator: Any, outsider: Any) -> None:
    client = Client()
    ok = client.post("/console/login/", {"username": "olivia", "password": "olivia-pass-1234"})
    assert ok.status_code == 302 and ok.url == "/console/"
    refused = Client().post("/console/login/", {"username": "oscar", "password": "oscar-pass-1234"})
    assert refused.status_code == 200 and "no role in the appliance" in refused.content.decode()


def test_every_page_renders_for_an_operator(operator: Any, world: dict[str, Any]) -> None:
    client = _client(operator)
    for path in ("/console/", "/console/rollouts-panel/", "/console/nodes/", "/console/nodes/gpu-01/",
                 "/console/deployments/", f"/console/deployments/{world['mine'].pk}/", "/console/audit/?actor=user"):  # fmt: skip
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
    node_page = client.get("/console/nodes/gpu-01/").content.decode()
    assert "3g.40gb · acme" in node_page and "left: 0.0%; width: 50.0%" in node_page, "slices drawn by position, by tenant"
    detail = client.get(f"/console/deployments/{world['mine'].pk}/").content.decode()
    assert ">Pause</button>" in detail and ">Abort</button>" in detail


def test_operator_pauses_and_aborts_a_rollout_audited(operator: Any, world: dict[str, Any]) -> None:
    client = _client(operator)
    pk = world["mine"].pk
    assert client.post(f"/console/deployments/{pk}/pause/").status_code == 302
    assert Deployment.objects.get(pk=pk).paused
    assert_audited("deployment.update", target_id=pk)
    assert client.post(f"/console/deployments/{pk}/abort/").status_code == 302
    assert Deployment.objects.get(pk=pk).state == DeploymentState.ROLLED_BACK
    again = client.post(f"/console/deployments/{pk}/abort/")
    assert again.status_code == 409 and "no rollout to roll back" in again.content.decode()


def test_auditor_sees_everything_and_changes_nothing(auditor: Any, world: dict[str, Any]) -> None:
    client = _client(auditor)
    pk = world["mine"].pk
    detail = client.get(f"/console/deployments/{pk}/").content.decode()
    assert "<button" not in detail.split("</header>")[1], "no action button for an auditor"
    assert client.get("/console/audit/").status_code == 200
    assert client.post(f"/console/deployments/{pk}/pause/").status_code == 403
    assert not Deployment.objects.get(pk=pk).paused


def test_tenant_admin_sees_only_their_tenant(tenant_admin: Any, world: dict[str, Any]) -> None:
    client = _client(tenant_admin)
    listing = client.get("/console/deployments/").content.decode()
    assert "digits" in listing and "secret-model" not in listing
    assert client.get(f"/console/deployments/{world['theirs'].pk}/").status_code == 404
    assert client.get("/console/nodes/").status_code == 403
    assert client.get("/console/audit/").status_code == 403
    assert client.post(f"/console/deployments/{world['mine'].pk}/pause/").status_code == 403
