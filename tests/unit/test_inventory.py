"""The simulated inventory follows NVML's contract, errors included."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.nodes.inventory.base import (
    InsufficientResources,
    InUse,
    InvalidArgument,
    NoPermission,
    NotFound,
    NotSupported,
    ResetRequired,
    open_inventory,
)
from appliance.nodes.inventory.simulated import SimulatedInventory


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedInventory:
    return SimulatedInventory(state_path=tmp_path / "gpus.json", models=("H100-80GB", "A100-40GB"))


def test_inventory_reports_gpus_and_persists(sim: SimulatedInventory, tmp_path: Path) -> None:
    gpus = sim.gpus()
    assert [(g.index, g.model, g.mig_current) for g in gpus] == [(0, "H100-80GB", False), (1, "A100-40GB", False)]
    assert gpus[0].uuid.startswith("GPU-") and gpus[0].memory_mib == int(79.25 * 1024)
    again = SimulatedInventory(state_path=tmp_path / "gpus.json", models=("H100-80GB", "A100-40GB"))
    assert [g.uuid for g in again.gpus()] == [g.uuid for g in gpus], "state survives a restart of the agent"


def test_mig_calls_need_mig_mode(sim: SimulatedInventory) -> None:
    with pytest.raises(NotSupported):
        sim.create_instance(0, "3g.40gb", 0)
    with pytest.raises(NotSupported):
        sim.possible_placements(0, "3g.40gb")


def test_hopper_switches_at_once_ampere_needs_a_reset(sim: SimulatedInventory) -> None:
    assert sim.set_mig_mode(0, True) == "applied"
    assert sim.set_mig_mode(1, True) == "pending-reset"
    gpu = sim.gpus()[1]
    assert (gpu.mig_current, gpu.mig_pending) == (False, True)
    with pytest.raises(ResetRequired):
        sim.create_instance(1, "3g.20gb", 0)
    sim.reset(1)
    assert sim.gpus()[1].mig_current
    assert sim.create_instance(1, "3g.20gb", 4).start == 4


def test_create_follows_placements_and_maxima(sim: SimulatedInventory) -> None:
    sim.set_mig_mode(0, True)
    first = sim.create_instance(0, "3g.40gb", 0)
    assert first.uuid.startswith("MIG-") and (first.start, first.size) == (0, 4)
    assert sim.possible_placements(0, "3g.40gb") == [4]
    assert sim.possible_placements(0, "1g.20gb") == [4, 6]
    with pytest.raises(InsufficientResources):
        sim.create_instance(0, "2g.20gb", 2)  # slices 2-3 belong to the 3g
    with pytest.raises(InvalidArgument):
        sim.create_instance(0, "2g.20gb", 6)  # 2g never starts at 6
    with pytest.raises(InvalidArgument):
        sim.create_instance(0, "5g.50gb", 0)
    sim.create_instance(0, "3g.40gb", 4)
    with pytest.raises(InsufficientResources):
        sim.create_instance(0, "1g.10gb", 3)
    assert [d.profile for d in sim.gpus()[0].mig_devices] == ["3g.40gb", "3g.40gb"]


def test_busy_instances_cannot_be_destroyed_or_the_mode_switched(sim: SimulatedInventory) -> None:
    sim.set_mig_mode(0, True)
    device = sim.create_instance(0, "7g.80gb", 0)
    sim.attach(device.uuid, "tritonserver pid 42")
    with pytest.raises(InUse):
        sim.destroy_instance(0, device.gpu_instance_id)
    with pytest.raises(InUse):
        sim.set_mig_mode(0, False)
    sim.detach(device.uuid)
    with pytest.raises(InUse, match="still has MIG instances"):
        sim.set_mig_mode(0, False)
    sim.destroy_instance(0, device.gpu_instance_id)
    with pytest.raises(NotFound):
        sim.destroy_instance(0, device.gpu_instance_id)
    assert sim.set_mig_mode(0, False) == "applied"


def test_without_permission_nothing_changes(sim: SimulatedInventory) -> None:
    sim.set_permission(False)
    with pytest.raises(NoPermission):
        sim.set_mig_mode(0, True)
    assert not sim.gpus()[0].mig_current


def test_cpu_nodes_have_no_gpus_and_unknown_backends_are_refused() -> None:
    assert open_inventory("none").gpus() == []
    with pytest.raises(ValueError, match="unknown inventory backend"):
        open_inventory("tpu")
    with pytest.raises(KeyError, match="unknown GPU model"):
        SimulatedInventory(state_path=Path("/tmp") / "never.json", models=("V100",))
