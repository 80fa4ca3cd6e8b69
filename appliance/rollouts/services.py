"""The rollout state machine: every transition of a deployment or replica is here.

A deployment's replicas load beside the version that serves (the same Tritons
hold both versions; `version_policy: specific` lists both), then traffic moves
to it by the strategy's steps (rollouts/progress.py judges each step), and on
promotion the previous deployment is superseded and unloaded after a grace
period that the gateway needs to see the switch. A rollback is the reverse and
just as quick: the previous version never stopped serving.

Tasks (rollouts/tasks.py) only orchestrate: they claim work with conditional
updates and call these functions. Each transition saves an Audited row, so each
one leaves an audit event in the same transaction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from appliance.audit.services import audit_record
from appliance.catalog import generative
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import ModelVersion
from appliance.catalog.profile import normalise
from appliance.core.errors import ConflictError, DomainError
from appliance.nodes import dispatch
from appliance.nodes.choices import AdminState
from appliance.nodes.models import MigDevice, Node
from appliance.rollouts.choices import ACTIVE_DEPLOYMENT_STATES, DeploymentState, ReplicaState, Strategy
from appliance.rollouts.models import DEFAULT_GATE, Deployment, Replica

DEFAULT_CANARY_STEPS = (10, 50, 100)
DEFAULT_STEP_SECONDS = {Strategy.ALL_AT_ONCE: 0, Strategy.BLUE_GREEN: 60, Strategy.CANARY: 30}
# A deployment that took all of its model's traffic: its version has served (the accuracy gate lets it back).
SERVED_STATES = (DeploymentState.LIVE, DeploymentState.SUPERSEDED)


class RolloutError(DomainError):
    """A rollout cannot start as asked."""


class RolloutBusy(ConflictError):
    """Another rollout of the same model is under way."""


class RolloutStateError(ConflictError):
    """The deployment is not in a state that allows this action."""


class GateRefused(ConflictError):
    """The version has not passed the accuracy gate on every validation set of its model."""

    def __init__(self, message: str, failures: list[str]) -> None:
        super().__init__(message)
        self.failures = failures


def _normalise_steps(strategy: str, steps: Sequence[int] | None) -> list[int]:
    if strategy != Strategy.CANARY:
        if steps and list(steps) != [100]:
            raise RolloutError(f"steps apply to canary rollouts only ({strategy} switches all traffic at once)")
        return [100]
    wanted = list(steps or DEFAULT_CANARY_STEPS)
    if any(not isinstance(p, int) or not 1 <= p <= 100 for p in wanted):
        raise RolloutError("canary steps are traffic percentages between 1 and 100")
    if any(b <= a for a, b in zip(wanted, wanted[1:], strict=False)):
        raise RolloutError("canary steps must increase")
    if wanted[-1] != 100:
        wanted.append(100)
    return wanted


def _normalise_gate(gate: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(DEFAULT_GATE)
    for name, value in (gate or {}).items():
        if name not in DEFAULT_GATE:
            raise RolloutError(f"unknown gate setting {name!r}; known: {', '.join(DEFAULT_GATE)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or not math.isfinite(value):
            raise RolloutError(f"gate setting {name!r} must be a non-negative number")
        merged[name] = value
    if merged["max_latency_ratio"] < 1:
        raise RolloutError("gate max_latency_ratio below 1 would refuse a version as fast as the old one")
    if merged["min_tokens_per_s_ratio"] > 1:
        raise RolloutError("gate min_tokens_per_s_ratio above 1 would refuse a version as fast as the old one")
    if not 0.5 <= merged["latency_quantile"] < 1:
        raise RolloutError("gate latency_quantile must be between 0.5 and 1 (e.g. 0.95)")
    return merged


def serving_deployment(model_id: UUID | str) -> Deployment | None:
    return Deployment.objects.filter(version__model_id=model_id, state=DeploymentState.LIVE).order_by("-created").first()


def place(*, version: ModelVersion, count: int, exclude: Sequence[object] = ()) -> list[Node]:
    """Picks `count` nodes for new replicas: routable (active, healthy or degraded,
    heard from recently), allowed by the residency policy for every tenant the
    model serves, able to run the version's format, and with the most room
    (free GPU memory, then fewest replicas). Refuses naming why when too few fit."""
    from appliance.nodes.selectors import routable_nodes

    if count < 1:
        raise RolloutError("replicas must be at least 1")
    candidates: list[tuple[float, int, str, Node]] = []
    refused: list[str] = []
    for node in routable_nodes().exclude(pk__in=list(exclude)).prefetch_related("gpus"):
        reason = format_refusal(version, node)
        if reason:
            refused.append(f"{node.name}: {reason}")
            continue
        free = sum(g.memory_mib - (g.memory_used_mib or 0) for g in node.gpus.all())
        load = Replica.objects.filter(node=node, state__in=[ReplicaState.LIVE, ReplicaState.LOADING]).count()
        candidates.append((-free, load, node.name, node))
    candidates.sort(key=lambda c: c[:3])
    chosen = [c[3] for c in candidates[:count]]
    if len(chosen) < count:
        detail = f" ({'; '.join(refused)})" if refused else ""
        raise RolloutError(f"{count} replicas asked, {len(chosen)} routable nodes can take {version}{detail}")
    return chosen


def format_refusal(version: ModelVersion, node: Node, mig_device: MigDevice | None = None) -> str:
    """Why this node (or this MIG slice of it) cannot run this version's format, or ''."""
    from appliance.catalog.runtimes import backend_refusal

    missing = backend_refusal(version.format, node.backends)
    if not missing and version.format == ArtifactFormat.VLLM:
        return generative_fit_refusal(version, node, mig_device)
    if missing or version.format != ArtifactFormat.TENSORRT_PLAN:
        return missing
    from appliance.nodes.mig.catalog import GPU_MODELS

    capabilities = {GPU_MODELS[g.model].compute_capability for g in node.gpus.all() if g.model in GPU_MODELS}
    if version.gpu_arch not in capabilities:
        have = ", ".join(sorted(capabilities)) or "no GPU"
        return f"the TensorRT plan was built for compute capability {version.gpu_arch}; the node has {have}"
    if node.tensorrt_version != version.tensorrt_version:
        have = node.tensorrt_version or "no TensorRT"
        return f"the TensorRT plan was built with TensorRT {version.tensorrt_version}; the node runs {have}"
    return ""


def generative_fit_refusal(version: ModelVersion, node: Node, mig_device: MigDevice | None = None) -> str:
    """Why a replica of this generative version cannot fit beside the generative replicas the
    place already holds, in numbers, or '' (catalog/generative.py sizes them). The place is
    the node's memory (a CPU build of vLLM), the GPU the serving profile names (vLLM for CUDA),
    or a MIG slice, whose Triton sees that slice as its only device and whose memory is all an
    engine there may take. Where the version's own model already runs, its reload counts too
    (generative.reload_allowance)."""
    from appliance.catalog.runtimes import engine_device

    device = engine_device(node.backends)
    index = generative.engine_gpu(normalise(version.model.serving_profile))
    if mig_device is not None:
        if device != "gpu":
            return f"a MIG slice runs engines with vLLM for CUDA; {node.name}'s vLLM environment is the CPU build"
        if index != 0:
            return (f"the serving profile puts the engine on GPU {index}; the Triton of a MIG slice sees one "
                    "device, 0")  # fmt: skip
        if not mig_device.memory_mib:
            return f"MIG device {mig_device.uuid} has not reported its memory, so a generative replica cannot be sized there"
        capacity = mig_device.memory_mib * generative.MIB
        place = f"MIG device {mig_device.profile} ({mig_device.uuid}) of {node.name}'s GPU {mig_device.gpu.index}"
    elif device == "gpu":
        gpus = list(node.gpus.all())
        if not gpus:
            return "the node's vLLM environment is built for CUDA, but the node reports no GPU"
        chosen = next((g for g in gpus if g.index == index), None)
        if chosen is None:
            return f"the serving profile puts the engine on GPU {index}; the node has GPUs {sorted(g.index for g in gpus)}"
        capacity = chosen.memory_mib * generative.MIB
        place = f"{node.name}'s GPU {index}"
    else:
        capacity = int(node.memory_bytes * settings.GENERATIVE_MEMORY_FRACTION)
        place = f"{node.name} ({settings.GENERATIVE_MEMORY_FRACTION:.0%} of its memory)"
        if not node.memory_bytes:
            return "the node has not reported its memory, so a generative replica cannot be sized there"
    sized = generative.need(version.generative or {}, generative.engine_spec(normalise(version.model.serving_profile)),
                            device)  # fmt: skip
    others: list[tuple[str, int]] = []
    same_model = 0  # what the version's own model's other versions hold there
    # The engines that share the place: a slice's own, or the node's outside its MIG slices; on a
    # GPU node, those on the same GPU. Replicas still pending hold their room already (another
    # deployment must not take it before they load), and so do parked ones (a request wakes them).
    resident = (Replica.objects.filter(node=node, state__in=[ReplicaState.PENDING, ReplicaState.LOADING,
                                                             ReplicaState.LIVE, ReplicaState.PARKED],
                                       deployment__version__format=ArtifactFormat.VLLM,
                                       mig_uuid=mig_device.uuid if mig_device is not None else "")
                .exclude(deployment__version=version).select_related("deployment__version__model"))  # fmt: skip
    held_by = {r.deployment.version_id: r.deployment.version for r in resident}.values()
    for other in sorted(held_by, key=lambda v: (v.model.name, v.number)):  # the refusal reads the same each time
        if device == "gpu" and mig_device is None and \
                generative.engine_gpu(normalise(other.model.serving_profile)) != index:  # fmt: skip
            continue  # another GPU of the node
        held = generative.need(other.generative or {}, generative.engine_spec(normalise(other.model.serving_profile)),
                               device)  # fmt: skip
        others.append((str(other), held.total))
        if other.model_id == version.model_id:
            same_model += held.total
    if same_model:
        others.append(generative.reload_allowance(version.model.name, sized.total, same_model))
    return generative.fit_refusal(subject=str(version), sized=sized, place=place, capacity=capacity, others=others)


def _refuse_unfit(version: ModelVersion, nodes: Sequence[Node], mig_devices: Sequence[MigDevice]) -> None:
    """RolloutError naming the first place that cannot run the version (format_refusal)."""
    for node in nodes:
        reason = format_refusal(version, node)
        if reason:
            raise RolloutError(f"{node.name} cannot run {version}: {reason}")
    for device in mig_devices:
        reason = format_refusal(version, device.gpu.node, device)
        if reason:
            raise RolloutError(f"MIG device {device.uuid} of {device.gpu.node.name} cannot run {version}: {reason}")


def _check_composing(version: ModelVersion, nodes: Sequence[Node], mig_devices: Sequence[MigDevice]) -> None:
    """An ensemble runs inside one Triton: each of its composing models must be served
    (live) by every Triton the ensemble is placed on."""
    from appliance.catalog.ensemble import composing_models

    places = [(n, "") for n in nodes] + [(d.gpu.node, d.uuid) for d in mig_devices]
    for model_name in composing_models(version.ensemble_steps):
        for node, mig_uuid in places:
            served = Replica.objects.filter(
                node=node, mig_uuid=mig_uuid, state=ReplicaState.LIVE, deployment__version__model__name=model_name
            ).exists()
            if not served:
                where = f"{node.name}/{mig_uuid}" if mig_uuid else node.name
                raise RolloutError(f"ensemble {version} needs '{model_name}' live on {where} first (it runs in the same Triton)")


def deployment_create(
    *,
    version: ModelVersion,
    nodes: Sequence[Node] = (),
    mig_devices: Sequence[MigDevice] = (),
    replicas: int | None = None,
    strategy: str = Strategy.ALL_AT_ONCE,
    steps: Sequence[int] | None = None,
    step_seconds: int | None = None,
    gate: dict[str, Any] | None = None,
    gate_override_reason: str = "",
) -> Deployment:
    """Records the deployment and its replicas and starts its rollout after commit.

    Where: the nodes / MIG devices named; or `replicas` nodes chosen by `place`;
    or, when neither is given, wherever the serving version runs now. Refused
    when the residency policy forbids a node for a tenant the model serves, when
    a node cannot run the format, or when the serving profile does not fit the
    version (checked here, before any node sees a config).

    The accuracy gate (`accuracy_gate_failures`): a version with a parent, of a model
    with validation sets, is refused (GateRefused, 409) unless its latest gate result on
    every set passed. A version without a parent is the model's reference, the baseline
    the gate measures the others against: it is not gated; nor is a version that has
    served before (a rollback to it, more replicas of it). `gate_override_reason`
    deploys a refused version anyway and audits the failing checks with the reason;
    only an admin may give one (the entry points ask the role matrix,
    deployment.override); where the gate does not refuse, it is not needed and
    not recorded."""
    from appliance.catalog.profile import ProfileError
    from appliance.catalog.tritonconfig import build_config

    if strategy not in Strategy.values:
        raise RolloutError(f"strategy {strategy!r} is not one of {', '.join(Strategy.values)}")
    normalised_steps = _normalise_steps(strategy, steps)
    normalised_gate = _normalise_gate(gate)
    gate_failures = accuracy_gate_failures(version)
    if gate_failures and not gate_override_reason.strip():
        raise GateRefused(gate_refusal_text(version, gate_failures), gate_failures)
    try:
        build_config(version, versions=[version.number])
    except ProfileError as exc:
        raise RolloutError(f"the serving profile of '{version.model.name}' does not fit {version}: {exc}") from exc
    if replicas is not None and (nodes or mig_devices):
        raise RolloutError("name nodes / MIG devices, or ask for a number of replicas, not both")
    if replicas is not None:
        nodes = place(version=version, count=replicas)
    elif not nodes and not mig_devices:
        if serving_deployment(version.model_id) is None:
            raise RolloutError(f"'{version.model.name}' serves nowhere yet: name nodes or a number of replicas")
        live = Replica.objects.filter(
            deployment__version__model_id=version.model_id, deployment__state=DeploymentState.LIVE
        ).exclude(state__in=[ReplicaState.FAILED, ReplicaState.RETIRED]).select_related("node")
        nodes = list({r.node_id: r.node for r in live if not r.mig_uuid}.values())
        mig_devices = list(MigDevice.objects.filter(uuid__in=[r.mig_uuid for r in live if r.mig_uuid]).select_related("gpu__node"))
    for device in mig_devices:
        if not device.grpc_address:
            raise RolloutError(f"MIG device {device.uuid} has no running Triton yet")
    targets = {n.pk: n for n in [*nodes, *(d.gpu.node for d in mig_devices)]}
    for node in targets.values():
        if node.admin_state == AdminState.REVOKED:
            raise RolloutError(f"{node.name} is revoked (its credential was withdrawn); it takes nothing until it "
                               "enrols again")  # fmt: skip
    _refuse_unfit(version, nodes, mig_devices)
    if version.format == ArtifactFormat.ENSEMBLE:
        _check_composing(version, nodes, mig_devices)
    placement_check(model_id=version.model_id, nodes=list(targets.values()), subject=f"deployment of {version}")
    with transaction.atomic():  # the override's audit row stands or falls with the deployment
        if version.format == ArtifactFormat.VLLM:
            # Judged again holding the places' rows: two deployments of engines to one place at
            # once are judged one after the other, the second seeing the first's replicas.
            list(Node.objects.select_for_update().filter(pk__in=sorted(targets)).order_by("pk"))
            _refuse_unfit(version, nodes, mig_devices)
        deployment = _deployment_create(
            version=version, nodes=nodes, mig_devices=mig_devices, strategy=strategy, steps=normalised_steps,
            step_seconds=DEFAULT_STEP_SECONDS[Strategy(strategy)] if step_seconds is None else step_seconds,
            gate=normalised_gate,
        )  # fmt: skip
        if gate_failures:
            audit_record(
                action="deployment.gate_override", target_type="model_version", target_id=str(version.pk),
                target_repr=str(version),
                changes={"version": str(version), "deployment": str(deployment.pk), "failing": gate_failures,
                         "reason": gate_override_reason.strip()},
            )  # fmt: skip
    return deployment


def accuracy_gate_failures(version: ModelVersion) -> list[str]:
    """Why the accuracy gate holds this version back, one line per validation set it has
    not passed ([] when it may roll out): each failing check with its numbers, or that
    the gate never ran there. Not gated ([]): a version without a parent (the
    reference the others are measured against) and one that has served before."""
    from appliance.catalog.selectors import gate_status
    from appliance.optimisation.gate import LOWER_IS_BETTER

    if version.parent_id is None:
        return []
    if Deployment.objects.filter(version=version, state__in=SERVED_STATES).exists():
        return []
    failures = []
    for validation_set, result in gate_status(version):
        if result is not None and result.passed:
            continue
        side = "above" if validation_set.metric in LOWER_IS_BETTER else "below"
        where = (f"validation set '{validation_set.name}' ({validation_set.metric}, "
                 f"at most {validation_set.max_relative_drop * 100:g} % {side} the parent)")  # fmt: skip
        if result is None:
            failures.append(f"{where}: the gate was never run on this version")
            continue
        failed = [check for check in result.checks if not check.get("passed")]
        if not failed:
            failures.append(f"{where}: the gate failed on {result.measured_on} without measuring")
        for check in failed:
            # Perplexity fails above its threshold (lower is better); every other gated value below it.
            relation = "<" if check.get("higher_is_better", True) else ">"
            failures.append(f"{where}: {check.get('name')} measured {_number(check.get('measured'))} {relation} "
                            f"threshold {_number(check.get('threshold'))} (parent {_number(check.get('baseline'))}; "
                            f"on {result.measured_on})")  # fmt: skip
    return failures


def gate_refusal_text(version: ModelVersion, failures: Sequence[str]) -> str:
    """The refusal, in the same words in the REST API and the console."""
    return (f"{version} has not passed the accuracy gate: {'; '.join(failures)}. An admin may deploy it anyway "
            f"with a gate override reason (gate_override_reason).")  # fmt: skip


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def placement_check(*, model_id: UUID | str, nodes: Sequence[Node], subject: str) -> None:
    """Every tenant granted the model must be allowed to have its data processed on
    every node; the first refusal is audited and raised with the rule that decided."""
    from appliance.accounts.models import Tenant
    from appliance.policies.choices import Operation
    from appliance.policies.engine import check, current_rules
    from appliance.policies.services import PolicyDenied, policy_denial_record

    rules = current_rules()
    for tenant in Tenant.objects.filter(grants__model_id=model_id).order_by("slug"):
        for node in sorted(nodes, key=lambda n: n.name):
            decision = check(tenant=tenant, node=node, operation=Operation.PROCESS, rules=rules)
            if not decision.allowed:
                policy_denial_record(decision=decision, operation=Operation.PROCESS, tenant=tenant.slug,
                                     place=node.name, subject=subject)  # fmt: skip
                raise PolicyDenied(f"placement refused: {decision.explain()}")


@transaction.atomic
def _deployment_create(
    *, version: ModelVersion, nodes: Sequence[Node], mig_devices: Sequence[MigDevice], strategy: str,
    steps: list[int], step_seconds: int, gate: dict[str, Any],
) -> Deployment:  # fmt: skip
    # Lock the model's row so that two concurrent requests cannot both start a rollout.
    type(version.model).objects.select_for_update().get(pk=version.model_id)
    busy = Deployment.objects.filter(version__model_id=version.model_id, state__in=ACTIVE_DEPLOYMENT_STATES).first()
    if busy is not None:
        raise RolloutBusy(f"a rollout of model '{version.model.name}' is already in progress ({busy.pk})")
    deployment = Deployment.objects.create(
        version=version, previous=serving_deployment(version.model_id), strategy=strategy, steps=steps,
        step_seconds=step_seconds, gate=gate,
    )  # fmt: skip
    for node in sorted(set(nodes), key=lambda n: n.name):
        Replica.objects.create(deployment=deployment, node=node)
    for device in mig_devices:
        Replica.objects.create(deployment=deployment, node=device.gpu.node, mig_uuid=device.uuid)

    from appliance.rollouts.tasks import rollout_start

    deployment_id = str(deployment.pk)
    transaction.on_commit(lambda: rollout_start.apply_async(args=[deployment_id], task_id=deployment_id))
    return deployment


def deployment_claim(*, deployment_id: str) -> Deployment | None:
    """PENDING → ROLLING_OUT, or the deployment if it is already rolling out (a
    re-delivered task); None when there is nothing left to do."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
        if deployment is None or deployment.state not in ACTIVE_DEPLOYMENT_STATES:
            return None
        if deployment.state == DeploymentState.PENDING:
            deployment.state = DeploymentState.ROLLING_OUT
            deployment.save(update_fields=["state", "updated"])
        return deployment


def replica_claim(*, replica_id: str) -> Replica | None:
    """PENDING/LOADING → LOADING with one more attempt. A node consumes its queue
    with one worker, so a LOADING replica seen here is a re-delivery after the
    agent died mid-load, and the idempotent load is simply done again."""
    with transaction.atomic():
        replica = (
            Replica.objects.select_for_update()
            .select_related("deployment__version__model", "node")
            .filter(pk=replica_id)
            .first()
        )
        if replica is None or replica.state not in (ReplicaState.PENDING, ReplicaState.LOADING):
            return None
        replica.state = ReplicaState.LOADING
        replica.attempts += 1
        replica.save(update_fields=["state", "attempts", "updated"])
        return replica


@transaction.atomic
def replica_mark_live(*, replica: Replica) -> bool:
    """The replica is loaded, warmed and answered its smoke test. It takes traffic by
    its deployment's share (progress.py moves that). False when the replica was
    retired meanwhile (a rollback): the caller converges the node instead."""
    locked = Replica.objects.select_for_update().get(pk=replica.pk)
    if locked.state != ReplicaState.LOADING:
        return False
    locked.state = ReplicaState.LIVE
    locked.error = ""
    locked.save(update_fields=["state", "error", "updated"])
    _nudge(locked.deployment_id)
    return True


@transaction.atomic
def replica_mark_failed(*, replica: Replica, error: str) -> None:
    locked = Replica.objects.select_for_update().get(pk=replica.pk)
    if locked.state in (ReplicaState.PENDING, ReplicaState.LOADING):
        locked.state = ReplicaState.FAILED
        locked.error = error[:4000]
        locked.save(update_fields=["state", "error", "updated"])
    _nudge(locked.deployment_id)


def _send_apply(replicas: Sequence[Replica]) -> None:
    """Each replica's node loads it (the replica's id is the task's)."""
    for replica in replicas:
        dispatch.replica_apply(node_name=replica.node.name, replica_id=replica.pk)


def replicas_move(*, node_id: UUID | str, from_uuid: str, to_uuid: str) -> None:
    """Replicas follow their MIG slice to its new device (a reconfiguration); audited."""
    with transaction.atomic():
        for replica in Replica.objects.select_for_update().filter(node_id=node_id, mig_uuid=from_uuid):
            replica.mig_uuid = to_uuid
            replica.save(update_fields=["mig_uuid", "updated"])


def _nudge(deployment_id: UUID | str) -> None:
    """Judge the deployment now rather than at the next tick."""
    from appliance.rollouts.tasks import rollout_advance

    transaction.on_commit(lambda: rollout_advance.apply_async(args=[str(deployment_id)], expires=30))


def _converge_later(replicas: Sequence[Replica], countdown: float) -> None:
    """After commit, each affected node Triton converges to its resident versions
    (the retired ones unload) once the gateway has seen the change."""
    targets = sorted({(r.node.name, r.mig_uuid, str(r.deployment.version.model_id)) for r in replicas})

    def send() -> None:
        for node_name, mig_uuid, model_id in targets:
            dispatch.model_sync(node_name=node_name, model_id=model_id, mig_uuid=mig_uuid, countdown=countdown)

    transaction.on_commit(send)


def _retire(replicas: Sequence[Replica]) -> list[Replica]:
    retired = []
    for replica in replicas:
        if replica.state in (ReplicaState.FAILED, ReplicaState.RETIRED):
            continue
        replica.state = ReplicaState.RETIRED
        replica.save(update_fields=["state", "updated"])
        retired.append(replica)
    return retired


def _locked(deployment_id: UUID | str) -> Deployment:
    return Deployment.objects.select_for_update(of=("self",)).select_related("version__model", "previous").get(pk=deployment_id)


@transaction.atomic
def deployment_start_traffic(*, deployment_id: UUID | str) -> Deployment:
    """Every replica is live: the first traffic step begins (or, for a model's first
    deployment and for all-at-once, the deployment is promoted at once)."""
    deployment = _locked(deployment_id)
    if deployment.state != DeploymentState.ROLLING_OUT:
        return deployment
    if (
        deployment.previous is None
        or deployment.previous.version_id == deployment.version_id  # more replicas of the serving version
        or deployment.strategy == Strategy.ALL_AT_ONCE
        or deployment.step_seconds == 0
    ):
        return _promote(deployment)
    deployment.state = DeploymentState.PROGRESSING
    deployment.step_index = 0
    deployment.traffic_percent = deployment.steps[0]
    deployment.step_started = timezone.now()
    deployment.save(update_fields=["state", "step_index", "traffic_percent", "step_started", "updated"])
    return deployment


@transaction.atomic
def deployment_next_step(*, deployment_id: UUID | str, verdict: dict[str, Any]) -> Deployment:
    """The gate passed the current step: record it, then the next step or promotion."""
    deployment = _locked(deployment_id)
    if deployment.state != DeploymentState.PROGRESSING or deployment.paused:
        return deployment
    deployment.gate_log = [*deployment.gate_log, verdict]
    if deployment.step_index + 1 >= len(deployment.steps):
        return _promote(deployment)
    deployment.step_index += 1
    deployment.traffic_percent = deployment.steps[deployment.step_index]
    deployment.step_started = timezone.now()
    deployment.save(update_fields=["gate_log", "step_index", "traffic_percent", "step_started", "updated"])
    return deployment


def _promote(deployment: Deployment) -> Deployment:
    """All traffic to this version; every serving deployment of another version of the
    model is superseded and its replicas unload after the grace period (deployments
    of the same version, such as replicas added on a tenant's slice, stay)."""
    deployment.state = DeploymentState.LIVE
    deployment.traffic_percent = 100
    deployment.step_index = len(deployment.steps)
    deployment.error = ""
    deployment.save(update_fields=["state", "traffic_percent", "step_index", "gate_log", "error", "updated"])
    older = list(
        Deployment.objects.select_for_update()
        .filter(version__model_id=deployment.version.model_id, state=DeploymentState.LIVE)
        .exclude(version_id=deployment.version_id)
    )
    retired: list[Replica] = []
    for old in older:
        old.state = DeploymentState.SUPERSEDED
        old.traffic_percent = 0
        old.save(update_fields=["state", "traffic_percent", "updated"])
        retired += _retire(list(old.replicas.select_for_update().select_related("node", "deployment__version")))
    _converge_later(retired, settings.RETIRE_GRACE_S)
    return deployment


@transaction.atomic
def deployment_roll_back(*, deployment_id: UUID | str, reason: str, state: str = DeploymentState.FAILED,
                         verdict: dict[str, Any] | None = None) -> Deployment:  # fmt: skip
    """Traffic back to the previous version (which never stopped serving), this
    deployment's replicas retired and unloaded after the grace period."""
    deployment = _locked(deployment_id)
    if deployment.state not in ACTIVE_DEPLOYMENT_STATES:
        raise RolloutStateError(f"deployment {deployment.pk} is {deployment.state}: there is no rollout to roll back")
    deployment.state = state
    deployment.traffic_percent = 0
    deployment.paused = False
    deployment.error = reason[:4000]
    if verdict is not None:
        deployment.gate_log = [*deployment.gate_log, verdict]
    deployment.save(update_fields=["state", "traffic_percent", "paused", "error", "gate_log", "updated"])
    retired = _retire(list(deployment.replicas.select_for_update().select_related("node", "deployment__version")))
    _converge_later(retired, settings.RETIRE_GRACE_S)
    return deployment


@transaction.atomic
def deployment_pause(*, deployment_id: UUID | str) -> Deployment:
    """Holds the traffic split where it is; gates stop judging until resumed."""
    deployment = _locked(deployment_id)
    if deployment.state not in ACTIVE_DEPLOYMENT_STATES:
        raise RolloutStateError(f"deployment {deployment.pk} is {deployment.state}: only a rollout in progress can be paused")
    if not deployment.paused:
        deployment.paused = True
        deployment.save(update_fields=["paused", "updated"])
    return deployment


@transaction.atomic
def deployment_resume(*, deployment_id: UUID | str) -> Deployment:
    """Continues a paused rollout; the current step's window starts again."""
    deployment = _locked(deployment_id)
    if deployment.state not in ACTIVE_DEPLOYMENT_STATES or not deployment.paused:
        raise RolloutStateError(f"deployment {deployment.pk} is not a paused rollout")
    deployment.paused = False
    if deployment.state == DeploymentState.PROGRESSING:
        deployment.step_started = timezone.now()
    deployment.save(update_fields=["paused", "step_started", "updated"])
    _nudge(deployment.pk)
    return deployment


def deployment_abort(*, deployment_id: UUID | str, actor: str) -> Deployment:
    return deployment_roll_back(deployment_id=deployment_id, reason=f"aborted by {actor}", state=DeploymentState.ROLLED_BACK)


def deployment_rollback(*, deployment_id: UUID | str, actor: str) -> Deployment:
    """An operator's rollback. During a rollout: the previous version takes all
    traffic back at once. After promotion: a new all-at-once deployment of the
    previous version on the same placement (its replicas were unloaded)."""
    deployment = Deployment.objects.select_related("previous__version").get(pk=deployment_id)
    if deployment.state in ACTIVE_DEPLOYMENT_STATES:
        return deployment_roll_back(deployment_id=deployment_id, reason=f"rolled back by {actor}",
                                    state=DeploymentState.ROLLED_BACK)  # fmt: skip
    if deployment.state != DeploymentState.LIVE:
        raise RolloutStateError(f"deployment {deployment.pk} is {deployment.state}: only a serving or rolling deployment rolls back")
    if deployment.previous is None:
        raise RolloutStateError(f"{deployment.version} was the model's first deployment: there is nothing to roll back to")
    return deployment_create(version=deployment.previous.version)


def replicas_add(*, deployment: Deployment, count: int) -> list[Replica]:
    """Scale out a serving deployment: `count` more replicas on nodes the placement
    picks (not ones already holding it); each loads and goes live on its own.
    Call inside a transaction holding the deployment's row lock."""
    holding = deployment.replicas.exclude(state__in=[ReplicaState.FAILED, ReplicaState.RETIRED]).filter(mig_uuid="")
    nodes = place(version=deployment.version, count=count, exclude=list(holding.values_list("node_id", flat=True)))
    placement_check(model_id=deployment.version.model_id, nodes=nodes, subject=f"scale-out of {deployment.version}")
    added = []
    for node in nodes:
        replica, created = Replica.objects.get_or_create(deployment=deployment, node=node, mig_uuid="")
        if not created:  # it ran here before and was retired: the same row loads again
            replica.state, replica.error = ReplicaState.PENDING, ""
            replica.save(update_fields=["state", "error", "updated"])
        added.append(replica)

    transaction.on_commit(lambda: _send_apply(added))
    return added


def replicas_retire(*, deployment: Deployment, count: int) -> list[Replica]:
    """Scale in: the newest `count` live replicas stop taking traffic and unload after
    the grace period. Never the last one. Call inside the deployment's lock."""
    live = list(
        deployment.replicas.select_for_update().filter(state=ReplicaState.LIVE).select_related("node", "deployment__version")
        .order_by("-created")
    )  # fmt: skip
    retired = _retire(live[: min(count, len(live) - 1)])
    _converge_later(retired, settings.RETIRE_GRACE_S)
    return retired


@transaction.atomic
def model_wake(*, model_name: str) -> int:
    """Scale from zero: the serving deployment's parked replicas load again.
    Returns how many were asked to load (0 when already waking or serving)."""
    parked = list(
        Replica.objects.select_for_update()
        .filter(state=ReplicaState.PARKED, deployment__state=DeploymentState.LIVE, deployment__version__model__name=model_name)
        .select_related("node")
    )
    for replica in parked:
        replica.state = ReplicaState.PENDING
        replica.save(update_fields=["state", "updated"])

    if parked:
        transaction.on_commit(lambda: _send_apply(parked))
    return len(parked)


@transaction.atomic
def model_park(*, deployment_id: UUID | str) -> int:
    """Scale to zero: the idle serving deployment's live replicas unload."""
    deployment = _locked(deployment_id)
    if deployment.state != DeploymentState.LIVE:
        return 0
    replicas = list(deployment.replicas.select_for_update().filter(state=ReplicaState.LIVE).select_related("node", "deployment__version"))
    for replica in replicas:
        replica.state = ReplicaState.PARKED
        replica.save(update_fields=["state", "updated"])
    _converge_later(replicas, settings.RETIRE_GRACE_S)
    return len(replicas)
