"""Moves rollouts forward: judged from what PostgreSQL and the gateway statistics say
now, never from what a worker remembers.

`tick` runs on the control queue every ROLLOUT_TICK_S (Celery beat) and after
every replica event. Each call looks at every rollout in progress and takes at
most one step of it under the deployment's row lock, so a worker killed at any
point leaves a state the next tick (on any worker) continues from: replicas
still loading are waited for (or re-sent when their task was lost), a traffic
step is judged again over its window, and a rollout never stays split without
a gate watching it.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.utils import timezone

from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.gateway import stats
from appliance.nodes import dispatch
from appliance.rollouts import services
from appliance.rollouts.choices import ACTIVE_DEPLOYMENT_STATES, DeploymentState, ReplicaState
from appliance.rollouts.models import Deployment

log = logging.getLogger(__name__)


def judge(deployment: Deployment, now: float) -> tuple[str, dict[str, Any]]:
    """'breach', 'pass' or 'wait' for the current step, with the numbers.

    The new version is measured over the step so far; the old one over the same
    window, or, where the step sends it nothing (100%, as in blue-green), over an
    equally long window just before the step began."""
    gate = deployment.gate
    started = deployment.step_started.timestamp() if deployment.step_started else now
    model = deployment.version.model.name
    new = stats.window(model, str(deployment.version.number), started, now)
    old_stats = None
    if deployment.previous is not None:
        old_version = str(deployment.previous.version.number)
        if deployment.traffic_percent >= 100:
            span = max(now - started, float(deployment.step_seconds), 1.0)
            old_stats = stats.window(model, old_version, started - span, started)
        else:
            old_stats = stats.window(model, old_version, started, now)
    old = old_stats or stats.WindowStats(0, 0, 0.0)
    record: dict[str, Any] = {
        "step": deployment.step_index, "percent": deployment.traffic_percent,
        "at": timezone.now().isoformat(), "new": new.as_dict(), "old": old.as_dict(),
    }  # fmt: skip
    enough = new.requests >= gate["min_requests"]
    if enough:
        increase = new.error_rate - old.error_rate
        if increase > gate["max_error_rate_increase"]:
            record["failed_gate"] = "success_rate"
            record["reason"] = (
                f"success-rate gate failed at {deployment.traffic_percent}%: new version {1 - new.error_rate:.1%} "
                f"({new.errors} errors in {new.requests}) vs old {1 - old.error_rate:.1%} "
                f"({old.errors} in {old.requests}); allowed drop {gate['max_error_rate_increase']:.1%}"
            )
            return "breach", record
        if old.requests >= gate["min_requests"]:
            q = gate["latency_quantile"]
            new_ms, old_ms = new.quantile_ms(q), old.quantile_ms(q)
            limit = max(old_ms * gate["max_latency_ratio"], old_ms + gate["latency_slack_ms"])
            # A tail judged before the step's end only when it is far off: short windows are noisy.
            if new_ms > 2 * limit or (new_ms > limit and now - started >= deployment.step_seconds):
                record["failed_gate"] = "latency"
                record["reason"] = (
                    f"latency gate failed at {deployment.traffic_percent}%: new version p{q * 100:g} {new_ms:.1f} ms "
                    f"vs old {old_ms:.1f} ms (limit {limit:.1f} ms)"
                )
                return "breach", record
            ratio = gate.get("min_tokens_per_s_ratio", 0.0)  # (deployments made before it have none)
            if ratio and new.tokens_per_s and old.tokens_per_s:
                floor = old.tokens_per_s * ratio
                # Judged at the step's end, or before it when far off, as the latency is.
                if new.tokens_per_s < floor / 2 or (new.tokens_per_s < floor and now - started >= deployment.step_seconds):
                    record["failed_gate"] = "tokens_per_s"
                    record["reason"] = (
                        f"tokens/s gate failed at {deployment.traffic_percent}%: new version decodes "
                        f"{new.tokens_per_s:.1f} tokens/s vs old {old.tokens_per_s:.1f} (floor {floor:.1f})"
                    )
                    return "breach", record
    if now - started < deployment.step_seconds:
        return "wait", record
    if not enough:
        record["waiting"] = f"{new.requests} of {gate['min_requests']} requests needed before the gate can judge"
        return "wait", record
    return "pass", record


def advance(deployment_id: UUID | str) -> str:
    """One step of one rollout; returns what it did (for logs and tests)."""
    deployment = Deployment.objects.select_related("version__model", "previous__version").filter(pk=deployment_id).first()
    if deployment is None or deployment.state not in ACTIVE_DEPLOYMENT_STATES or deployment.paused:
        return "idle"
    if deployment.state == DeploymentState.PENDING:
        return _resend_start(deployment)
    if deployment.state == DeploymentState.ROLLING_OUT:
        return _loading(deployment)
    verdict, record = judge(deployment, time.time())
    if verdict == "breach":
        services.deployment_roll_back(deployment_id=deployment.pk, reason=record["reason"], verdict=record)
        log.warning("rollout of %s rolled back: %s", deployment.version, record["reason"])
        return "rolled back"
    if verdict == "pass":
        after = services.deployment_next_step(deployment_id=deployment.pk, verdict=record)
        return "promoted" if after.state == DeploymentState.LIVE else f"step {after.step_index}"
    return "wait"


def _resend_start(deployment: Deployment) -> str:
    """A deployment still PENDING long after creation lost its start task."""
    if timezone.now() - deployment.created < timedelta(seconds=settings.ROLLOUT_RESEND_AFTER_S):
        return "wait"
    from appliance.rollouts.tasks import rollout_start

    rollout_start.apply_async(args=[str(deployment.pk)], task_id=str(deployment.pk))
    return "re-sent start"


def _loading(deployment: Deployment) -> str:
    replicas = list(deployment.replicas.select_related("node"))
    failed = [r for r in replicas if r.state == ReplicaState.FAILED]
    if failed:
        reason = "; ".join(f"{r.node.name}: {r.error}" for r in failed)
        services.deployment_roll_back(deployment_id=deployment.pk, reason=f"replica failed to load: {reason}")
        return "rolled back"
    if replicas and all(r.state == ReplicaState.LIVE for r in replicas):
        after = services.deployment_start_traffic(deployment_id=deployment.pk)
        return "promoted" if after.state == DeploymentState.LIVE else "traffic started"
    if timezone.now() - deployment.created > timedelta(seconds=settings.ROLLOUT_LOAD_TIMEOUT_S):
        services.deployment_roll_back(
            deployment_id=deployment.pk,
            reason=f"replicas not live within {settings.ROLLOUT_LOAD_TIMEOUT_S:.0f} s of the rollout's start",
        )
        return "rolled back"
    # A replica task lost with its message (never delivered) is sent again; the claim makes it idempotent.
    stale = timezone.now() - timedelta(seconds=settings.ROLLOUT_RESEND_AFTER_S)
    for replica in replicas:
        if replica.state == ReplicaState.PENDING and replica.updated < stale:
            replica.save(update_fields=["updated"])  # the next re-send waits another period
            dispatch.replica_apply(node_name=replica.node.name, replica_id=replica.pk)
    return "loading"


def park_idle() -> list[str]:
    """Scale to zero: serving deployments of models idle longer than idle_unload_s."""
    parked = []
    now = time.time()
    for deployment in Deployment.objects.filter(
        state=DeploymentState.LIVE, version__model__idle_unload_s__gt=0, replicas__state=ReplicaState.LIVE
    ).select_related("version__model").distinct():
        model = deployment.version.model
        if Deployment.objects.filter(version__model=model, state__in=ACTIVE_DEPLOYMENT_STATES).exists():
            continue
        last = stats.last_request(model.name)
        newest_load = max(r.updated.timestamp() for r in deployment.replicas.filter(state=ReplicaState.LIVE))
        idle_since = max(last or 0.0, newest_load)
        if now - idle_since >= model.idle_unload_s:
            with audit_context(origin=Origin.SYSTEM, actor="scale-to-zero"):
                if services.model_park(deployment_id=deployment.pk):
                    parked.append(model.name)
    return parked


def tick() -> dict[str, str]:
    done = {}
    with audit_context(origin=Origin.SYSTEM, actor="rollout"):
        for deployment_id in Deployment.objects.filter(state__in=ACTIVE_DEPLOYMENT_STATES, paused=False).values_list(
            "pk", flat=True
        ):
            try:
                done[str(deployment_id)] = advance(deployment_id)
            except Exception:
                log.exception("rollout %s could not advance; the next tick tries again", deployment_id)
    try:
        for name in park_idle():
            done[name] = "scaled to zero"
    except Exception:
        log.exception("scale-to-zero check failed; the next tick tries again")
    try:
        from appliance.rollouts.autoscale import autoscale_all

        with audit_context(origin=Origin.SYSTEM, actor="autoscaler"):
            for decision in autoscale_all():
                done[str(decision.deployment_id)] = f"scaled {decision.replicas_before} -> {decision.replicas_after}"
    except Exception:
        log.exception("autoscaling failed; the next tick tries again")
    return done

