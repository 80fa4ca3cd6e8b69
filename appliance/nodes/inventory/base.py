"""The accelerator inventory interface a node agent uses, whatever the hardware.

Two implementations: `nvml` (nvidia-ml-py, real NVIDIA GPUs) and `simulated`
(state in a file, same semantics and the same error cases as NVML). A CPU-only
node simply has no GPUs. Other accelerators would be further implementations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class InventoryError(RuntimeError):
    """An NVML-style failure; `code` names the NVML error it stands for."""

    code = "UNKNOWN"


class InUse(InventoryError):
    code = "IN_USE"  # NVML_ERROR_IN_USE: processes or compute instances are active


class InsufficientResources(InventoryError):
    code = "INSUFFICIENT_RESOURCES"  # NVML_ERROR_INSUFFICIENT_RESOURCES: no room at that placement


class ResetRequired(InventoryError):
    code = "RESET_REQUIRED"  # NVML_ERROR_RESET_REQUIRED: a MIG mode change waits for a GPU reset


class NoPermission(InventoryError):
    code = "NO_PERMISSION"  # NVML_ERROR_NO_PERMISSION: not root / no mig/config capability


class NotSupported(InventoryError):
    code = "NOT_SUPPORTED"  # NVML_ERROR_NOT_SUPPORTED: MIG disabled or not MIG-capable


class NotFound(InventoryError):
    code = "NOT_FOUND"  # NVML_ERROR_NOT_FOUND


class InvalidArgument(InventoryError):
    code = "INVALID_ARGUMENT"  # NVML_ERROR_INVALID_ARGUMENT: unknown profile, bad start


@dataclass(frozen=True)
class MigDeviceInfo:
    uuid: str
    profile: str
    start: int
    size: int
    gpu_instance_id: int
    compute_instance_id: int = 0
    memory_mib: int = 0


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    product: str
    model: str | None  # catalog name (appliance.nodes.mig.catalog), None if not MIG-capable/known
    memory_mib: int
    mig_current: bool
    mig_pending: bool
    mig_devices: tuple[MigDeviceInfo, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuHealth:
    """One GPU's health read-out. None: not supported on this GPU (not a failure)."""

    index: int
    temperature_c: int | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    ecc_uncorrected_aggregate: int | None = None  # over the GPU's lifetime (volatile ones reset on reboot)
    retired_pages_pending: bool | None = None  # pre-Ampere page retirement waiting for a reset
    xid_events: list[dict[str, Any]] = field(default_factory=list)  # recent, {"xid", "time"}
    throttle_reasons: list[str] = field(default_factory=list)
    memory_used_mib: int | None = None
    utilisation_pct: int | None = None  # NVML utilization.gpu: share of time a kernel ran (last sample period)
    memory_bandwidth_pct: int | None = None  # NVML utilization.memory: share of time memory was read or written
    remapped_rows_pending: bool | None = None
    remap_failed: bool | None = None
    readout_error: str = ""  # the read-out itself failed: a failed check (fail closed)


class Inventory(Protocol):
    name: str

    def gpus(self) -> list[GpuInfo]: ...

    def health(self) -> list[GpuHealth]: ...

    def set_mig_mode(self, index: int, enabled: bool) -> str:
        """'applied' or 'pending-reset' (Ampere needs a GPU reset to switch)."""
        ...

    def possible_placements(self, index: int, profile: str) -> list[int]: ...

    def create_instance(self, index: int, profile: str, start: int) -> MigDeviceInfo: ...

    def destroy_instance(self, index: int, gpu_instance_id: int) -> None: ...


def open_inventory(kind: str, **options: Any) -> Inventory:
    """kind: 'none' (CPU node), 'simulated' or 'nvml'."""
    if kind == "none":
        from appliance.nodes.inventory.simulated import SimulatedInventory

        return SimulatedInventory.empty()
    if kind == "simulated":
        from appliance.nodes.inventory.simulated import SimulatedInventory

        return SimulatedInventory(**options)
    if kind == "nvml":
        from appliance.nodes.inventory.nvml import NvmlInventory

        return NvmlInventory()
    raise ValueError(f"unknown inventory backend {kind!r} (none, simulated, nvml)")
