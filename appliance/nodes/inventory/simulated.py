"""Simulated GPUs with NVML's semantics, for machines without a GPU (development, CI).

State lives in a JSON file per node (so it survives agent restarts, as a GPU's
does across processes), guarded by a file lock. What NVML would refuse, this
refuses with the same error: creating where memory slices are taken or a
profile's maximum is reached (INSUFFICIENT_RESOURCES), destroying or switching
MIG mode while a process holds an instance (IN_USE), creating before a pending
Ampere mode change has been applied by a reset (RESET_REQUIRED), acting without
permission (NO_PERMISSION), MIG calls with MIG disabled (NOT_SUPPORTED).
Processes (a Triton bound to a MIG device) are registered with `attach`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.nodes.inventory.base import (
    GpuHealth,
    GpuInfo,
    InsufficientResources,
    InUse,
    InvalidArgument,
    MigDeviceInfo,
    NoPermission,
    NotFound,
    NotSupported,
    ResetRequired,
)
from appliance.nodes.mig.catalog import gpu_model
from appliance.nodes.mig.planner import Placement, valid_placements

_HEALTHY: dict[str, Any] = {
    "temperature_c": 45, "ecc_corrected": 0, "ecc_uncorrected": 0, "ecc_uncorrected_aggregate": 0,
    "retired_pages_pending": False, "xid_events": [], "throttle_reasons": [],
    "memory_used_mib": 0, "utilisation_pct": 0, "memory_bandwidth_pct": 0, "remapped_rows_pending": False, "remap_failed": False, "fail_readout": False,
}  # fmt: skip

# Ampere keeps MIG mode in the InfoROM and switches it on a GPU reset; Hopper and later switch at once.
_NEEDS_RESET = ("A100", "A30")


@dataclass
class SimulatedInventory:
    state_path: Path | None = None
    models: tuple[str, ...] = ()
    name: str = "simulated"

    def __post_init__(self) -> None:
        if self.state_path is not None and not self.state_path.exists():
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            gpus = [
                {"index": i, "uuid": f"GPU-{uuid.uuid4()}", "model": m, "mig_current": False, "mig_pending": False,
                 "instances": [], "busy": {}, "next_gi": 1}
                for i, m in enumerate(self.models)
            ]  # fmt: skip
            for model in self.models:
                gpu_model(model)  # unknown names fail here, loudly
            self._write({"permission": True, "gpus": gpus})

    @classmethod
    def empty(cls) -> SimulatedInventory:
        return cls(state_path=None, models=(), name="none")

    # --- state -------------------------------------------------------------------------
    def _write(self, state: dict[str, Any]) -> None:
        assert self.state_path is not None
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _state(self, *, write: bool = False) -> Iterator[dict[str, Any]]:
        if self.state_path is None:
            yield {"permission": True, "gpus": []}
            return
        lock = self.state_path.with_suffix(".lock")
        with lock.open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            state = json.loads(self.state_path.read_text())
            yield state
            if write:
                self._write(state)

    def _gpu(self, state: dict[str, Any], index: int) -> dict[str, Any]:
        for gpu in state["gpus"]:
            if gpu["index"] == index:
                return gpu
        raise NotFound(f"no GPU {index}")

    def _writable(self, state: dict[str, Any]) -> None:
        if not state["permission"]:
            raise NoPermission("Insufficient Permissions: MIG configuration needs root or the mig/config capability")

    # --- reads ---------------------------------------------------------------------------
    def gpus(self) -> list[GpuInfo]:
        with self._state() as state:
            result = []
            for gpu in state["gpus"]:
                model = gpu_model(gpu["model"])
                memory = int(model.profiles[-1].memory_gib * 1024)
                devices = tuple(
                    MigDeviceInfo(uuid=i["uuid"], profile=i["profile"], start=i["start"], size=i["size"],
                                  gpu_instance_id=i["gi"], memory_mib=int(model.profile(i["profile"]).memory_gib * 1024))  # type: ignore[union-attr]  # fmt: skip
                    for i in gpu["instances"]
                )
                result.append(GpuInfo(gpu["index"], gpu["uuid"], f"Simulated {model.name}", model.name, memory,
                                      gpu["mig_current"], gpu["mig_pending"], devices))  # fmt: skip
            return result

    def health(self) -> list[GpuHealth]:
        with self._state() as state:
            readings = []
            for gpu in state["gpus"]:
                signals = {**_HEALTHY, **gpu.get("health", {})}
                if signals.pop("fail_readout"):
                    readings.append(GpuHealth(gpu["index"], readout_error="GPU is lost (simulated NVML_ERROR_GPU_IS_LOST)"))
                    continue
                readings.append(GpuHealth(gpu["index"], **signals))
            return readings

    def inject(self, index: int, **signals: Any) -> None:
        """Sets health signals of a GPU (temperature_c, ecc_*, throttle_reasons, remapped_rows_pending,
        remap_failed, fail_readout); `xid=N` records an XID event now; `clear=True` resets all."""
        from django.utils import timezone

        with self._state(write=True) as state:
            gpu = self._gpu(state, index)
            if signals.pop("clear", False):
                gpu["health"] = {}
            current = gpu.setdefault("health", {})
            xid = signals.pop("xid", None)
            if xid is not None:
                current.setdefault("xid_events", []).append({"xid": int(xid), "time": timezone.now().isoformat()})
            unknown = set(signals) - set(_HEALTHY)
            if unknown:
                raise ValueError(f"unknown health signals {sorted(unknown)}")
            current.update(signals)

    def possible_placements(self, index: int, profile: str) -> list[int]:
        with self._state() as state:
            gpu = self._gpu(state, index)
            if not gpu["mig_current"]:
                raise NotSupported(f"MIG mode is disabled on GPU {index}")
            model = gpu_model(gpu["model"])
            if model.profile(profile) is None:
                raise InvalidArgument(f"{profile} is not a profile of {model.name}")
            occupied = [Placement(i["profile"], i["start"], i["size"]) for i in gpu["instances"]]
            return valid_placements(model, profile, occupied)

    # --- writes --------------------------------------------------------------------------
    def set_mig_mode(self, index: int, enabled: bool) -> str:
        with self._state(write=True) as state:
            self._writable(state)
            gpu = self._gpu(state, index)
            if gpu["busy"]:
                raise InUse(f"In use by another client: processes hold GPU {index}")
            if not enabled and gpu["instances"]:
                raise InUse(f"In use by another client: GPU {index} still has MIG instances")
            gpu["mig_pending"] = enabled
            if gpu["model"].startswith(_NEEDS_RESET) and gpu["mig_current"] != enabled:
                return "pending-reset"
            gpu["mig_current"] = enabled
            return "applied"

    def reset(self, index: int) -> None:
        """A GPU reset: applies a pending MIG mode; instances do not survive it."""
        with self._state(write=True) as state:
            self._writable(state)
            gpu = self._gpu(state, index)
            if gpu["busy"]:
                raise InUse(f"In use by another client: cannot reset GPU {index}")
            gpu["mig_current"] = gpu["mig_pending"]
            gpu["instances"] = []

    def create_instance(self, index: int, profile: str, start: int) -> MigDeviceInfo:
        with self._state(write=True) as state:
            self._writable(state)
            gpu = self._gpu(state, index)
            if gpu["mig_pending"] != gpu["mig_current"]:
                raise ResetRequired(f"MIG mode change on GPU {index} is pending: reset the GPU first")
            if not gpu["mig_current"]:
                raise NotSupported(f"MIG mode is disabled on GPU {index}")
            model = gpu_model(gpu["model"])
            spec = model.profile(profile)
            if spec is None:
                raise InvalidArgument(f"{profile} is not a profile of {model.name}")
            if start not in spec.starts:
                raise InvalidArgument(f"{profile} cannot start at {start} (allowed: {list(spec.starts)})")
            same = sum(1 for i in gpu["instances"] if i["profile"] == profile)
            occupied = [Placement(i["profile"], i["start"], i["size"]) for i in gpu["instances"]]
            if same >= spec.max_count or start not in valid_placements(model, profile, occupied):
                raise InsufficientResources(f"Insufficient Resources: cannot create {profile} at {start} on GPU {index}")
            instance = {"gi": gpu["next_gi"], "profile": profile, "start": start, "size": spec.memory_slices,
                        "uuid": f"MIG-{uuid.uuid4()}"}  # fmt: skip
            gpu["next_gi"] += 1
            gpu["instances"].append(instance)
            return MigDeviceInfo(instance["uuid"], profile, start, spec.memory_slices, instance["gi"],
                                 memory_mib=int(spec.memory_gib * 1024))  # fmt: skip

    def destroy_instance(self, index: int, gpu_instance_id: int) -> None:
        with self._state(write=True) as state:
            self._writable(state)
            gpu = self._gpu(state, index)
            instance = next((i for i in gpu["instances"] if i["gi"] == gpu_instance_id), None)
            if instance is None:
                raise NotFound(f"no GPU instance {gpu_instance_id} on GPU {index}")
            if instance["uuid"] in gpu["busy"]:
                raise InUse(f"In use by another client: GPU instance {gpu_instance_id} on GPU {index}")
            gpu["instances"].remove(instance)

    # --- simulation controls (what a CUDA process or an operator would do) ------------------
    def attach(self, device_uuid: str, owner: str) -> None:
        """A process (e.g. a Triton) starts using a GPU or MIG device."""
        with self._state(write=True) as state:
            for gpu in state["gpus"]:
                if device_uuid == gpu["uuid"] or any(i["uuid"] == device_uuid for i in gpu["instances"]):
                    gpu["busy"][device_uuid] = owner
                    return
            raise NotFound(f"no device {device_uuid}")

    def detach(self, device_uuid: str) -> None:
        with self._state(write=True) as state:
            for gpu in state["gpus"]:
                gpu["busy"].pop(device_uuid, None)

    def set_permission(self, allowed: bool) -> None:
        with self._state(write=True) as state:
            state["permission"] = allowed
