"""Autoscaling: a serving deployment's replica count between the model's min and
max, from what its Tritons measure.

Every tick, each live replica's Triton is asked for the serving version's
cumulative statistics; the difference from the previous sample (kept in Redis,
so any control worker can take the next tick) gives, per replica, the mean queue
time per request and the utilisation of its instances (compute time over wall
time × instance count). `decide` is the policy, kept pure so that it is tested
on its own: one replica up when queueing or busy, one down when idle, never
within the cool-down of the last change, never past min/max. Each change is an
AutoscaleDecision row (audited) holding the inputs it was taken from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
import tritonclient.grpc as triton_grpc
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from appliance.catalog.profile import normalise
from appliance.core.api import validated_or_empty
from appliance.rollouts.choices import ACTIVE_DEPLOYMENT_STATES, DeploymentState, ReplicaState
from appliance.rollouts.models import AutoscaleDecision, Deployment, Replica

log = logging.getLogger(__name__)


class AutoscaleSerializer(serializers.Serializer):
    min_replicas = serializers.IntegerField(min_value=1, max_value=1000, default=1)
    max_replicas = serializers.IntegerField(min_value=1, max_value=1000)
    queue_ms_up = serializers.FloatField(min_value=0, default=5.0, help_text="scale up when mean queue time exceeds this")
    utilisation_up = serializers.FloatField(min_value=0, max_value=1, default=0.7)
    utilisation_down = serializers.FloatField(min_value=0, max_value=1, default=0.2)
    cooldown_s = serializers.IntegerField(min_value=0, max_value=86400, default=60)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["min_replicas"] > attrs["max_replicas"]:
            raise serializers.ValidationError("min_replicas exceeds max_replicas")
        if attrs["utilisation_down"] >= attrs["utilisation_up"]:
            raise serializers.ValidationError("utilisation_down must be below utilisation_up (or it would flap)")
        return attrs


def normalise_autoscale(value: Any) -> dict[str, Any]:
    return validated_or_empty(AutoscaleSerializer, value)


@dataclass(frozen=True)
class Sample:
    """One replica's load over the last interval."""

    node: str
    seconds: float
    requests: int
    queue_ms: float  # mean queue time per request
    utilisation: float  # busy fraction of its instances


def decide(policy: dict[str, Any], replicas: int, samples: list[Sample], since_last_change_s: float) -> tuple[int, str]:
    """(replica count wanted, why). Pure: the whole policy is here."""
    if replicas < policy["min_replicas"]:
        return policy["min_replicas"], f"below min_replicas {policy['min_replicas']}"
    if replicas > policy["max_replicas"]:
        return policy["max_replicas"], f"above max_replicas {policy['max_replicas']}"
    if not samples:
        return replicas, "no measurements yet"
    queue = max(s.queue_ms for s in samples)
    busy = sum(s.utilisation for s in samples) / len(samples)
    if since_last_change_s < policy["cooldown_s"]:
        return replicas, f"cooling down ({since_last_change_s:.0f} of {policy['cooldown_s']} s)"
    if (queue > policy["queue_ms_up"] or busy > policy["utilisation_up"]) and replicas < policy["max_replicas"]:
        why = f"queue {queue:.1f} ms > {policy['queue_ms_up']:g} ms" if queue > policy["queue_ms_up"] else (
            f"utilisation {busy:.0%} > {policy['utilisation_up']:.0%}")  # fmt: skip
        return replicas + 1, why
    if busy < policy["utilisation_down"] and queue <= policy["queue_ms_up"] / 2 and replicas > policy["min_replicas"]:
        return replicas - 1, f"utilisation {busy:.0%} < {policy['utilisation_down']:.0%}"
    return replicas, "within bounds"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _address(replica: Replica) -> str:
    if replica.mig_uuid:
        from appliance.nodes.models import MigDevice

        device = MigDevice.objects.filter(uuid=replica.mig_uuid).first()
        return device.grpc_address if device else ""
    return replica.node.grpc_address


def sample(replica: Replica, instances: int, client: redis.Redis) -> Sample | None:
    """The replica's load since its previous sample (None on the first one)."""
    version = replica.deployment.version
    address = _address(replica)
    if not address:
        return None
    triton = triton_grpc.InferenceServerClient(address)
    try:
        stats = triton.get_inference_statistics(version.model.name, str(version.number),
                                                client_timeout=settings.HEALTH_PROBE_TIMEOUT_S).model_stats[0]  # fmt: skip
    finally:
        triton.close()
    now_ns = time.time_ns()
    current: dict[str, int] = {
        "t": now_ns,
        "count": stats.inference_stats.success.count + stats.inference_stats.fail.count,
        "queue": stats.inference_stats.queue.ns,
        "compute": stats.inference_stats.compute_infer.ns + stats.inference_stats.compute_input.ns
        + stats.inference_stats.compute_output.ns,
    }  # fmt: skip
    key = f"{settings.INSTANCE}:autoscale:{replica.pk}"
    previous = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in client.hgetall(key).items()}
    stored: dict[Any, Any] = dict(current)  # redis-py's mapping type is invariant in its keys
    client.hset(key, mapping=stored)
    client.expire(key, 3600)
    if not previous or previous.get("count", 0) > current["count"]:  # first sample, or Triton restarted
        return None
    wall = max(current["t"] - previous["t"], 1)
    requests = current["count"] - previous["count"]
    queue_ms = (current["queue"] - previous["queue"]) / requests / 1e6 if requests else 0.0
    utilisation = min(1.0, (current["compute"] - previous["compute"]) / (wall * max(instances, 1)))
    return Sample(node=replica.node.name, seconds=wall / 1e9, requests=requests, queue_ms=queue_ms, utilisation=utilisation)


def scale(deployment: Deployment) -> AutoscaleDecision | None:
    """Measures and, if the policy says so, adds or retires one replica."""
    from appliance.rollouts import services

    model = deployment.version.model
    policy = normalise_autoscale(model.autoscale)
    if not policy:
        return None
    live = list(deployment.replicas.filter(state=ReplicaState.LIVE).select_related("node", "deployment__version__model"))
    loading = deployment.replicas.filter(state__in=[ReplicaState.PENDING, ReplicaState.LOADING]).count()
    if loading or deployment.replicas.filter(state=ReplicaState.PARKED).exists():
        return None  # a change is under way (or the model sleeps): judge it once it settled
    instances = normalise(model.serving_profile)["instance_group"]["count"]
    with _redis() as client:
        samples = [s for s in (sample(r, instances, client) for r in live) if s is not None]
    last = deployment.scale_decisions.order_by("-time").first()
    since = (timezone.now() - (last.time if last else deployment.updated)).total_seconds()
    wanted, reason = decide(policy, len(live), samples, since)
    if wanted == len(live):
        return None
    inputs = {
        "queue_ms": round(max((s.queue_ms for s in samples), default=0.0), 3),
        "utilisation": round(sum(s.utilisation for s in samples) / len(samples), 3) if samples else None,
        "requests_per_s": round(sum(s.requests / s.seconds for s in samples), 1),
        "per_replica": {s.node: {"queue_ms": round(s.queue_ms, 3), "utilisation": round(s.utilisation, 3),
                                 "requests": s.requests} for s in samples},
    }  # fmt: skip
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if locked.state != DeploymentState.LIVE:
            return None
        if wanted > len(live):
            services.replicas_add(deployment=locked, count=wanted - len(live))
        else:
            services.replicas_retire(deployment=locked, count=len(live) - wanted)
        return AutoscaleDecision.objects.create(deployment=locked, replicas_before=len(live), replicas_after=wanted,
                                                inputs=inputs, reason=reason)  # fmt: skip


def autoscale_all() -> list[AutoscaleDecision]:
    decisions = []
    busy_models = set(Deployment.objects.filter(state__in=ACTIVE_DEPLOYMENT_STATES).values_list("version__model_id", flat=True))
    for deployment in Deployment.objects.filter(state=DeploymentState.LIVE).exclude(version__model__autoscale={}).select_related(
        "version__model"
    ):
        if deployment.version.model_id in busy_models:
            continue  # a rollout owns the placement until it ends
        try:
            decision = scale(deployment)
        except (triton_grpc.InferenceServerException, redis.RedisError) as exc:
            log.warning("autoscaling %s skipped this tick: %s", deployment.version, exc)
            continue
        if decision is not None:
            decisions.append(decision)
    return decisions
