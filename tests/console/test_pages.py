"""The console's pages and roles, through Django's test client (the browser test is test_browser.py)."""

from __future__ import annotations

import html
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
    listed = client.get("/console/nodes/").content.decode()
    assert '>gpu-01</a>' in listed and "<td>1</td>" in listed, "the node with its GPU count"
    node_page = client.get("/console/nodes/gpu-01/").content.decode()
    assert "3g.40gb · acme" in node_page and "left: 0.0%; width: 50.0%" in node_page, (
        "slices drawn by position, by tenant"
    )
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


# --- The pages of the second round: MIG editor, models and upload, rollout start, tenants and keys,
# --- policy dry run, metrics, audit filters/export/verification.


def test_every_new_page_renders_for_an_operator(operator: Any, world: dict[str, Any]) -> None:
    client = _client(operator)
    paths = ("/console/models/", "/console/models/digits/", "/console/models/digits/?version=1",
             "/console/models/digits/versions/1/rollout/", "/console/tenants/", "/console/tenants/acme/",
             "/console/policies/", "/console/metrics/", "/console/metrics/?model=digits&window=7d",
             "/console/metrics/?tenant=acme&window=1h", "/console/nodes/gpu-01/gpus/0/layout/",
             "/console/nodes/?health=healthy&zone=default&q=gpu", f"/console/deployments/{world['mine'].pk}/panel/",
             "/console/audit/?target=digits&since=2020-01-01T00:00")  # fmt: skip
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
    model_page = client.get("/console/models/digits/").content.decode()
    assert "max_batch_size: 64" in model_page, "the generated config.pbtxt is shown"
    assert "&quot;name&quot;: &quot;IMAGE&quot;" in model_page, "the signature is shown (escaped)"
    metrics_page = client.get("/console/metrics/?model=digits").content.decode()
    assert 'id="traffic-series"' in metrics_page and 'data-fields="p50,p95,p99"' in metrics_page
    assert 'data-fields="output_tokens_s"' in metrics_page and 'data-fields="decode_tokens_s"' in metrics_page


def test_an_impossible_audit_time_is_a_400_with_the_reason(operator: Any, world: dict[str, Any]) -> None:
    """The console reads the filter times as the REST API does (audit.selectors.moment)."""
    client = _client(operator)
    for path in ("/console/audit/?since=2020-13-01T00:00", "/console/audit/export.csv?until=9999-12-31T23:59:59-23:59"):
        response = client.get(path)
        assert response.status_code == 400, (path, response.status_code)
        assert "is not an ISO 8601 date-time" in response.content.decode()


def test_mig_preview_shows_the_planners_placement_or_its_reason(operator: Any, world: dict[str, Any]) -> None:
    client = _client(operator)
    ok = client.get("/console/nodes/gpu-01/gpus/0/layout/preview/", {"profile": ["3g.40gb", "2g.20gb", "1g.10gb"]})
    assert "3g.40gb@0, 2g.20gb@4, 1g.10gb@6" in ok.content.decode()
    refused = client.get("/console/nodes/gpu-01/gpus/0/layout/preview/", {"profile": ["4g.40gb", "4g.40gb"]})
    assert "Refused:" in refused.content.decode() and "4g.40gb" in refused.content.decode()


def test_operator_applies_a_mig_layout_audited(
    operator: Any, world: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    from appliance.nodes.models import Reconfiguration

    client = _client(operator)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/console/nodes/gpu-01/gpus/0/layout/apply/", {"profile": ["3g.40gb", "2g.20gb", "1g.10gb"]},
                               HTTP_HX_REQUEST="true")  # fmt: skip
    run = Reconfiguration.objects.get()
    assert response.status_code == 200 and response.headers["HX-Redirect"] == f"/console/reconfigurations/{run.pk}/"
    assert_audited("reconfiguration.create", target_id=run.pk, origin="web")
    panel = client.get(f"/console/reconfigurations/{run.pk}/panel/").content.decode()
    assert "preflight" in panel and 'hx-trigger="every 1s"' in panel, "a pending run keeps refreshing"
    refused = client.post("/console/nodes/gpu-01/gpus/0/layout/apply/", {"profile": ["7g.80gb"]})
    assert refused.status_code == 409 and "already pending or running" in refused.content.decode()


def test_upload_creates_the_model_and_version_or_leaves_nothing(operator: Any, world: dict[str, Any]) -> None:
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile

    from appliance.catalog.models import Model
    from tests.factories import manifest, python_artifact

    client = _client(operator)
    body = {"model": "fresh", "format": "python", "signature": json.dumps(manifest("digits")["signature"]),
            "max_batch_size": "8", "artifact": SimpleUploadedFile("m.tar.gz", python_artifact())}  # fmt: skip
    ok = client.post("/console/models/upload/", body, HTTP_X_REQUESTED_WITH="XMLHttpRequest")
    assert ok.status_code == 201 and ok.json() == {"redirect": "/console/models/fresh/?version=1"}, ok.content
    assert_audited("model_version.create", origin="web")
    bad = dict(
        body, model="never-made", signature="{not json", artifact=SimpleUploadedFile("m.tar.gz", python_artifact())
    )
    refused = client.post("/console/models/upload/", bad, HTTP_X_REQUESTED_WITH="XMLHttpRequest")
    assert refused.status_code == 400 and "signature" in refused.json()["error"]
    assert not Model.objects.filter(name="never-made").exists(), "a refused upload leaves no model behind"


def test_operator_starts_a_rollout_from_the_console(
    operator: Any, world: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    from tests.factories import make_version

    version = make_version("rollme")
    client = _client(operator)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(f"/console/models/rollme/versions/{version.number}/rollout/start/",
                               {"strategy": "canary", "steps": "20, 100", "step_seconds": "5", "target": "nodes",
                                "nodes": ["gpu-01"]})  # fmt: skip
    created = Deployment.objects.filter(version=version).get()
    assert response.status_code == 302 and response.url == f"/console/deployments/{created.pk}/"
    assert (created.strategy, created.steps, created.step_seconds) == ("canary", [20, 100], 5)
    bad = client.post(f"/console/models/rollme/versions/{version.number}/rollout/start/",
                      {"strategy": "canary", "steps": "ten", "target": "nodes", "nodes": ["gpu-01"]})  # fmt: skip
    assert bad.status_code == 400 and "whole numbers" in bad.content.decode()
    busy = client.post("/console/models/digits/versions/1/rollout/start/", {"strategy": "all_at_once", "target": "nodes", "nodes": ["gpu-01"]})
    assert busy.status_code == 409 and "digits" in busy.content.decode(), "one rollout per model at a time"


def test_a_new_key_is_shown_once_with_a_snippet_and_works_only_by_hash(
    operator: Any, world: dict[str, Any], acme: Any
) -> None:
    from appliance.accounts.models import ApiKey
    from appliance.accounts.secrets import hash_secret

    client = _client(operator)
    page = client.post("/console/tenants/acme/keys/", {"name": "batch-job", "models": ["digits"], "expires_days": "30"})
    text = html.unescape(page.content.decode())
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    plaintext = text.split('<code id="new-key">')[1].split("</code>")[0]
    key = ApiKey.objects.get(name="batch-job")
    assert key.key_hash == hash_secret(plaintext) and plaintext not in str(ApiKey.objects.values())
    assert f"Bearer {plaintext}" in text and 'client.infer("digits"' in text and 'data-copy="#new-key"' in text
    assert plaintext not in client.get("/console/tenants/acme/").content.decode(), "never shown again"
    outside = client.post("/console/tenants/acme/keys/", {"name": "x", "models": ["secret-model"]})
    assert outside.status_code == 400 and "not granted secret-model" in outside.content.decode()
    rotated = client.post(f"/console/tenants/acme/keys/{key.pk}/rotate/", {"overlap_s": "60"})
    assert rotated.status_code == 200 and "rotated" in rotated.content.decode()
    assert client.post(f"/console/tenants/acme/keys/{key.pk}/revoke/").status_code == 302
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert_audited("api_key.update", target_id=key.pk, origin="web")


def test_policy_dry_run_shows_the_impact_and_only_an_admin_saves(
    admin: Any, operator: Any, world: dict[str, Any], acme: Any
) -> None:
    from appliance.accounts.services import tenant_update
    from appliance.policies.models import PolicyRule
    from appliance.rollouts.choices import ReplicaState
    from appliance.rollouts.models import Replica

    tenant_update(tenant=acme, classification="confidential")
    PolicyRule.objects.create(position=10, name="conf-ok", effect="allow", classifications=["confidential"])
    Replica.objects.filter(deployment=world["mine"]).update(state=ReplicaState.LIVE)
    Deployment.objects.filter(pk=world["mine"].pk).update(state=DeploymentState.LIVE)
    rule = PolicyRule.objects.get()
    client = _client(operator)
    deny = {"position": "5", "name": "no-default-zone", "effect": "deny", "zones": "default", "enabled": "on"}
    impact = client.post("/console/policies/dry-run/", deny).content.decode()
    assert "gpu-01" in impact and "acme loses digits" in impact
    deleting = client.post("/console/policies/dry-run/", {"id": rule.pk, "position": "10", "name": "conf-ok",
                                                          "effect": "allow", "delete": "1"}).content.decode()  # fmt: skip
    assert "acme loses digits" in deleting, "without the rule, confidential data falls to the default deny"
    assert client.post("/console/policies/save/", deny).status_code == 403
    assert not PolicyRule.objects.filter(name="no-default-zone").exists()
    assert _client(admin).post("/console/policies/save/", deny).status_code == 302
    assert_audited("policy_rule.create", origin="web")


def test_audit_export_and_verification(operator: Any, world: dict[str, Any]) -> None:
    client = _client(operator)
    export = client.get("/console/audit/export.csv", {"action": "deployment.create"})
    rows = b"".join(export.streaming_content).decode().splitlines()
    assert (
        rows[0].startswith("sequence,id,time,actor")
        and len(rows) == 3
        and all("deployment.create" in r for r in rows[1:])
    )
    verdict = client.get("/console/audit/verify/").content.decode()
    assert "audit trail intact" in verdict


def test_auditor_is_refused_every_new_mutation(auditor: Any, world: dict[str, Any]) -> None:
    from appliance.accounts.models import ApiKey, Tenant
    from appliance.nodes.models import Reconfiguration
    from appliance.policies.models import PolicyRule

    client = _client(auditor)
    for path, body in (
        ("/console/nodes/gpu-01/drain/", {}),
        ("/console/nodes/gpu-01/gpus/0/layout/apply/", {"profile": ["7g.80gb"]}),
        ("/console/models/upload/", {"model": "x"}),
        ("/console/models/digits/versions/1/rollout/start/", {"strategy": "all_at_once"}),
        ("/console/tenants/create/", {"slug": "x"}),
        ("/console/tenants/acme/keys/", {"name": "x"}),
        ("/console/policies/save/", {"position": "1", "name": "x", "effect": "deny"}),
    ):
        assert client.post(path, body).status_code == 403, path
    assert not Reconfiguration.objects.exists() and not ApiKey.objects.exists() and not PolicyRule.objects.exists()
    assert not Tenant.objects.filter(slug="x").exists()
    editor = client.get("/console/nodes/gpu-01/gpus/0/layout/").content.decode()
    assert ">Apply</button>" not in editor, "no apply button for an auditor"
    # The dry run changes nothing: an auditor may run it.
    assert (
        client.post("/console/policies/dry-run/", {"position": "1", "name": "x", "effect": "deny"}).status_code == 200
    )


def test_tenant_admin_manages_own_keys_and_sees_no_other_tenant(
    tenant_admin: Any, world: dict[str, Any], globex: Any
) -> None:
    client = _client(tenant_admin)
    assert client.get("/console/tenants/").url == "/console/tenants/acme/"
    assert client.get("/console/tenants/globex/").status_code == 404, "another tenant's rows are not found, as in the API"
    assert client.post("/console/tenants/globex/keys/", {"name": "x"}).status_code == 404
    assert client.post("/console/tenants/acme/keys/", {"name": "mine"}).status_code == 200
    assert client.get("/console/policies/").status_code == 403
    assert client.get("/console/metrics/?tenant=globex").status_code == 404
    assert client.get("/console/metrics/?model=secret-model").status_code == 404
    # The tenant's traffic, not the fleet: no GPU charts, no node names (the role matrix), even
    # where the tenant's model runs.
    world["mine"].replicas.update(state="live")
    own = client.get("/console/metrics/?model=digits").content.decode()
    assert "GPU utilisation" not in own and "gpu-01" not in own and "Requests/s" in own
    assert "secret-model" not in client.get("/console/models/").content.decode()
    assert client.get("/console/models/secret-model/").status_code == 404
    assert client.post("/console/tenants/acme/update/", {"daily_quota": "1"}).status_code == 403


def test_operator_drains_a_node_and_creates_a_tenant_audited(operator: Any, world: dict[str, Any]) -> None:
    from appliance.accounts.models import Tenant
    from appliance.nodes.models import Node

    client = _client(operator)
    assert client.post("/console/nodes/gpu-01/drain/").status_code == 302
    assert Node.objects.get(name="gpu-01").admin_state == "draining"
    assert_audited("node.update", target_id=world["node"].pk, origin="web")
    page = client.get("/console/nodes/gpu-01/").content.decode()
    assert "Return to service" in page and 'hx-confirm="Return gpu-01 to service?"' in page
    assert client.post("/console/nodes/gpu-01/undrain/").status_code == 302
    assert Node.objects.get(name="gpu-01").admin_state == "active"
    created = client.post("/console/tenants/create/", {"slug": "initech", "name": "Initech", "classification": "confidential",
                                                       "priority_class": "batch", "daily_quota": "500"})  # fmt: skip
    assert created.status_code == 302 and created.url == "/console/tenants/initech/"
    tenant = Tenant.objects.get(slug="initech")
    assert (tenant.classification, tenant.priority_class, tenant.daily_quota) == ("confidential", "batch", 500)
    bad = client.post("/console/tenants/create/", {"slug": "Not A Slug", "name": "x"})
    assert bad.status_code == 400 and "slug" in bad.content.decode()
    assert not Tenant.objects.filter(name="x").exists()
