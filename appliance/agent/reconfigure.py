"""The steps of a MIG reconfiguration, run by the node agent on its own queue.

preflight → drain → wait_inflight → unload → mig_mode → repartition →
start_tritons → reload → verify → undrain. Every step is recorded (and audited).
Any failure restores the previous layout and its Tritons, returns the node to the
operator's state and leaves a fault (degraded) with the reason. A run found
already running when its task arrives is a re-delivery after the agent died: it
is rolled back the same way, so no node is left half-partitioned.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request

from django.conf import settings

from appliance.agent import control
from appliance.agent.control import Reconfiguration
from appliance.agent.runtime import LocalNode
from appliance.core.process import wait_until
from appliance.core.tritonserver import triton_ready
from appliance.nodes.choices import RECONFIGURATION_STEPS, AdminState
from appliance.nodes.inventory.base import InventoryError, NotFound, ResetRequired
from appliance.nodes.mig.catalog import gpu_model
from appliance.nodes.mig.planner import plan

log = logging.getLogger(__name__)


class StepFailed(RuntimeError):
    """A step could not do its work."""


def _gpu(local: LocalNode, index: int):  # type: ignore[no-untyped-def]
    for gpu in local.inventory.gpus():
        if gpu.index == index:
            return gpu
    raise StepFailed(f"GPU {index} is not in this node's inventory")


def _report(local: LocalNode) -> None:
    control.node_report_inventory(gpus=local.inventory.gpus())
    control.node_set_mig_endpoints(addresses=local.mig_servers.addresses(), metrics=local.mig_servers.metrics_addresses())


def _pending_requests(metrics_address: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nv_inference_pending_request_count"))  # fmt: skip


# --- the steps -------------------------------------------------------------------------------
def preflight(local: LocalNode, run: Reconfiguration) -> str:
    gpu = _gpu(local, run.gpu_index)
    if gpu.model is None:
        raise StepFailed(f"GPU {run.gpu_index} ({gpu.product}) is not MIG-capable")
    result = plan(gpu_model(gpu.model), run.layout)
    if not result.ok:
        raise StepFailed(result.reason)
    moves, problem = control.plan_moves(gpu_index=run.gpu_index, placements=run.placements)
    if problem:
        raise StepFailed(problem)
    run.moves = moves
    return f"{gpu.model}: {' '.join(str(p) for p in result.placements) or 'MIG off'}"


def drain(local: LocalNode, run: Reconfiguration) -> str:
    if control.node_admin_state() == AdminState.ACTIVE:
        control.node_set_admin_state(admin_state=AdminState.DRAINING)
    return f"node was {run.previous_admin_state}; now draining"


def wait_inflight(local: LocalNode, run: Reconfiguration) -> str:
    # The gateway re-reads the fleet every GATEWAY_REFRESH_S: let it see the drain first.
    time.sleep(2 * settings.GATEWAY_REFRESH_S)
    mig = [supervisor.ports.metrics_address for _, supervisor in local.mig_servers.servers.values()]
    addresses = [control.node_metrics_address(), *mig]
    if not wait_until(lambda: sum(_pending_requests(a) for a in addresses) == 0,
                      timeout=settings.RECONFIG_DRAIN_TIMEOUT_S, interval=0.2):  # fmt: skip
        raise StepFailed(f"requests still in flight after {settings.RECONFIG_DRAIN_TIMEOUT_S:.0f} s")
    return "no request in flight"


def unload(local: LocalNode, run: Reconfiguration) -> str:
    gpu = _gpu(local, run.gpu_index)
    stopped = [d.uuid for d in gpu.mig_devices if d.uuid in local.mig_servers.servers]
    for uuid in stopped:
        local.mig_servers.stop(uuid)  # graceful: Triton finishes in-flight work and unloads
    return f"stopped {len(stopped)} MIG Triton(s)"


def mig_mode(local: LocalNode, run: Reconfiguration) -> str:
    gpu = _gpu(local, run.gpu_index)
    want = bool(run.layout)
    if gpu.mig_current == want and gpu.mig_pending == want:
        return f"MIG already {'on' if want else 'off'}"
    if not want:
        for device in gpu.mig_devices:
            local.inventory.destroy_instance(run.gpu_index, device.gpu_instance_id)
    status = local.inventory.set_mig_mode(run.gpu_index, want)
    if status == "pending-reset":
        if not hasattr(local.inventory, "reset"):
            raise ResetRequired("the MIG mode change needs a GPU reset (nvidia-smi -r) on this GPU generation")
        local.inventory.reset(run.gpu_index)  # the node is drained and the GPU idle: safe to reset
        return f"MIG {'enabled' if want else 'disabled'} after a GPU reset"
    return f"MIG {'enabled' if want else 'disabled'}"


def repartition(local: LocalNode, run: Reconfiguration) -> str:
    gpu = _gpu(local, run.gpu_index)
    for device in gpu.mig_devices:
        local.inventory.destroy_instance(run.gpu_index, device.gpu_instance_id)
    created = [local.inventory.create_instance(run.gpu_index, p["profile"], p["start"]) for p in run.placements]
    return ", ".join(f"{d.profile}@{d.start}={d.uuid}" for d in created) or "no instances"


def start_tritons(local: LocalNode, run: Reconfiguration) -> str:
    devices = _gpu(local, run.gpu_index).mig_devices
    addresses = [local.mig_servers.start(d) for d in devices]
    _report(local)
    return ", ".join(addresses) or "no MIG devices"


def _move_slices(local: LocalNode, run: Reconfiguration, pairs: list[tuple[str, str, str | None]]) -> None:
    """Replicas and dedications follow (old uuid → new uuid); then load them there."""
    from appliance.agent.sync import reload_live_models

    for source, target, tenant in pairs:
        control.slice_move(from_uuid=source, to_uuid=target, tenant_id=tenant)
    for target in {t for _, t, _ in pairs}:
        reload_live_models(local, mig_uuid=target)


def reload(local: LocalNode, run: Reconfiguration) -> str:
    from appliance.agent.sync import reload_live_models

    reload_live_models(local)  # the node's main Triton keeps its models; make sure they are all loaded
    by_start = {d.start: d.uuid for d in _gpu(local, run.gpu_index).mig_devices}
    pairs = [(m["from"], by_start[run.placements[m["to"]]["start"]], m["tenant"]) for m in run.moves]
    control.reconfiguration_record_moved(run=run, moved={source: target for source, target, _ in pairs})
    _move_slices(local, run, pairs)
    return f"live models loaded; {len(pairs)} slice(s) moved" if pairs else "live models loaded"


def verify(local: LocalNode, run: Reconfiguration) -> str:
    gpu = _gpu(local, run.gpu_index)
    layout = sorted(f"{d.profile}@{d.start}" for d in gpu.mig_devices)
    wanted = sorted(f"{p['profile']}@{p['start']}" for p in run.placements)
    if layout != wanted:
        raise StepFailed(f"the GPU shows {layout}, not the planned {wanted}")
    down = [d.uuid for d in gpu.mig_devices if not triton_ready(local.mig_servers.address(d.uuid))]
    if down or not triton_ready(local.triton_grpc):
        raise StepFailed(f"Triton not ready on {', '.join(down) or 'the main server'}")
    for target in run.moved.values():
        client = local.endpoint(target).client()
        for version in control.live_versions(mig_uuid=target):
            if not client.is_model_ready(version.model.name, str(version.number)):
                raise StepFailed(f"{version} is not ready on its new slice {target}")
    return "layout, Tritons and moved replicas verified"


def undrain(local: LocalNode, run: Reconfiguration) -> str:
    control.node_set_admin_state(admin_state=run.previous_admin_state)
    return f"node back to {run.previous_admin_state}"


STEPS = {name: globals()[name] for name in RECONFIGURATION_STEPS}


# --- the run ------------------------------------------------------------------------------
def restore(local: LocalNode, run: Reconfiguration, reason: str) -> None:
    """Back to the layout before the run, its Tritons, and the operator's node state."""
    step = control.reconfiguration_step_start(run=run, name="restore")
    try:
        gpu = _gpu(local, run.gpu_index)
        for device in gpu.mig_devices:
            local.mig_servers.stop(device.uuid)
            try:
                local.inventory.destroy_instance(run.gpu_index, device.gpu_instance_id)
            except NotFound:
                pass
        if run.previous:
            if not _gpu(local, run.gpu_index).mig_current:
                if local.inventory.set_mig_mode(run.gpu_index, True) == "pending-reset":
                    local.inventory.reset(run.gpu_index)
            for placement in run.previous:
                local.inventory.create_instance(run.gpu_index, placement["profile"], placement["start"])
            for device in _gpu(local, run.gpu_index).mig_devices:
                local.mig_servers.start(device)
        _report(local)
        # Slices come back at their old places (with new uuids): their replicas and tenants follow.
        by_start = {d.start: d.uuid for d in _gpu(local, run.gpu_index).mig_devices}
        moved = control.reconfiguration_moved(run=run)
        pairs: list[tuple[str, str, str | None]] = []
        for entry in run.previous:
            for source in {entry.get("uuid"), moved.get(entry.get("uuid", ""))} - {None, ""}:
                pairs.append((str(source), by_start[entry["start"]], entry.get("tenant")))
        _move_slices(local, run, pairs)
        control.node_set_admin_state(admin_state=run.previous_admin_state)
        control.reconfiguration_step_end(step=step, state="succeeded", detail="previous layout restored")
        control.reconfiguration_finish(run=run, succeeded=False, error=reason)
    except Exception as exc:  # keep traffic away from a node we could not put back
        log.exception("restore of %s failed", run.pk)
        control.reconfiguration_step_end(step=step, state="failed", detail=str(exc))
        control.node_set_admin_state(admin_state=AdminState.MAINTENANCE)
        control.reconfiguration_finish(run=run, succeeded=False, error=f"{reason}; restore failed too: {exc}")


def run_reconfiguration(local: LocalNode, reconfiguration_id: str) -> None:
    run, redelivered = control.reconfiguration_claim(reconfiguration_id=reconfiguration_id)
    if run is None:
        return
    if redelivered:
        restore(local, run, f"interrupted at step {run.step or 'start'} (the node agent stopped mid-run)")
        return
    for name in RECONFIGURATION_STEPS:
        step = control.reconfiguration_step_start(run=run, name=name)
        try:
            if run.inject_failure_at == f"kill:{name}":
                os._exit(17)  # fault injection: the agent dies mid-run, as a crash would
            if run.inject_failure_at == name:
                raise StepFailed(f"fault injected at step {name}")
            detail = STEPS[name](local, run)
        except (StepFailed, InventoryError, OSError, RuntimeError) as exc:
            control.reconfiguration_step_end(step=step, state="failed", detail=str(exc))
            restore(local, run, f"step {name} failed: {exc}")
            return
        control.reconfiguration_step_end(step=step, state="succeeded", detail=detail)
    control.reconfiguration_finish(run=run, succeeded=True)
