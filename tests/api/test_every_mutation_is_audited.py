"""Every mutating REST endpoint writes an audit event.

The endpoints are enumerated from the router, so a new mutating endpoint
without a case below fails test_every_mutating_endpoint_has_a_case."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.audit.models import AuditEvent
from appliance.urls import router
from tests.factories import make_node, make_version, python_artifact

pytestmark = pytest.mark.django_db

_STANDARD = ("create", "update", "partial_update", "destroy")
# POST endpoints that change nothing (computations); listed so that adding one is a decision.
READ_ONLY_POSTS = {("policy-rules", "dry_run")}


def mutating_endpoints() -> set[tuple[str, str]]:
    found = set()
    for prefix, viewset, _ in router.registry:
        for name in _STANDARD:
            if hasattr(viewset, name):
                found.add((prefix, name))
        for extra in viewset.get_extra_actions():
            if set(extra.mapping) - {"get", "head", "options"}:
                found.add((prefix, extra.__name__))
    return found - READ_ONLY_POSTS


def _tenant_key(api: APIClient) -> str:
    api.post("/api/v1/tenants/", {"slug": "acme", "name": "Acme"}, format="json")
    return str(api.post("/api/v1/api-keys/", {"tenant": "acme", "name": "k"}, format="json").json()["id"])


def _grant_create(api: APIClient) -> Any:
    make_version("digits")
    api.post("/api/v1/tenants/", {"slug": "acme", "name": "Acme"}, format="json")
    return api.post("/api/v1/grants/", {"tenant": "acme", "model": "digits"}, format="json")


def _grant(api: APIClient) -> str:
    return str(_grant_create(api).json()["id"])


def _gpu_node() -> Any:
    from pathlib import Path
    from tempfile import mkdtemp

    from appliance.nodes.inventory.simulated import SimulatedInventory
    from appliance.nodes.services import node_report_inventory

    node = make_node("n1")
    sim = SimulatedInventory(state_path=Path(mkdtemp()) / "gpus.json", models=("H100-80GB",))
    node_report_inventory(node_id=node.pk, gpus=sim.gpus())
    return node


def _dedicate(api: APIClient) -> Any:
    from pathlib import Path
    from tempfile import mkdtemp

    from appliance.nodes.inventory.simulated import SimulatedInventory
    from appliance.nodes.services import node_report_inventory

    node = make_node("n1")
    sim = SimulatedInventory(state_path=Path(mkdtemp()) / "gpus.json", models=("H100-80GB",))
    sim.set_mig_mode(0, True)
    device = sim.create_instance(0, "7g.80gb", 0)
    node_report_inventory(node_id=node.pk, gpus=sim.gpus())
    api.post("/api/v1/tenants/", {"slug": "acme", "name": "Acme"}, format="json")
    return api.patch(f"/api/v1/mig-devices/{device.uuid}/", {"tenant": "acme"}, format="json")


def _reconfigure(api: APIClient) -> Any:
    _gpu_node()
    return api.post("/api/v1/nodes/n1/reconfigure/", {"gpu": 0, "layout": ["7g.80gb"]}, format="json")


def _faulty_node() -> Any:
    from appliance.nodes.models import Node

    node = make_node("n1")
    Node.objects.filter(pk=node.pk).update(fault="MIG reconfiguration failed")
    return node


def _rule(api: APIClient) -> Any:
    return api.post("/api/v1/policy-rules/", {"position": 10, "name": "r", "effect": "deny"}, format="json")


def _upload(api: APIClient) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.factories import manifest

    api.post("/api/v1/models/", {"name": "digits"}, format="json")
    return api.post(
        "/api/v1/versions/",
        {"model": "digits", "format": "python", "signature": __import__("json").dumps(manifest("digits")["signature"]),
         "artifact": SimpleUploadedFile("a.tar.gz", python_artifact())},
        format="multipart",
    )  # fmt: skip


def _validation_set(api: APIClient) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.factories import validation_npz

    make_version("digits")
    return api.post("/api/v1/validation-sets/", {"model": "digits", "name": "holdout", "metric": "top1_accuracy",
                    "content": SimpleUploadedFile("v.npz", validation_npz())}, format="multipart")  # fmt: skip


def _optimisation_job(api: APIClient) -> Any:
    import io

    from appliance.catalog.services import version_upload
    from tests.factories import manifest

    holdout = _validation_set(api).json()["id"]
    spec = manifest("digits")
    source = version_upload(model="digits", fmt="onnx", artifact=io.BytesIO(b"an ONNX file"), signature=spec["signature"])
    return api.post("/api/v1/optimisation-jobs/", {"version": str(source.pk), "validation_set": holdout}, format="json")


def _gate_run(api: APIClient) -> Any:
    """A run asked for an ONNX child of an ONNX version (its task is not run here)."""
    import io

    from appliance.catalog.services import version_upload
    from tests.factories import manifest

    _validation_set(api)
    spec = manifest("digits")
    parent = version_upload(model="digits", fmt="onnx", artifact=io.BytesIO(b"an ONNX file"), signature=spec["signature"])
    child = version_upload(model="digits", fmt="onnx", artifact=io.BytesIO(b"its child"), signature=spec["signature"],
                           parent=parent)  # fmt: skip
    return api.post("/api/v1/gate-runs/", {"version": str(child.pk)}, format="json")


def _cancel(prefix: str, start: Callable[[APIClient], Any]) -> Callable[[APIClient], Any]:
    return lambda api: api.post(f"/api/v1/{prefix}/{start(api).json()['id']}/cancel/")


def _profile_search(api: APIClient) -> Any:
    import io

    from appliance.catalog.services import version_upload
    from tests.factories import manifest

    make_node("cpu-1")
    spec = manifest("digits")
    version = version_upload(model="digits", fmt="onnx", artifact=io.BytesIO(b"an ONNX file"), signature=spec["signature"],
                             max_batch_size=32)  # fmt: skip
    body = {"version": str(version.pk), "node": "cpu-1", "objective_p99_ms": 50}
    return api.post("/api/v1/profile-searches/", body, format="json")


def _profile_search_apply(api: APIClient) -> Any:
    """A search that succeeded (as its task records it), then applied over the API."""
    from appliance.optimisation import profiles, services
    from appliance.optimisation.models import ProfileSearch

    search = ProfileSearch.objects.get(pk=_profile_search(api).json()["id"])
    services.profile_search_claim(search_id=search.pk, measured_on="here")
    outcome = profiles.Outcome(profiles.Candidate(8, 1, 0), p50_ms=5.0, p99_ms=9.0, throughput=900.0)
    result = services.profile_search_record(search=search, position=0, outcome=outcome)
    services.profile_search_finish(search_id=search.pk, recommended=result, recommendation="r", speed_up=None)
    return api.post(f"/api/v1/profile-searches/{search.pk}/apply/")


# (prefix, action) -> (does the request and returns the response, the audit action expected)
def _rolling(api: APIClient) -> str:
    """A rollout in progress (its replicas have not loaded: no worker runs here)."""
    body = {"version": str(make_version().pk), "nodes": [make_node().name], "strategy": "canary"}
    return str(api.post("/api/v1/deployments/", body, format="json").json()["id"])


def _provisioning_run(api: APIClient) -> Any:
    from django.test import override_settings

    with override_settings(ANSIBLE_INVENTORY="/etc/appliance/inventory.yml"):
        return api.post("/api/v1/provisioning-runs/", {"kind": "drift_check"}, format="json")


def _enrolled_node(api: APIClient) -> None:
    token = api.post("/api/v1/join-tokens/", {}, format="json").json()["token"]
    assert APIClient().post("/api/v1/enrol/", {"token": token, "name": "n1"}, format="json").status_code == 201


CASES: dict[tuple[str, str], tuple[Callable[[APIClient], Any], str]] = {
    ("nodes", "create"): (lambda api: api.post("/api/v1/nodes/", {"name": "n1"}, format="json"), "node.create"),
    ("nodes", "partial_update"): (
        lambda api: (make_node("n1"), api.patch("/api/v1/nodes/n1/", {"zone": "z2"}, format="json"))[1], "node.update"),
    ("nodes", "destroy"): (lambda api: (make_node("n1"), api.delete("/api/v1/nodes/n1/"))[1], "node.delete"),
    ("nodes", "drain"): (lambda api: (make_node("n1"), api.post("/api/v1/nodes/n1/drain/"))[1], "node.update"),
    ("nodes", "maintenance"): (lambda api: (make_node("n1"), api.post("/api/v1/nodes/n1/maintenance/"))[1], "node.update"),
    ("nodes", "reconfigure"): (_reconfigure, "reconfiguration.create"),
    ("mig-devices", "partial_update"): (_dedicate, "mig_device.update"),
    ("provisioning-runs", "create"): (_provisioning_run, "provisioning_run.create"),
    ("join-tokens", "create"): (lambda api: api.post("/api/v1/join-tokens/", {}, format="json"), "join_token.create"),
    ("join-tokens", "revoke"): (
        lambda api: api.post(f"/api/v1/join-tokens/{api.post('/api/v1/join-tokens/', {}, format='json').json()['id']}/revoke/"),
        "join_token.update"),
    ("nodes", "revoke_credential"): (lambda api: (_enrolled_node(api), api.post("/api/v1/nodes/n1/revoke-credential/"))[1],
                                     "node.update"),
    ("nodes", "clear_fault"): (
        lambda api: (_faulty_node(), api.post("/api/v1/nodes/n1/clear-fault/"))[1], "node.update"),
    ("nodes", "undrain"): (
        lambda api: (make_node("n1"), api.post("/api/v1/nodes/n1/drain/"), api.post("/api/v1/nodes/n1/undrain/"))[2],
        "node.update"),
    ("models", "create"): (lambda api: api.post("/api/v1/models/", {"name": "m1"}, format="json"), "model.create"),
    ("models", "partial_update"): (
        lambda api: (api.post("/api/v1/models/", {"name": "m1"}, format="json"),
                     api.patch("/api/v1/models/m1/", {"description": "d"}, format="json"))[1], "model.update"),
    ("models", "destroy"): (
        lambda api: (api.post("/api/v1/models/", {"name": "m1"}, format="json"), api.delete("/api/v1/models/m1/"))[1],
        "model.delete"),
    ("versions", "create"): (_upload, "model_version.create"),
    ("validation-sets", "create"): (_validation_set, "validation_set.create"),
    ("validation-sets", "destroy"): (
        lambda api: api.delete(f"/api/v1/validation-sets/{_validation_set(api).json()['id']}/"), "validation_set.delete"),
    ("optimisation-jobs", "create"): (_optimisation_job, "optimisation_job.create"),
    ("profile-searches", "create"): (_profile_search, "profile_search.create"),
    ("optimisation-jobs", "cancel"): (_cancel("optimisation-jobs", _optimisation_job), "optimisation_job.update"),
    ("profile-searches", "cancel"): (_cancel("profile-searches", _profile_search), "profile_search.update"),
    ("gate-runs", "create"): (_gate_run, "gate_run.create"),
    ("gate-runs", "cancel"): (_cancel("gate-runs", _gate_run), "gate_run.update"),
    # Applying changes the model's serving profile: that is the row that matters (the search's own is updated too).
    ("profile-searches", "apply"): (_profile_search_apply, "model.update"),
    ("deployments", "create"): (
        lambda api: api.post("/api/v1/deployments/", {"version": str(make_version().pk), "nodes": [make_node().name]},
                             format="json"), "deployment.create"),
    ("deployments", "pause"): (lambda api: api.post(f"/api/v1/deployments/{_rolling(api)}/pause/"), "deployment.update"),
    ("deployments", "resume"): (
        lambda api: (d := _rolling(api), api.post(f"/api/v1/deployments/{d}/pause/"),
                     api.post(f"/api/v1/deployments/{d}/resume/"))[2], "deployment.update"),
    ("deployments", "abort"): (lambda api: api.post(f"/api/v1/deployments/{_rolling(api)}/abort/"), "deployment.update"),
    ("deployments", "rollback"): (
        lambda api: api.post(f"/api/v1/deployments/{_rolling(api)}/rollback/"), "deployment.update"),
    ("tenants", "create"): (lambda api: api.post("/api/v1/tenants/", {"slug": "t1", "name": "T"}, format="json"), "tenant.create"),
    ("tenants", "partial_update"): (
        lambda api: (api.post("/api/v1/tenants/", {"slug": "t1", "name": "T"}, format="json"),
                     api.patch("/api/v1/tenants/t1/", {"name": "U"}, format="json"))[1], "tenant.update"),
    ("tenants", "destroy"): (
        lambda api: (api.post("/api/v1/tenants/", {"slug": "t1", "name": "T"}, format="json"),
                     api.delete("/api/v1/tenants/t1/"))[1], "tenant.delete"),
    ("api-keys", "create"): (
        lambda api: (api.post("/api/v1/tenants/", {"slug": "t1", "name": "T"}, format="json"),
                     api.post("/api/v1/api-keys/", {"tenant": "t1", "name": "k"}, format="json"))[1], "api_key.create"),
    ("api-keys", "revoke"): (lambda api: api.post(f"/api/v1/api-keys/{_tenant_key(api)}/revoke/"), "api_key.update"),
    ("api-keys", "rotate"): (lambda api: api.post(f"/api/v1/api-keys/{_tenant_key(api)}/rotate/", {}, format="json"),
                             "api_key.update"),
    ("grants", "create"): (_grant_create, "model_grant.create"),
    ("grants", "destroy"): (lambda api: api.delete(f"/api/v1/grants/{_grant(api)}/"), "model_grant.delete"),
    ("policy-rules", "create"): (lambda api: _rule(api), "policy_rule.create"),
    ("policy-rules", "partial_update"): (
        lambda api: api.patch(f"/api/v1/policy-rules/{_rule(api).json()['id']}/", {"enabled": False}, format="json"),
        "policy_rule.update"),
    ("policy-rules", "destroy"): (
        lambda api: api.delete(f"/api/v1/policy-rules/{_rule(api).json()['id']}/"), "policy_rule.delete"),
}  # fmt: skip


def test_every_mutating_endpoint_has_a_case() -> None:
    assert mutating_endpoints() == set(CASES), "add an audit case for each new mutating endpoint"


@pytest.mark.parametrize("endpoint", sorted(CASES), ids=lambda e: f"{e[0]}.{e[1]}")
def test_mutating_endpoint_writes_an_audit_event(
    admin_api: APIClient, endpoint: tuple[str, str], django_capture_on_commit_callbacks: Any
) -> None:
    api = admin_api
    call, expected = CASES[endpoint]
    with django_capture_on_commit_callbacks(execute=False):
        response = call(api)
    assert response.status_code < 300, response.content
    event = AuditEvent.objects.filter(action=expected).order_by("-time").first()
    assert event is not None, f"{endpoint} wrote no {expected} event"
    assert (event.actor, event.origin) == ("user:ada", "api")
    assert event.source_address == "127.0.0.1"
