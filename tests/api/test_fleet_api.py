from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from appliance.nodes.inventory.simulated import SimulatedInventory
from appliance.nodes.services import node_report_inventory
from tests.conftest import assert_audited, client_for
from tests.factories import make_node

pytestmark = pytest.mark.django_db


def test_mig_plan_endpoint(api: APIClient, auditor: Any) -> None:
    ok = api.post("/api/v1/mig/plan/", {"gpu_model": "H100-80GB", "profiles": ["3g.40gb", "2g.20gb", "1g.10gb"]}, format="json")
    assert ok.status_code == 200 and ok.json() == {"placements": ["3g.40gb@0", "2g.20gb@4", "1g.10gb@6"]}
    bad = api.post("/api/v1/mig/plan/", {"gpu_model": "H100-80GB", "profiles": ["7g.80gb", "1g.10gb"]}, format="json")
    assert bad.status_code == 400 and "compute slices" in bad.json()["detail"]
    assert api.post("/api/v1/mig/plan/", {"gpu_model": "V100", "profiles": []}, format="json").status_code == 400
    assert client_for(auditor).post("/api/v1/mig/plan/", {"gpu_model": "A30-24GB", "profiles": ["4g.24gb"]},
                                    format="json").status_code == 200  # fmt: skip


def test_reported_inventory_shows_in_the_api_and_is_audited(api: APIClient, tmp_path: Path) -> None:
    node = make_node("gpu-01")
    sim = SimulatedInventory(state_path=tmp_path / "gpus.json", models=("H100-80GB",))
    sim.set_mig_mode(0, True)
    first = sim.create_instance(0, "3g.40gb", 0)
    node_report_inventory(node_id=node.pk, gpus=sim.gpus())
    gpu = api.get("/api/v1/nodes/gpu-01/").json()["gpus"][0]
    assert (gpu["model"], gpu["mig_enabled"]) == ("H100-80GB", True)
    assert [(d["profile"], d["start"], d["uuid"]) for d in gpu["mig_devices"]] == [("3g.40gb", 0, first.uuid)]
    assert_audited("mig_device.create")

    sim.destroy_instance(0, first.gpu_instance_id)
    sim.create_instance(0, "7g.80gb", 0)
    node_report_inventory(node_id=node.pk, gpus=sim.gpus())
    devices = api.get("/api/v1/nodes/gpu-01/").json()["gpus"][0]["mig_devices"]
    assert [d["profile"] for d in devices] == ["7g.80gb"]
    assert_audited("mig_device.delete")
    node_report_inventory(node_id=node.pk, gpus=[])
    assert api.get("/api/v1/nodes/gpu-01/").json()["gpus"] == []


def test_reconfiguration_requests_are_validated_and_one_at_a_time(
    api: APIClient, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    node = make_node("gpu-01")
    node_report_inventory(node_id=node.pk, gpus=SimulatedInventory(state_path=tmp_path / "g.json", models=("H100-80GB",)).gpus())
    bad = api.post("/api/v1/nodes/gpu-01/reconfigure/", {"gpu": 0, "layout": ["4g.40gb", "4g.40gb"]}, format="json")
    assert bad.status_code == 400 and "allows at most 1" in bad.json()["detail"]
    assert api.post("/api/v1/nodes/gpu-01/reconfigure/", {"gpu": 3, "layout": []}, format="json").status_code == 400
    wrong_step = api.post("/api/v1/nodes/gpu-01/reconfigure/", {"gpu": 0, "layout": [], "inject_failure_at": "x"},
                          format="json")  # fmt: skip
    assert wrong_step.status_code == 400 and "must name a step" in wrong_step.json()["detail"]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = api.post("/api/v1/nodes/gpu-01/reconfigure/", {"gpu": 0, "layout": ["3g.40gb", "3g.40gb"]}, format="json")
    assert first.status_code == 202 and len(callbacks) == 1
    assert first.json()["placements"] == [{"profile": "3g.40gb", "start": 0}, {"profile": "3g.40gb", "start": 4}]
    second = api.post("/api/v1/nodes/gpu-01/reconfigure/", {"gpu": 0, "layout": ["7g.80gb"]}, format="json")
    assert second.status_code == 409
    assert_audited("reconfiguration.create", target_id=first.json()["id"])
    assert api.get(f"/api/v1/reconfigurations/{first.json()['id']}/").json()["state"] == "pending"
