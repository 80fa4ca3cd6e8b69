"""The agent converges a model's directory with one writer at a time (agent/sync.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from appliance.agent import sync


def test_one_writer_per_model_directory_and_others_go_on(tmp_path: Path) -> None:
    """A MIG reconfiguration's reload and the new Triton's after-start reload wrote the same
    version directory at once; the second writer now waits for the first."""
    seen: dict[str, bool] = {}

    def other_thread() -> None:
        same = sync._locks[(tmp_path, "digits")]
        seen["same model"] = same.acquire(blocking=False)
        with sync._one_writer(tmp_path, "embed"):  # another model of the same Triton is not held up
            seen["other model"] = True
        with sync._one_writer(tmp_path / "mig", "digits"):  # the same model on another Triton neither
            seen["other triton"] = True

    with sync._one_writer(tmp_path, "digits"):
        with sync._one_writer(tmp_path, "digits"):  # the same thread may nest (load_model writes)
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join(timeout=10)
    assert seen == {"same model": False, "other model": True, "other triton": True}
    assert sync._locks[(tmp_path, "digits")].acquire(blocking=False), "let go after the writer"


def test_a_mig_slices_triton_sizes_engines_against_the_slice_as_its_device_0(tmp_path: Path) -> None:
    """The main Triton sees the node's GPUs by index; a MIG slice's Triton sees that slice alone,
    as device 0 (a generative engine there takes its share of the slice's memory)."""
    import types

    from appliance.nodes.inventory.base import GpuInfo, MigDeviceInfo

    slice_ = MigDeviceInfo(uuid="MIG-a", profile="3g.40gb", start=4, size=4, gpu_instance_id=2,
                           compute_instance_id=0, memory_mib=40_192)  # fmt: skip
    gpus = [GpuInfo(index=0, uuid="GPU-0", product="NVIDIA H100", model="H100-SXM5-80GB", memory_mib=81_559,
                    mig_current=True, mig_pending=False, mig_devices=(slice_,)),
            GpuInfo(index=1, uuid="GPU-1", product="NVIDIA H100", model="H100-SXM5-80GB", memory_mib=81_559,
                    mig_current=False, mig_pending=False)]  # fmt: skip
    local = types.SimpleNamespace(inventory=types.SimpleNamespace(gpus=lambda: gpus))

    assert sync.device_memory_mib(local) == {0: 81_559, 1: 81_559}  # type: ignore[arg-type]
    assert sync.device_memory_mib(local, "MIG-a") == {0: 40_192}  # type: ignore[arg-type]
    assert sync.device_memory_mib(local, "MIG-gone") == {}  # type: ignore[arg-type]
    assert sync.device_memory_mib(types.SimpleNamespace(inventory=None)) == {}  # type: ignore[arg-type]
