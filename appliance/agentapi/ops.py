"""The node agent's interface to the control plane: every request an agent makes, as one
operation of plain JSON in and plain JSON out, answered for one node.

A provisioned node reaches it over HTTP (`POST /api/v1/agent/<op>/`, agentapi/views.py) with
its own credential and holds no database or control-plane secret; an agent started beside
the control plane (`make run`, the test fleets) is answered in-process by the same
`answer()`, through the same JSON, so both transports run one code path (agent/control.py is
the client of both).

Each operation acts for the calling node only: a replica, reconfiguration, version or model
that is not the node's is refused (403), whatever id the request names. Writes go through
the services.
"""

from __future__ import annotations

import base64
import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.utils import timezone

from appliance.catalog import runtimes
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.generative import engine_gpu
from appliance.catalog.models import ModelVersion
from appliance.catalog.profile import normalise
from appliance.catalog.tritonconfig import render_config
from appliance.catalog.tritonconfig import warmup_files as _warmup_files
from appliance.core.engine_gauges import EngineReading
from appliance.core.errors import DomainError
from appliance.nodes import dispatch
from appliance.nodes import services as nodes
from appliance.nodes.choices import AdminState
from appliance.nodes.inventory.base import GpuHealth, GpuInfo, MigDeviceInfo
from appliance.nodes.models import Node, Reconfiguration, ReconfigurationStep
from appliance.rollouts import services as rollouts
from appliance.rollouts.choices import ReplicaState
from appliance.rollouts.models import Replica
from appliance.rollouts.selectors import resident_replicas

Json = Any
_OPS: dict[str, Callable[..., Json]] = {}


class NotYours(Exception):
    """The request names something of another node (403)."""


def operation(fn: Callable[..., Json]) -> Callable[..., Json]:
    _OPS[fn.__name__] = fn
    return fn


def names() -> list[str]:
    return sorted(_OPS)


def answer(op: str, args: dict[str, Json], *, node: Node | None, credential: str = "") -> tuple[int, dict[str, Json]]:
    """(HTTP status, body) for one request: {"result": …} or {"detail": why}. `node` is the
    caller (None only for an unenrolled agent's first `register`, in-process). Writes are
    audited in the caller's audit context: over HTTP the node's (agentapi/views.py, with the
    agent's correlation id), in-process the agent's own (its task's, or `agent:<node>`)."""
    fn = _OPS.get(op)
    if fn is None:
        return 404, {"detail": f"no agent operation {op!r}"}
    if not isinstance(args, dict):
        return 400, {"detail": "the body must be a JSON object of the operation's arguments"}
    if "credential" in args:
        return 400, {"detail": "the node credential goes in the Authorization header, never in the body"}
    try:
        inspect.signature(fn).bind(node, **args)
    except TypeError as exc:
        return 400, {"detail": f"{op}: {exc}"}
    if node is None and op != "register":
        return 401, {"detail": "the node credential is not valid"}
    try:
        if op == "register":
            return 200, {"result": register(node, credential=credential, **args)}
        return 200, {"result": fn(node, **args)}
    except NotYours as exc:
        return 403, {"detail": str(exc)}
    except ObjectDoesNotExist as exc:
        return 404, {"detail": str(exc)}
    except DomainError as exc:
        return exc.http_status, {"detail": str(exc)}
    except (ValidationError, ValueError, KeyError) as exc:
        return 400, {"detail": f"{op}: {exc}"}
    except (TypeError, AttributeError) as exc:  # values of the wrong shape (a list for a dict, a bad field name)
        return 400, {"detail": f"{op}: the arguments do not have the operation's shape ({exc})"}


def _own(node: Node, owner_id: object, what: str) -> None:
    if str(owner_id) != str(node.pk):
        raise NotYours(f"{what} is not node {node.name}'s")


# --- records handed to the agent ---------------------------------------------------------------
def version_record(version: ModelVersion) -> dict[str, Json]:
    return {"id": str(version.pk), "number": version.number, "format": version.format,
            "artifact_sha256": version.artifact_sha256, "signature": version.signature,
            "max_batch_size": version.max_batch_size, "decoupled": version.decoupled,
            "model": {"id": str(version.model_id), "name": version.model.name}}  # fmt: skip


def _run_record(run: Reconfiguration) -> dict[str, Json]:
    return {"id": str(run.pk), "gpu_index": run.gpu_index, "layout": run.layout, "placements": run.placements,
            "previous": run.previous, "previous_admin_state": run.previous_admin_state, "moves": run.moves,
            "moved": run.moved, "step": run.step, "inject_failure_at": run.inject_failure_at}  # fmt: skip


def _replica(node: Node, replica_id: str) -> Replica:
    replica = Replica.objects.select_related("deployment__version__model").get(pk=replica_id)
    _own(node, replica.node_id, f"replica {replica_id}")
    return replica


def _run(node: Node, reconfiguration_id: str) -> Reconfiguration:
    run = Reconfiguration.objects.get(pk=reconfiguration_id)
    _own(node, run.node_id, f"reconfiguration {reconfiguration_id}")
    return run


def _placed_version(node: Node, version_id: str) -> ModelVersion:
    """A version some replica of this node holds (or held)."""
    version = ModelVersion.objects.select_related("model").get(pk=version_id)
    if not Replica.objects.filter(node=node, deployment__version=version).exists():
        raise NotYours(f"version {version} was never placed on node {node.name}")
    return version


# --- the node --------------------------------------------------------------------------------
def register(node: Node | None, *, credential: str = "", name: str, zone: str, grpc_address: str, http_address: str,
             metrics_address: str, triton_version: str = "", tensorrt_version: str = "", backends: list[str] | None = None,
             memory_bytes: int = 0) -> dict[str, Json]:  # fmt: skip
    """Creates the node (an unenrolled agent beside the control plane) or updates its endpoints
    and what its Triton can serve; an enrolled node registers only under its own name."""
    if node is not None and name != node.name:
        raise NotYours(f"the credential is node {node.name}'s, not {name}'s")
    registered = nodes.node_register(name=name, zone=zone, grpc_address=grpc_address, http_address=http_address,
                                     metrics_address=metrics_address, triton_version=triton_version,
                                     tensorrt_version=tensorrt_version, backends=list(backends or ()),
                                     memory_bytes=memory_bytes, credential=credential)  # fmt: skip
    return {"node_id": str(registered.pk)}


_OPS["register"] = register


@operation
def heartbeat(node: Node, *, triton_ready: bool) -> bool:
    """False: the node was revoked (or deleted) and must stop serving."""
    return nodes.node_heartbeat(node_id=node.pk, triton_ready=bool(triton_ready))


@operation
def report_inventory(node: Node, *, gpus: list[dict[str, Json]]) -> None:
    infos = [GpuInfo(**{**g, "mig_devices": tuple(MigDeviceInfo(**d) for d in g.get("mig_devices", ()))}) for g in gpus]
    nodes.node_report_inventory(node_id=node.pk, gpus=infos)


@operation
def report_gpu_health(node: Node, *, readings: list[dict[str, Json]]) -> None:
    nodes.node_report_gpu_health(node_id=node.pk, readings=[GpuHealth(**r) for r in readings])


@operation
def report_engines(node: Node, *, readings: list[dict[str, Json]]) -> None:
    if not isinstance(readings, list) or len(readings) > 1000:
        raise ValueError("readings: a list of at most 1000 engine readings")
    nodes.node_report_engines(node_id=node.pk, readings=[EngineReading.from_json(r) for r in readings])


@operation
def set_mig_endpoints(node: Node, *, addresses: dict[str, str], metrics: dict[str, str] | None = None) -> None:
    nodes.node_set_mig_endpoints(node_id=node.pk, addresses=addresses, metrics=metrics)


@operation
def admin_state(node: Node) -> str:
    return str(Node.objects.values_list("admin_state", flat=True).get(pk=node.pk))


@operation
def set_admin_state(node: Node, *, admin_state: str) -> None:
    """A MIG reconfiguration drains its node and puts it back (or in maintenance when the
    restore failed); an agent never revokes its node."""
    allowed = (AdminState.ACTIVE, AdminState.DRAINING, AdminState.MAINTENANCE)
    if admin_state not in allowed:
        raise DomainError(f"an agent sets its node's admin state to one of {', '.join(allowed)}, not {admin_state!r}")
    nodes.node_set_admin_state(node=node, admin_state=admin_state)


@operation
def metrics_address(node: Node) -> str:
    return str(Node.objects.values_list("metrics_address", flat=True).get(pk=node.pk))


# --- MIG reconfiguration ---------------------------------------------------------------------
@operation
def reconfiguration_claim(node: Node, *, reconfiguration_id: str) -> dict[str, Json]:
    """{"run": the run or None, "redelivered": it was already running (the agent died mid-run)}."""
    _run(node, reconfiguration_id)
    run, redelivered = nodes.reconfiguration_claim(reconfiguration_id=reconfiguration_id)
    return {"run": _run_record(run) if run is not None else None, "redelivered": redelivered}


@operation
def reconfiguration_moved(node: Node, *, reconfiguration_id: str) -> dict[str, str]:
    return dict(_run(node, reconfiguration_id).moved)


@operation
def reconfiguration_step_start(node: Node, *, reconfiguration_id: str, name: str) -> str:
    return str(nodes.reconfiguration_step_start(run=_run(node, reconfiguration_id), name=name).pk)


@operation
def reconfiguration_step_end(node: Node, *, step_id: str, state: str, detail: str = "") -> None:
    step = ReconfigurationStep.objects.select_related("reconfiguration").get(pk=step_id)
    _own(node, step.reconfiguration.node_id, f"step {step_id}")
    nodes.reconfiguration_step_end(step=step, state=state, detail=detail)


@operation
def reconfiguration_finish(node: Node, *, reconfiguration_id: str, succeeded: bool, error: str = "") -> None:
    nodes.reconfiguration_finish(run=_run(node, reconfiguration_id), succeeded=bool(succeeded), error=error)


@operation
def reconfiguration_record_moved(node: Node, *, reconfiguration_id: str, moved: dict[str, str]) -> None:
    nodes.reconfiguration_record_moved(run=_run(node, reconfiguration_id), moved=moved)


@operation
def plan_moves(node: Node, *, gpu_index: int, placements: list[dict[str, Json]]) -> list[Json]:
    """[moves, why not] for the slices in use on one of the node's GPUs (nodes.services)."""
    moves, problem = nodes.plan_moves(node.gpus.get(index=gpu_index), placements)
    return [moves, problem]


@operation
def slice_move(node: Node, *, from_uuid: str, to_uuid: str, tenant_id: str | None) -> None:
    """A slice's replicas and its tenant dedication follow it to its new MIG device."""
    rollouts.replicas_move(node_id=node.pk, from_uuid=from_uuid, to_uuid=to_uuid)
    nodes.mig_dedication_move(node_id=node.pk, to_uuid=to_uuid, tenant_id=tenant_id)


# --- replicas and the versions a Triton must hold ------------------------------------------------
@operation
def replica_claim(node: Node, *, replica_id: str) -> dict[str, Json] | None:
    _replica(node, replica_id)
    replica = rollouts.replica_claim(replica_id=replica_id)
    if replica is None:
        return None
    return {"id": str(replica.pk), "mig_uuid": replica.mig_uuid, "version": version_record(replica.deployment.version)}


@operation
def replica_mark_live(node: Node, *, replica_id: str) -> bool:
    return rollouts.replica_mark_live(replica=_replica(node, replica_id))


@operation
def replica_mark_failed(node: Node, *, replica_id: str, error: str) -> None:
    rollouts.replica_mark_failed(replica=_replica(node, replica_id), error=error)


@operation
def model_name(node: Node, *, model_id: str) -> str:
    """The name of a model this node holds or held (a sync that unloads it needs it too)."""
    replica = Replica.objects.filter(node=node, deployment__version__model_id=model_id).select_related(
        "deployment__version__model").first()  # fmt: skip
    if replica is None:
        raise NotYours(f"model {model_id} was never placed on node {node.name}")
    return replica.deployment.version.model.name


@operation
def resident_versions(node: Node, *, model_id: str, mig_uuid: str = "", live_only: bool = False) -> list[dict[str, Json]]:
    """The versions of a model one of the node's Tritons must hold, oldest first."""
    replicas = resident_replicas(node_id=node.pk, model_id=model_id, mig_uuid=mig_uuid)
    if live_only:
        replicas = replicas.filter(state=ReplicaState.LIVE)
    versions = {r.deployment.version.pk: r.deployment.version for r in replicas}
    return [version_record(v) for v in sorted(versions.values(), key=lambda v: v.number)]


@operation
def live_versions(node: Node, *, mig_uuid: str = "") -> list[dict[str, Json]]:
    """Every version live on one of the node's Tritons."""
    live = resident_replicas(node_id=node.pk, mig_uuid=mig_uuid).filter(state=ReplicaState.LIVE)
    return [version_record(r.deployment.version) for r in live]


@operation
def resident_models(node: Node, *, mig_uuid: str = "") -> dict[str, Json]:
    """{"live": {model name: [model id, [live version numbers]]}, "loading": [names of models
    with a version loading]}."""
    live: dict[str, list[Json]] = {}
    loading = set()
    for replica in resident_replicas(node_id=node.pk, mig_uuid=mig_uuid):
        model = replica.deployment.version.model
        if replica.state == ReplicaState.LOADING:
            loading.add(model.name)
        else:
            numbers = live.setdefault(model.name, [str(model.pk), []])[1]
            if str(replica.deployment.version.number) not in numbers:
                numbers.append(str(replica.deployment.version.number))
    return {"live": live, "loading": sorted(loading)}


@operation
def recently_released(node: Node, *, model_id: str, mig_uuid: str = "", within_s: float) -> bool:
    """A replica of the model here was retired or parked less than `within_s` ago."""
    return Replica.objects.filter(
        node=node, mig_uuid=mig_uuid, deployment__version__model_id=model_id,
        state__in=[ReplicaState.RETIRED, ReplicaState.PARKED], updated__gt=timezone.now() - timedelta(seconds=within_s),
    ).exists()  # fmt: skip


@operation
def sync_model_later(node: Node, *, model_id: str, mig_uuid: str = "", countdown: float | None = None) -> None:
    """Queues a convergence of one of this node's Tritons for the model, on the node's own
    queue (so that it never races a rollout task)."""
    dispatch.model_sync(node_name=node.name, model_id=model_id, mig_uuid=mig_uuid, countdown=countdown)


# --- what a version's Triton model is made of ------------------------------------------------------
@operation
def triton_config(node: Node, *, version_id: str, versions: list[int], backends: list[str],
                  gpu_memory_mib: dict[str, int] | None = None) -> str:  # fmt: skip
    """config.pbtxt for the model serving `versions`, from `version` (the newest) and its
    profile, naming the backend that serves its format among the node's `backends`.
    `gpu_memory_mib` (GPU index -> memory, from the node's inventory) sizes a generative
    engine's share of the GPU its profile puts it on, where the node's vLLM runs on CUDA."""
    version = _placed_version(node, version_id)
    device_memory = 0
    if version.format == ArtifactFormat.VLLM and runtimes.engine_device(tuple(backends)) == "gpu":
        index = engine_gpu(normalise(version.model.serving_profile))
        device_memory = {int(k): v for k, v in (gpu_memory_mib or {}).items()}.get(index, 0) * 1024**2
    return render_config(version, versions=versions, backends=tuple(backends), device_memory=device_memory)


@operation
def warmup_files(node: Node, *, version_id: str) -> dict[str, str]:
    """The warm-up sample files the version's config names, base64."""
    version = _placed_version(node, version_id)
    files = _warmup_files(version, version.model.serving_profile)
    return {name: base64.b64encode(data).decode() for name, data in files.items()}

