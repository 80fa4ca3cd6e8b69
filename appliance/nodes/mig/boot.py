"""The node's declared MIG layout, restored at boot before the node agent starts.

MIG instances do not survive a reboot (MIG mode does); the control plane holds what each
GPU is declared to carry (its MigDevice rows, the reconfiguration workflow's result). The
boot unit the provisioning installs (ansible/roles/nvidia_mig) reads that layout with the
node's own credential and puts it back through the agent's NVML inventory, so the layout
is never hand-edited on the node and the agent starts on the slices it expects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from appliance.nodes.inventory.base import Inventory

Declared = Mapping[int, Sequence[tuple[str, int]]]  # GPU index -> [(profile, start)]


class LayoutError(RuntimeError):
    """The declared layout cannot be restored as it is (the boot unit fails, saying why)."""


def restore(inventory: Inventory, declared: Declared) -> list[str]:
    """Makes each declared GPU carry exactly its declared instances; returns what was done.
    A GPU whose instances already match is left alone (the unit is idempotent); MIG mode is
    the reconfiguration workflow's to change, so a declared GPU without it is refused."""
    done: list[str] = []
    gpus = {g.index: g for g in inventory.gpus()}
    for index, placements in sorted(declared.items()):
        gpu = gpus.get(index)
        if gpu is None:
            raise LayoutError(f"the control plane declares a layout for GPU {index}, which this node does not have")
        if not gpu.mig_current:
            raise LayoutError(f"GPU {index} is not in MIG mode (mode changes go through a reconfiguration)")
        want = sorted((str(p), int(s)) for p, s in placements)
        have = sorted((d.profile, d.start) for d in gpu.mig_devices)
        if want == have:
            done.append(f"GPU {index}: {len(want)} instances as declared")
            continue
        for device in gpu.mig_devices:
            inventory.destroy_instance(index, device.gpu_instance_id)
        for profile, start in want:
            inventory.create_instance(index, profile, start)
        done.append(f"GPU {index}: restored {', '.join(f'{p}@{s}' for p, s in want) or 'no instances'}")
    return done
