"""Real NVIDIA GPUs through NVML (nvidia-ml-py).

Profile ids and placements are discovered on the device at run time (the
catalog's ids are for planning only). Reads are safe anywhere a driver runs;
create/destroy/mode calls change the GPU and are only made by a reconfiguration.
Tested read-only on a real GPU (tests/unit/test_inventory_nvml.py); skipped,
with the reason, where NVML cannot load.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

from appliance.nodes.inventory.base import (
    GpuHealth,
    GpuInfo,
    InsufficientResources,
    InUse,
    InvalidArgument,
    InventoryError,
    MigDeviceInfo,
    NoPermission,
    NotFound,
    NotSupported,
    ResetRequired,
)
from appliance.nodes.mig.catalog import model_for

T = TypeVar("T")
_ERRORS: dict[type, type[InventoryError]] = {
    pynvml.NVMLError_InUse: InUse,
    pynvml.NVMLError_InsufficientResources: InsufficientResources,
    pynvml.NVMLError_ResetRequired: ResetRequired,
    pynvml.NVMLError_NoPermission: NoPermission,
    pynvml.NVMLError_NotSupported: NotSupported,
    pynvml.NVMLError_NotFound: NotFound,
    pynvml.NVMLError_InvalidArgument: InvalidArgument,
}
_init_lock = threading.Lock()
_initialised = False


def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except pynvml.NVMLError as exc:
        raise _ERRORS.get(type(exc), InventoryError)(str(exc)) from exc


def ensure_nvml() -> None:
    """nvmlInit once per process; raises InventoryError (NVML's reason) where no driver is."""
    global _initialised
    with _init_lock:
        if not _initialised:
            _call(pynvml.nvmlInit)
            _initialised = True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_THROTTLE_BITS = {
    0x1: "GpuIdle", 0x2: "ApplicationsClocksSetting", 0x4: "SwPowerCap", 0x8: "HwSlowdown", 0x10: "SyncBoost",
    0x20: "SwThermalSlowdown", 0x40: "HwThermalSlowdown", 0x80: "HwPowerBrakeSlowdown", 0x100: "DisplayClockSetting",
}  # fmt: skip


def _optional(fn: Callable[..., T], *args: Any) -> T | None:
    """A read-out this GPU may not support: None then; any other failure propagates."""
    try:
        return fn(*args)
    except pynvml.NVMLError_NotSupported:
        return None


class NvmlInventory:
    name = "nvml"

    def __init__(self) -> None:
        ensure_nvml()
        self._xids: dict[int, list[dict[str, Any]]] = {}
        self._events: Any = None
        try:
            self._events = pynvml.nvmlEventSetCreate()
            for index in range(_call(pynvml.nvmlDeviceGetCount)):
                handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
                _optional(pynvml.nvmlDeviceRegisterEvents, handle, pynvml.nvmlEventTypeXidCriticalError, self._events)
        except pynvml.NVMLError:
            self._events = None  # XIDs then show up as a failed read-out (fail closed)

    def _drain_xids(self) -> None:
        from django.utils import timezone

        while True:
            try:
                event = pynvml.nvmlEventSetWait(self._events, 0)
            except pynvml.NVMLError_Timeout:
                return
            index = _call(pynvml.nvmlDeviceGetIndex, event.device)
            self._xids.setdefault(index, []).append({"xid": int(event.eventData), "time": timezone.now().isoformat()})
            self._xids[index] = self._xids[index][-20:]

    def health(self) -> list[GpuHealth]:
        readings = []
        try:
            if self._events is None:
                raise InventoryError("XID events cannot be watched on this node")
            self._drain_xids()
        except InventoryError as exc:
            return [GpuHealth(i, readout_error=str(exc)) for i in range(_call(pynvml.nvmlDeviceGetCount))]
        for index in range(_call(pynvml.nvmlDeviceGetCount)):
            try:
                readings.append(self._health(index))
            except (pynvml.NVMLError, InventoryError) as exc:  # e.g. GPU is lost: a failed check
                readings.append(GpuHealth(index, readout_error=str(exc)))
        return readings

    def _health(self, index: int) -> GpuHealth:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        reasons = _optional(pynvml.nvmlDeviceGetCurrentClocksEventReasons, handle) or 0
        remapped = _optional(pynvml.nvmlDeviceGetRemappedRows, handle)
        # Not supported on MIG-enabled GPUs (NVML answers NOT_SUPPORTED there): None.
        utilisation = _optional(pynvml.nvmlDeviceGetUtilizationRates, handle)
        volatile, corrected, uncorrected = (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                                            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)  # fmt: skip
        return GpuHealth(
            index=index,
            temperature_c=_optional(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
            ecc_corrected=_optional(pynvml.nvmlDeviceGetTotalEccErrors, handle, corrected, volatile),
            ecc_uncorrected=_optional(pynvml.nvmlDeviceGetTotalEccErrors, handle, uncorrected, volatile),
            ecc_uncorrected_aggregate=_optional(pynvml.nvmlDeviceGetTotalEccErrors, handle, uncorrected,
                                                pynvml.NVML_AGGREGATE_ECC),  # fmt: skip
            retired_pages_pending=_retired_pending(handle),
            xid_events=list(self._xids.get(index, [])),
            throttle_reasons=[name for bit, name in _THROTTLE_BITS.items() if reasons & bit],
            memory_used_mib=int(pynvml.nvmlDeviceGetMemoryInfo(handle).used // (1024 * 1024)),
            utilisation_pct=utilisation.gpu if utilisation is not None else None,
            memory_bandwidth_pct=utilisation.memory if utilisation is not None else None,
            remapped_rows_pending=bool(remapped[2]) if remapped else None,
            remap_failed=bool(remapped[3]) if remapped else None,
        )

    # --- profiles, discovered on the device -----------------------------------------------
    def profiles(self, handle: Any) -> dict[int, tuple[str, int]]:
        """GI profile id → (name as nvidia-smi prints it, memory slices)."""
        found: dict[int, tuple[str, int]] = {}
        for index in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, index)
            except pynvml.NVMLError:
                continue  # not supported on this GPU
            name = _text(getattr(info, "name", b"")).removeprefix("MIG ").strip()
            if not name:  # v1 structures carry no name: build it as nvidia-smi does
                suffix = "+me" if index == getattr(pynvml, "NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1", -1) else ""
                name = f"{info.sliceCount}g.{round(info.memorySizeMB / 1024)}gb{suffix}"
            found[info.id] = (name, self._placement_size(handle, info.id))
        return found

    def _placements(self, handle: Any, profile_id: int) -> list[Any]:
        count = ctypes.c_uint(0)
        _call(pynvml.nvmlDeviceGetGpuInstancePossiblePlacements, handle, profile_id, None, ctypes.byref(count))
        buffer = (pynvml.c_nvmlGpuInstancePlacement_t * max(count.value, 1))()
        _call(pynvml.nvmlDeviceGetGpuInstancePossiblePlacements, handle, profile_id, buffer, ctypes.byref(count))
        return [buffer[i] for i in range(count.value)]

    def _placement_size(self, handle: Any, profile_id: int) -> int:
        try:
            placements = self._placements(handle, profile_id)
        except InventoryError:
            return 0  # MIG disabled: placements are only listed with MIG on
        return int(placements[0].size) if placements else 0

    def _profile_id(self, handle: Any, profile: str) -> int:
        for profile_id, (name, _) in self.profiles(handle).items():
            if name == profile:
                return profile_id
        raise InvalidArgument(f"{profile} is not a profile of this GPU")

    # --- reads -----------------------------------------------------------------------------
    def gpus(self) -> list[GpuInfo]:
        result = []
        for index in range(_call(pynvml.nvmlDeviceGetCount)):
            handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
            product = _text(_call(pynvml.nvmlDeviceGetName, handle))
            memory_mib = int(_call(pynvml.nvmlDeviceGetMemoryInfo, handle).total // (1024 * 1024))
            try:
                current, pending = _call(pynvml.nvmlDeviceGetMigMode, handle)
            except NotSupported:
                current, pending = 0, 0
            devices = self._mig_devices(handle) if current else ()
            result.append(GpuInfo(index, _text(_call(pynvml.nvmlDeviceGetUUID, handle)), product,
                                  model_for(product, memory_mib), memory_mib, bool(current), bool(pending), devices))  # fmt: skip
        return result

    def _mig_devices(self, handle: Any) -> tuple[MigDeviceInfo, ...]:
        names = self.profiles(handle)
        devices = []
        for slot in range(_call(pynvml.nvmlDeviceGetMaxMigDeviceCount, handle)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError:
                continue  # empty slot
            gi_id = _call(pynvml.nvmlDeviceGetGpuInstanceId, mig)
            gi_info = _call(pynvml.nvmlGpuInstanceGetInfo, _call(pynvml.nvmlDeviceGetGpuInstanceById, handle, gi_id))
            name, _ = names.get(gi_info.profileId, (f"profile-{gi_info.profileId}", gi_info.placement.size))
            devices.append(MigDeviceInfo(
                uuid=_text(_call(pynvml.nvmlDeviceGetUUID, mig)), profile=name, start=gi_info.placement.start,
                size=gi_info.placement.size, gpu_instance_id=gi_id,
                compute_instance_id=_call(pynvml.nvmlDeviceGetComputeInstanceId, mig),
                memory_mib=int(_call(pynvml.nvmlDeviceGetMemoryInfo, mig).total // (1024 * 1024)),
            ))  # fmt: skip
        return tuple(devices)

    def possible_placements(self, index: int, profile: str) -> list[int]:
        handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
        return [int(p.start) for p in self._placements(handle, self._profile_id(handle, profile))]

    # --- writes (reconfiguration only; never called by the tests on a lent GPU) --------------
    def set_mig_mode(self, index: int, enabled: bool) -> str:
        handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        status = _call(pynvml.nvmlDeviceSetMigMode, handle, mode)
        if status == pynvml.NVML_ERROR_RESET_REQUIRED:
            return "pending-reset"
        if status == pynvml.NVML_ERROR_IN_USE:
            raise InUse("In use by another client: idle the GPU and retry")
        current, pending = _call(pynvml.nvmlDeviceGetMigMode, handle)
        return "applied" if current == pending else "pending-reset"

    def create_instance(self, index: int, profile: str, start: int) -> MigDeviceInfo:
        handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
        profile_id = self._profile_id(handle, profile)
        placement = pynvml.c_nvmlGpuInstancePlacement_t()
        placement.start = start
        placement.size = self.profiles(handle)[profile_id][1]
        gi = _call(pynvml.nvmlDeviceCreateGpuInstanceWithPlacement, handle, profile_id, placement)
        ci_profile = _call(pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo, gi,
                           _full_compute_profile(profile), pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)  # fmt: skip
        _call(pynvml.nvmlGpuInstanceCreateComputeInstance, gi, ci_profile.id)
        info = _call(pynvml.nvmlGpuInstanceGetInfo, gi)
        for device in self._mig_devices(handle):
            if device.gpu_instance_id == info.id:
                return device
        raise NotFound(f"created GPU instance {info.id} but found no MIG device for it")

    def destroy_instance(self, index: int, gpu_instance_id: int) -> None:
        handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
        gi = _call(pynvml.nvmlDeviceGetGpuInstanceById, handle, gpu_instance_id)
        for ci_profile in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            try:
                count = ctypes.c_uint(0)
                infos = (pynvml.c_nvmlComputeInstance_t * 8)()
                pynvml.nvmlGpuInstanceGetComputeInstances(gi, ci_profile, infos, ctypes.byref(count))
            except pynvml.NVMLError:
                continue
            for i in range(count.value):
                _call(pynvml.nvmlComputeInstanceDestroy, infos[i])
        _call(pynvml.nvmlGpuInstanceDestroy, gi)


def _retired_pending(handle: Any) -> bool | None:
    """Pre-Ampere page retirement pending a reset (Ampere+ remap rows instead: None there)."""
    status = _optional(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
    return None if status is None else bool(status)


def _full_compute_profile(profile: str) -> int:
    slices = int(profile.split("g.")[0])
    return {1: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE, 2: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE,
            3: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE, 4: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE,
            7: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE}[slices]  # fmt: skip
