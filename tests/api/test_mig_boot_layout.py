"""The MIG layout boot unit (ansible/roles/nvidia_mig runs `manage.py mig_boot_layout` before
the node agent): it reads the layout the control plane declares for the node over HTTP with
the node's own credential and restores it through the (simulated, NVML-contract) inventory;
a matching GPU is left alone; the last layout read serves when the control plane is down; a
revoked node is refused."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from appliance.nodes import services
from appliance.nodes.inventory.simulated import SimulatedInventory
from appliance.nodes.models import Gpu, MigDevice
from tests.http_server import http_server

pytestmark = pytest.mark.django_db


def _enrolled_with_layout(tmp_path: Path) -> tuple[Path, Path]:
    token = services.join_token_create(ttl_s=600)[1]
    enrolled = services.node_enrol(token=token, name="gpu-09", zone="eu-fra")
    gpu = Gpu.objects.create(node=enrolled.node, index=0, uuid="GPU-9", product="NVIDIA H100 80GB HBM3",
                             model="H100-80GB", memory_mib=81559, mig_enabled=True)  # fmt: skip
    MigDevice.objects.create(gpu=gpu, uuid="MIG-1", profile="3g.40gb", start=4, size=4, gpu_instance_id=1)
    MigDevice.objects.create(gpu=gpu, uuid="MIG-2", profile="1g.10gb", start=0, size=1, gpu_instance_id=2)
    credential = tmp_path / "node-credential"
    credential.write_text(enrolled.credential + "\n")
    state = tmp_path / "gpus.json"
    sim = SimulatedInventory(state_path=state, models=("H100-80GB",))
    sim.set_mig_mode(0, True)
    sim.reset(0)  # MIG mode on; the reboot left no instances
    return credential, state


def _boot(url: str, credential: Path, state: Path, **extra: Any) -> str:
    out = io.StringIO()
    call_command("mig_boot_layout", control_plane=url, credential_file=credential, inventory="simulated",
                 simulated_state=state, stdout=out, stderr=io.StringIO(), **extra)  # fmt: skip
    return out.getvalue()


def test_the_declared_layout_comes_back_after_a_reboot(tmp_path: Path, settings: Any) -> None:
    settings.VAR_DIR = tmp_path / "var"
    credential, state = _enrolled_with_layout(tmp_path)
    with http_server() as server:
        assert "restored 1g.10gb@0, 3g.40gb@4" in _boot(server, credential, state)
        uuids = {d.uuid for d in SimulatedInventory(state_path=state).gpus()[0].mig_devices}
        # Run again (the unit is idempotent): nothing is destroyed or created.
        assert "2 instances as declared" in _boot(server, credential, state)
    (gpu,) = SimulatedInventory(state_path=state).gpus()
    assert sorted((d.profile, d.start) for d in gpu.mig_devices) == [("1g.10gb", 0), ("3g.40gb", 4)]
    assert {d.uuid for d in SimulatedInventory(state_path=state).gpus()[0].mig_devices} == uuids
    # The control plane unreachable: the layout read last time is restored.
    SimulatedInventory(state_path=state).reset(0)
    assert "restored" in _boot("http://127.0.0.1:9", credential, state)
    assert len(SimulatedInventory(state_path=state).gpus()[0].mig_devices) == 2


def test_a_revoked_node_gets_no_layout(tmp_path: Path, settings: Any) -> None:
    settings.VAR_DIR = tmp_path / "var"
    credential, state = _enrolled_with_layout(tmp_path)
    services.node_revoke_credential(node=services.node_authenticate(credential=credential.read_text().strip()))
    with http_server() as server, pytest.raises(CommandError, match="credential was revoked"):
        _boot(server, credential, state)


def test_a_gpu_out_of_mig_mode_is_refused_not_switched(tmp_path: Path, settings: Any) -> None:
    settings.VAR_DIR = tmp_path / "var"
    credential, state = _enrolled_with_layout(tmp_path)
    sim = SimulatedInventory(state_path=state)
    sim.set_mig_mode(0, False)
    sim.reset(0)
    with http_server() as server, pytest.raises(CommandError, match="GPU 0 is not in MIG mode"):
        _boot(server, credential, state)
    assert SimulatedInventory(state_path=state).gpus()[0].mig_current is False
