"""Provisioning runs started from the API or the console (appliance/provisioning/): recorded
first, one at a time per target, run by the control worker through ansible-runner. The runner
is exercised for real here on a playbook of the test's own against this machine's loopback
(`ansible_connection=local`, writing only under the test's temporary directory): its events
are stored, its recap kept, and a check run reports the host as drifted exactly when the
play would change something. tests/provisioning runs node.yml against a booted test host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from appliance.provisioning import runner, services
from appliance.provisioning.choices import RunState
from appliance.provisioning.models import ProvisioningRun
from tests.conftest import assert_audited

pytestmark = pytest.mark.django_db

ANSIBLE = Path(__file__).resolve().parents[2] / "var" / "build" / "ansible" / "bin" / "ansible-playbook"
PLAY = """---
- name: A small site
  hosts: all
  gather_facts: false
  tasks:
    - name: The file a node should hold
      ansible.builtin.copy:
        content: "{{ wanted }}\\n"
        dest: "{{ target }}"
        mode: "0644"
"""


@pytest.fixture
def site(tmp_path: Path, settings: Any) -> dict[str, Any]:
    if not ANSIBLE.exists():
        pytest.skip("the provisioning toolchain is not built (make ansible-env)")
    project = tmp_path / "ansible"
    project.mkdir()
    (project / "node.yml").write_text(PLAY)
    (project / "ansible.cfg").write_text("[defaults]\nstdout_callback = default\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"box-1": {"ansible_connection": "local",
                                                                  "ansible_python_interpreter": "/usr/bin/python3"}}}}))  # fmt: skip
    variables = tmp_path / "vars.json"
    target = tmp_path / "state.txt"
    variables.write_text(json.dumps({"wanted": "as provisioned", "target": str(target)}))
    settings.ANSIBLE_DIR, settings.ANSIBLE_PLAYBOOK = project, ANSIBLE
    settings.ANSIBLE_INVENTORY, settings.ANSIBLE_EXTRA_VARS = str(inventory), str(variables)
    settings.VAR_DIR = tmp_path / "var"
    return {"target": target}


def _run(api: APIClient, kind: str, limit: str = "", django_capture_on_commit_callbacks: Any = None) -> ProvisioningRun:
    response = api.post("/api/v1/provisioning-runs/", {"kind": kind, "limit": limit}, format="json")
    assert response.status_code == 202, response.content
    claimed = services.run_claim(run_id=response.json()["id"])
    assert claimed is not None
    return runner.execute(claimed)


def test_a_run_stores_its_events_and_ends_in_its_final_state(api: APIClient, site: dict[str, Any], operator: Any,
                                                             django_capture_on_commit_callbacks: Any) -> None:  # fmt: skip
    with django_capture_on_commit_callbacks(execute=False) as sent:
        done = _run(api, "reprovision", "box-1")
    assert len(sent) == 1  # the worker's task, sent after commit
    assert done.state == RunState.SUCCEEDED and done.rc == 0
    assert done.recap["box-1"]["changed"] == 1 and done.recap["box-1"]["failures"] == 0
    assert site["target"].read_text() == "as provisioned\n"
    events = list(done.events.values_list("event", "task", "host", "changed"))
    assert ("runner_on_ok", "The file a node should hold", "box-1", True) in events
    assert events[-1][0] == "playbook_on_stats"
    detail = api.get(f"/api/v1/provisioning-runs/{done.pk}/").json()
    assert detail["state"] == "succeeded" and len(detail["events"]) == len(events) and "box-1" in detail["log"]
    assert_audited("provisioning_run.create", target_id=str(done.pk), actor=f"user:{operator.username}")
    assert_audited("provisioning_run.update", target_id=str(done.pk))
    # The run's correlation id went to the play as an extra variable.
    assert (Path(done.inventory).parent / "var" / "provisioning" / str(done.pk) / "env" / "extravars").read_text().find(
        done.correlation_id) >= 0


def test_a_drift_check_names_the_nodes_that_differ_and_changes_nothing(api: APIClient, site: dict[str, Any],
                                                                       django_capture_on_commit_callbacks: Any) -> None:  # fmt: skip
    with django_capture_on_commit_callbacks(execute=False):
        _run(api, "reprovision", "box-1")
        clean = _run(api, "drift_check")
        assert clean.state == RunState.SUCCEEDED and clean.drifted == [] and clean.check_mode
        site["target"].write_text("edited by hand\n")
        drifted = _run(api, "drift_check")
    assert drifted.drifted == ["box-1"] and drifted.recap["box-1"]["changed"] == 1
    assert site["target"].read_text() == "edited by hand\n"  # a check changes nothing
    assert services.latest_drift()["drifted"] == ["box-1"]
    page = Client()
    from django.contrib.auth import get_user_model

    page.force_login(get_user_model().objects.get(username="olivia"))
    assert "drifted: box-1" in page.get("/console/provisioning/").content.decode()


def test_a_failed_play_ends_failed_with_the_reason(api: APIClient, site: dict[str, Any], settings: Any,
                                                   django_capture_on_commit_callbacks: Any) -> None:  # fmt: skip
    Path(settings.ANSIBLE_EXTRA_VARS).write_text(json.dumps({"wanted": "x", "target": "/proc/not-writable/x"}))
    with django_capture_on_commit_callbacks(execute=False):
        failed = _run(api, "reprovision", "box-1")
    assert failed.state == RunState.FAILED and failed.recap["box-1"]["failures"] == 1
    assert failed.error.startswith("ansible-playbook ended with 2")


def test_runs_are_refused_clearly(api: APIClient, site: dict[str, Any], settings: Any,
                                  django_capture_on_commit_callbacks: Any) -> None:  # fmt: skip
    with django_capture_on_commit_callbacks(execute=False):
        first = api.post("/api/v1/provisioning-runs/", {"kind": "reprovision", "limit": "box-1"}, format="json")
        again = api.post("/api/v1/provisioning-runs/", {"kind": "reprovision", "limit": "box-1"}, format="json")
        unnamed = api.post("/api/v1/provisioning-runs/", {"kind": "add_node"}, format="json")
        settings.ANSIBLE_INVENTORY = ""
        nowhere = api.post("/api/v1/provisioning-runs/", {"kind": "drift_check"}, format="json")
    assert first.status_code == 202 and again.status_code == 409 and "already pending" in again.json()["detail"]
    assert unnamed.status_code == 400 and "names the host" in unnamed.json()["detail"]
    assert nowhere.status_code == 400 and "no inventory is configured" in nowhere.json()["detail"]
    assert ProvisioningRun.objects.count() == 1
