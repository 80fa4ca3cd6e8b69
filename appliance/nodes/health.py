"""Health evaluation: the facts gathered by a sweep → healthy, degraded or unhealthy, with reasons.

Fail closed: a check that could not run (agent silent, Triton not answering, a
GPU read-out that failed) counts as a failure, never as a pass. Thresholds come
from settings (APPLIANCE_HEALTH_*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from appliance.nodes.choices import Health

# XIDs that mean the GPU (or its memory) can no longer be trusted: double-bit ECC (48),
# fallen off the bus (79), uncorrectable contained/uncontained ECC (94, 95), NVLink (74),
# GSP and recovery actions (119, 120, 154), row-remap failure (64), internal micro-controller (62).
FATAL_XIDS = frozenset({48, 62, 64, 74, 79, 94, 95, 119, 120, 154})
HW_THROTTLE = frozenset({"HwSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown"})


@dataclass(frozen=True)
class Thresholds:
    temp_degraded_c: int = 85
    temp_unhealthy_c: int = 95
    ecc_corrected_degraded: int = 1000
    xid_window_s: int = 600
    heartbeat_stale_s: float = 10.0


@dataclass
class GpuFacts:
    index: int
    temperature_c: int | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    xid_events: list[dict[str, Any]] = field(default_factory=list)
    throttle_reasons: list[str] = field(default_factory=list)
    remapped_rows_pending: bool | None = None
    remap_failed: bool | None = None
    readout_error: str = ""
    readout_time: datetime | None = None
    ecc_uncorrected_aggregate: int | None = None
    retired_pages_pending: bool | None = None


@dataclass
class NodeFacts:
    name: str
    now: datetime
    last_heartbeat: datetime | None
    agent_triton_ready: bool
    probe_error: str  # '' when the control plane's own Triton probe passed
    models_not_ready: list[str] = field(default_factory=list)
    gpus: list[GpuFacts] = field(default_factory=list)
    fault: str = ""  # left by a failed (rolled-back) reconfiguration until cleared
    mig_problems: list[str] = field(default_factory=list)  # per-MIG-device Tritons not answering


def _gpu(gpu: GpuFacts, facts: NodeFacts, t: Thresholds) -> tuple[list[str], list[str]]:
    bad: list[str] = []
    poor: list[str] = []
    where = f"GPU {gpu.index}"
    if gpu.readout_error:
        bad.append(f"{where}: health read-out failed ({gpu.readout_error})")
    elif gpu.readout_time is None or (facts.now - gpu.readout_time).total_seconds() > t.heartbeat_stale_s:
        bad.append(f"{where}: no recent health read-out")
    if gpu.temperature_c is not None:
        if gpu.temperature_c >= t.temp_unhealthy_c:
            bad.append(f"{where}: temperature {gpu.temperature_c} °C ≥ {t.temp_unhealthy_c} °C")
        elif gpu.temperature_c >= t.temp_degraded_c:
            poor.append(f"{where}: temperature {gpu.temperature_c} °C ≥ {t.temp_degraded_c} °C")
    if gpu.ecc_uncorrected:
        bad.append(f"{where}: {gpu.ecc_uncorrected} uncorrectable ECC errors")
    if gpu.ecc_uncorrected_aggregate and not gpu.ecc_uncorrected:
        poor.append(f"{where}: {gpu.ecc_uncorrected_aggregate} uncorrectable ECC errors in its lifetime")
    if gpu.retired_pages_pending:
        poor.append(f"{where}: retired pages pending a reset")
    if gpu.ecc_corrected is not None and gpu.ecc_corrected >= t.ecc_corrected_degraded:
        poor.append(f"{where}: {gpu.ecc_corrected} corrected ECC errors ≥ {t.ecc_corrected_degraded}")
    recent = facts.now - timedelta(seconds=t.xid_window_s)
    for event in gpu.xid_events:
        time = datetime.fromisoformat(event["time"])
        if time < recent:
            continue
        target = bad if event["xid"] in FATAL_XIDS else poor
        target.append(f"{where}: XID {event['xid']} at {event['time']}")
    if gpu.remap_failed:
        bad.append(f"{where}: row remapping failed")
    elif gpu.remapped_rows_pending:
        poor.append(f"{where}: remapped rows pending a reset")
    throttled = sorted(set(gpu.throttle_reasons) & HW_THROTTLE)
    if throttled:
        poor.append(f"{where}: clocks throttled ({', '.join(throttled)})")
    return bad, poor


def evaluate(facts: NodeFacts, thresholds: Thresholds) -> tuple[str, list[str]]:
    bad: list[str] = []
    poor: list[str] = []
    if facts.last_heartbeat is None:
        bad.append("the node agent has never reported")
    else:
        silent = (facts.now - facts.last_heartbeat).total_seconds()
        if silent > thresholds.heartbeat_stale_s:
            bad.append(f"the node agent has been silent for {silent:.0f} s")
    if facts.probe_error:
        bad.append(f"Triton did not answer the control plane: {facts.probe_error}")
    elif not facts.agent_triton_ready:
        bad.append("the node agent reports its Triton not ready")
    poor.extend(f"model {name} is not ready" for name in facts.models_not_ready)
    poor.extend(facts.mig_problems)
    if facts.fault:
        poor.append(facts.fault)
    for gpu in facts.gpus:
        gpu_bad, gpu_poor = _gpu(gpu, facts, thresholds)
        bad.extend(gpu_bad)
        poor.extend(gpu_poor)
    if bad:
        return Health.UNHEALTHY, bad + poor
    if poor:
        return Health.DEGRADED, poor
    return Health.HEALTHY, []
