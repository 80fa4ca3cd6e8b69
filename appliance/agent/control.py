"""The node agent's one way into the control plane.

Every call the agent's code makes to another app's services, selectors or models goes
through this module (a test holds the rest of appliance/agent to it). Today it calls
them in-process, over the agent's own PostgreSQL connection; it is the seam that a later
HTTP/gRPC agent API replaces (the provisioning issue wants agents that do not connect to
PostgreSQL at all), so every function here is a request such an API would carry: plain
ids and values in, plain values or read-only records out. The records handed out
(`Version`, `Replica`, `Reconfiguration`) are read by attribute and passed back, never
queried further or saved by the agent.

Writes keep the services' own transactions and audit rows; the agent sets its audit
context (origin agent, actor `agent:<node>`) around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings

from appliance.catalog import runtimes
from appliance.catalog.artifacts import artifact_fetch, artifact_path, artifact_read_verified, unpack_into
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.generative import engine_gpu
from appliance.catalog.models import Model
from appliance.catalog.models import ModelVersion as Version
from appliance.catalog.profile import normalise
from appliance.catalog.tritonconfig import WARMUP_DIR, render_config
from appliance.catalog.tritonconfig import warmup_files as _warmup_files
from appliance.nodes import dispatch
from appliance.nodes import services as nodes
from appliance.nodes.inventory.base import GpuHealth, GpuInfo
from appliance.nodes.models import Node, Reconfiguration, ReconfigurationStep
from appliance.rollouts import services as rollouts
from appliance.rollouts.choices import ReplicaState
from appliance.rollouts.models import Replica
from appliance.rollouts.selectors import resident_replicas

__all__ = ["WARMUP_DIR", "Reconfiguration", "Replica", "Version"]

# The names under which the agent registers its tasks (the control plane sends them by name).
TASK_REPLICA_APPLY = dispatch.REPLICA_APPLY
TASK_MODEL_SYNC = dispatch.MODEL_SYNC
TASK_RECONFIGURE = dispatch.RECONFIGURE


# --- the node ------------------------------------------------------------------------------
def node_queue(node_name: str) -> str:
    """The queue this node's agent consumes."""
    return dispatch.node_queue(node_name)


def node_register(*, name: str, zone: str, grpc_address: str, http_address: str, metrics_address: str,
                  triton_version: str = "", tensorrt_version: str = "", backends: tuple[str, ...] = (),
                  memory_bytes: int = 0, credential: str = "") -> str:  # fmt: skip
    """Creates the node or updates its endpoints and what its Triton can serve; returns its id."""
    node = nodes.node_register(name=name, zone=zone, grpc_address=grpc_address, http_address=http_address,
                               metrics_address=metrics_address, triton_version=triton_version,
                               tensorrt_version=tensorrt_version, backends=list(backends),
                               memory_bytes=memory_bytes, credential=credential)  # fmt: skip
    return str(node.pk)


def node_heartbeat(*, node_id: str, triton_ready: bool) -> bool:
    """False: the node was revoked (or deleted) and must stop serving."""
    return nodes.node_heartbeat(node_id=node_id, triton_ready=triton_ready)


def node_report_inventory(*, node_id: str, gpus: list[GpuInfo]) -> None:
    nodes.node_report_inventory(node_id=node_id, gpus=gpus)


def node_report_gpu_health(*, node_id: str, readings: list[GpuHealth]) -> None:
    nodes.node_report_gpu_health(node_id=node_id, readings=readings)


def node_set_mig_endpoints(*, node_id: str, addresses: dict[str, str]) -> None:
    nodes.node_set_mig_endpoints(node_id=node_id, addresses=addresses)


def node_admin_state(*, node_id: str) -> str:
    return str(Node.objects.values_list("admin_state", flat=True).get(pk=node_id))


def node_set_admin_state(*, node_id: str, admin_state: str) -> None:
    nodes.node_set_admin_state(node=Node.objects.get(pk=node_id), admin_state=admin_state)


def node_metrics_address(*, node_id: str) -> str:
    return str(Node.objects.values_list("metrics_address", flat=True).get(pk=node_id))


# --- MIG reconfiguration --------------------------------------------------------------------
def reconfiguration_claim(*, reconfiguration_id: str) -> tuple[Reconfiguration | None, bool]:
    """(the run, True if it was already running: a re-delivery after the agent died)."""
    return nodes.reconfiguration_claim(reconfiguration_id=reconfiguration_id)


def reconfiguration_moved(*, run: Reconfiguration) -> dict[str, str]:
    """The slices the run has moved so far (old uuid → new), as recorded."""
    return dict(Reconfiguration.objects.values_list("moved", flat=True).get(pk=run.pk))


def reconfiguration_step_start(*, run: Reconfiguration, name: str) -> ReconfigurationStep:
    return nodes.reconfiguration_step_start(run=run, name=name)


def reconfiguration_step_end(*, step: ReconfigurationStep, state: str, detail: str = "") -> None:
    nodes.reconfiguration_step_end(step=step, state=state, detail=detail)


def reconfiguration_finish(*, run: Reconfiguration, succeeded: bool, error: str = "") -> None:
    nodes.reconfiguration_finish(run=run, succeeded=succeeded, error=error)


def reconfiguration_record_moved(*, run: Reconfiguration, moved: dict[str, str]) -> None:
    nodes.reconfiguration_record_moved(run=run, moved=moved)


def plan_moves(*, node_id: str, gpu_index: int, placements: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Where each slice in use goes in the new layout, or why it cannot (see nodes.services)."""
    return nodes.plan_moves(Node.objects.get(pk=node_id).gpus.get(index=gpu_index), placements)


def slice_move(*, node_id: str, from_uuid: str, to_uuid: str, tenant_id: str | None) -> None:
    """A slice's replicas and its tenant dedication follow it to its new MIG device."""
    rollouts.replicas_move(node_id=node_id, from_uuid=from_uuid, to_uuid=to_uuid)
    nodes.mig_dedication_move(node_id=node_id, to_uuid=to_uuid, tenant_id=tenant_id)


# --- replicas and the versions a Triton must hold ---------------------------------------------
def replica_claim(*, replica_id: str) -> Replica | None:
    return rollouts.replica_claim(replica_id=replica_id)


def replica_mark_live(*, replica: Replica) -> bool:
    return rollouts.replica_mark_live(replica=replica)


def replica_mark_failed(*, replica: Replica, error: str) -> None:
    rollouts.replica_mark_failed(replica=replica, error=error)


def model_name(*, model_id: str) -> str:
    return str(Model.objects.values_list("name", flat=True).get(pk=model_id))


def resident_versions(*, node_id: str, model_id: UUID | str, mig_uuid: str = "", live_only: bool = False) -> list[Version]:
    """The versions of a model one of the node's Tritons must hold, oldest first."""
    replicas = resident_replicas(node_id=node_id, model_id=model_id, mig_uuid=mig_uuid)
    if live_only:
        replicas = replicas.filter(state=ReplicaState.LIVE)
    versions = {r.deployment.version.pk: r.deployment.version for r in replicas}
    return sorted(versions.values(), key=lambda v: v.number)


def live_versions(*, node_id: str, mig_uuid: str = "") -> list[Version]:
    """Every version live on one of the node's Tritons."""
    return [r.deployment.version for r in resident_replicas(node_id=node_id, mig_uuid=mig_uuid).filter(state=ReplicaState.LIVE)]


def resident_models(*, node_id: str, mig_uuid: str = "") -> tuple[dict[str, tuple[str, set[str]]], set[str]]:
    """({model name: (model id, live version numbers)}, names of models with a version loading)."""
    live: dict[str, tuple[str, set[str]]] = {}
    loading = set()
    for replica in resident_replicas(node_id=node_id, mig_uuid=mig_uuid):
        model = replica.deployment.version.model
        if replica.state == ReplicaState.LOADING:
            loading.add(model.name)
        else:
            live.setdefault(model.name, (str(model.pk), set()))[1].add(str(replica.deployment.version.number))
    return live, loading


def recently_released(*, node_id: str, model_id: UUID | str, mig_uuid: str = "", within_s: float) -> bool:
    """A replica of the model here was retired or parked less than `within_s` ago."""
    from datetime import timedelta

    from django.utils import timezone

    return Replica.objects.filter(
        node_id=node_id, mig_uuid=mig_uuid, deployment__version__model_id=model_id,
        state__in=[ReplicaState.RETIRED, ReplicaState.PARKED], updated__gt=timezone.now() - timedelta(seconds=within_s),
    ).exists()  # fmt: skip


def sync_model_later(*, node_name: str, model_id: UUID | str, mig_uuid: str = "", countdown: float | None = None) -> None:
    """Queues a convergence of one of this node's Tritons for the model (on its own queue,
    so that it never races a rollout task)."""
    dispatch.model_sync(node_name=node_name, model_id=model_id, mig_uuid=mig_uuid, countdown=countdown)


# --- what a version is made of ----------------------------------------------------------------
def fetch_artifact(*, version: Version, into: Path) -> None:
    """The version's files, verified against its sha256, unpacked into a new directory: from
    the artifact store this node shares with the control plane, or, on a provisioned node that
    shares no disk with it, over HTTP with the node's own credential."""
    sha = version.artifact_sha256
    if artifact_path(sha).exists() or not settings.CONTROL_PLANE_URL or not settings.NODE_CREDENTIAL_FILE:
        data = artifact_read_verified(sha)
    else:
        credential = Path(settings.NODE_CREDENTIAL_FILE).read_text().strip()
        data = artifact_fetch(sha, base_url=settings.CONTROL_PLANE_URL, credential=credential, ca_file=settings.CA_FILE)
    unpack_into(data, version.format, into)


def triton_config(*, version: Version, versions: list[int], backends: tuple[str, ...] = (),
                  gpu_memory_mib: dict[int, int] | None = None) -> str:  # fmt: skip
    """config.pbtxt for the model serving `versions`, from `version` (the newest) and its
    profile, naming the backend that serves its format among the node's `backends`.
    `gpu_memory_mib` (GPU index -> memory, from the node's inventory) sizes a generative
    engine's share of the GPU its profile puts it on, where the node's vLLM runs on CUDA."""
    device_memory = 0
    if version.format == ArtifactFormat.VLLM and runtimes.engine_device(backends) == "gpu":
        index = engine_gpu(normalise(version.model.serving_profile))
        device_memory = (gpu_memory_mib or {}).get(index, 0) * 1024**2
    return render_config(version, versions=versions, backends=backends, device_memory=device_memory)


def runner(*, version: Version, backends: tuple[str, ...]) -> Path | None:
    """The appliance's model.py that serves this version on a node with `backends` (ONNX
    Runtime in the Python backend, or the vLLM runner), or None."""
    return runtimes.runner(version.format, backends)


def is_generative(version: Version) -> bool:
    """A vllm-format version (text in, a stream of text out)."""
    return version.format == ArtifactFormat.VLLM


def warmup_files(*, version: Version) -> dict[str, bytes]:
    """The warm-up sample files that config names (written beside it, under WARMUP_DIR)."""
    return _warmup_files(version, version.model.serving_profile)
