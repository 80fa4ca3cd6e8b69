"""Periodic health sweep (Celery beat, every APPLIANCE_HEALTH_PERIOD_S)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import tritonclient.grpc as triton_grpc
from celery import shared_task
from django.conf import settings
from django.db import connection
from django.utils import timezone

from appliance.nodes import workloads
from appliance.nodes.health import GpuFacts, NodeFacts, Thresholds, evaluate
from appliance.nodes.models import Node
from appliance.nodes.services import node_set_health

log = logging.getLogger(__name__)
_SWEEP_LOCK = 0x4845414C5448  # "HEALTH"


def _probe_mig(devices: list[tuple[str, str, str]]) -> list[str]:
    """Reasons for every per-MIG-device Triton that does not answer ready."""
    problems = []
    for device_uuid, profile, address in devices:
        error, _ = _probe(address, [])
        if error:
            problems.append(f"Triton on {profile} ({device_uuid}) did not answer: {error}")
    return problems


def _probe(address: str, models: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """('' or why Triton failed, models not ready) — asked from the control plane, not the agent.
    A probe that only ran out of time is asked once more before it counts: a Triton busy for a
    moment (engines starting on a saturated host) is not a dead one, and one failed check takes
    the node out of routing. A refused connection or a wrong answer counts at once."""
    error, missing, timed_out = _probe_once(address, models)
    if timed_out:
        error, missing, _ = _probe_once(address, models)
    return error, missing


def _probe_once(address: str, models: list[tuple[str, str]]) -> tuple[str, list[str], bool]:
    """(error, models not ready, whether the error is only that time ran out)."""
    if not address:
        return "the node has no Triton address", [], False
    timeout = settings.HEALTH_PROBE_TIMEOUT_S
    try:
        client = triton_grpc.InferenceServerClient(address)
        try:
            if not client.is_server_live(client_timeout=timeout):
                return "not live", [], False
            if not client.is_server_ready(client_timeout=timeout):
                return "not ready", [], False
            missing = [f"{m}:{v}" for m, v in models if not client.is_model_ready(m, v, client_timeout=timeout)]
            return "", missing, False
        finally:
            client.close()
    except triton_grpc.InferenceServerException as exc:  # unreachable, timed out, hung: a failed check
        timed_out = exc.status() == str(grpc.StatusCode.DEADLINE_EXCEEDED)
        return (exc.message() or str(exc))[:200], [], timed_out
    except Exception as exc:
        return str(exc)[:200], [], False


def thresholds() -> Thresholds:
    return Thresholds(
        temp_degraded_c=settings.HEALTH_TEMP_DEGRADED_C,
        temp_unhealthy_c=settings.HEALTH_TEMP_UNHEALTHY_C,
        ecc_corrected_degraded=settings.HEALTH_ECC_CORRECTED_DEGRADED,
        xid_window_s=settings.HEALTH_XID_WINDOW_S,
        heartbeat_stale_s=settings.NODE_STALE_AFTER_S,
    )


def sweep() -> dict[str, str]:
    """One health sweep of every node; returns node → health."""
    nodes = list(Node.objects.prefetch_related("gpus__mig_devices"))
    live: dict[str, list[tuple[str, str]]] = {}
    for workload in workloads.resident(live_only=True):
        live.setdefault(workload.node_id, []).append((workload.model, str(workload.version)))
    mig = {n.pk: [(d.uuid, d.profile, d.grpc_address) for g in n.gpus.all() for d in g.mig_devices.all()] for n in nodes}
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(nodes)))) as pool:
        probes = dict(zip([n.pk for n in nodes], pool.map(lambda n: _probe(n.grpc_address, live.get(str(n.pk), [])), nodes), strict=True))
        mig_problems = dict(zip([n.pk for n in nodes], pool.map(lambda n: _probe_mig(mig[n.pk]), nodes), strict=True))
    # The heartbeats as of now, read after the probes: probing a fleet can take seconds (a node
    # that does not answer costs its timeout), and a heartbeat read before them would look that
    # much older than it is — every node "silent" because another one is slow to answer.
    heartbeats = dict(Node.objects.values_list("pk", "last_heartbeat"))
    now = timezone.now()
    limits = thresholds()
    result = {}
    for node in nodes:
        probe_error, not_ready = probes[node.pk]
        facts = NodeFacts(
            name=node.name, now=now, last_heartbeat=heartbeats.get(node.pk, node.last_heartbeat),
            agent_triton_ready=node.triton_ready,
            probe_error=probe_error, models_not_ready=not_ready, mig_problems=mig_problems[node.pk],
            gpus=[GpuFacts(g.index, g.temperature_c, g.ecc_corrected, g.ecc_uncorrected, g.xid_events,
                           g.throttle_reasons, g.remapped_rows_pending, g.remap_failed, g.readout_error, g.readout_time,
                           g.ecc_uncorrected_aggregate, g.retired_pages_pending)
                  for g in node.gpus.all()],
            fault=node.fault,
        )  # fmt: skip
        health, reasons = evaluate(facts, limits)
        if node_set_health(node_id=node.pk, health=health, reasons=reasons):
            log.info("node %s is now %s: %s", node.name, health, "; ".join(reasons) or "all checks passed")
        result[node.name] = health
    return result


@shared_task(name="nodes.health_sweep", ignore_result=True)
def health_sweep() -> None:
    """Skips when another sweep still runs (the database decides, not the broker)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [_SWEEP_LOCK])
            if not cursor.fetchone()[0]:
                return
        try:
            sweep()
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_SWEEP_LOCK])
    else:
        sweep()
