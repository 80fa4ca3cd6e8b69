"""The nvml backend on a real GPU: read-only (inventory, MIG mode, possible
placements, profile discovery). Skipped where NVML cannot load, with NVML's reason."""

from __future__ import annotations

import pytest

from appliance.nodes.inventory.base import InventoryError


def _nvml() -> object:
    from appliance.nodes.inventory.nvml import NvmlInventory

    try:
        return NvmlInventory()
    except InventoryError as exc:
        pytest.skip(f"no NVIDIA driver here: {exc}")


@pytest.mark.gpu
def test_real_gpu_inventory_read_only() -> None:
    inventory = _nvml()
    gpus = inventory.gpus()  # type: ignore[attr-defined]
    assert gpus, "NVML loaded but reported no GPU"
    for gpu in gpus:
        assert gpu.uuid.startswith("GPU-") and gpu.memory_mib > 0
        if gpu.mig_current:
            for device in gpu.mig_devices:
                assert device.uuid.startswith("MIG-") and device.size > 0


@pytest.mark.gpu
def test_real_gpu_profiles_and_possible_placements() -> None:
    import pynvml

    inventory = _nvml()
    gpu = inventory.gpus()[0]  # type: ignore[attr-defined]
    handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.index)
    profiles = inventory.profiles(handle)  # type: ignore[attr-defined]
    if not gpu.mig_current:
        pytest.skip(f"MIG mode is off on {gpu.product}; placements are only listed with MIG on (we never switch it)")
    assert profiles
    for _, (name, size) in profiles.items():
        starts = inventory.possible_placements(gpu.index, name)  # type: ignore[attr-defined]
        assert all(0 <= s and s + size <= 8 for s in starts)
