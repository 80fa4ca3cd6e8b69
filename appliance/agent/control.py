"""The node agent's one way into the control plane.

Every call the agent's code makes to the control plane goes through this module (a test
holds the rest of appliance/agent to it), as one operation of the agent interface
(appliance/agentapi/ops.py): plain ids and values in, plain values or read-only records out.

Two transports, one code path: a provisioned node (`APPLIANCE_CONTROL_PLANE_URL` and its
credential file set) sends each operation over HTTP with its own credential and holds no
database or control-plane secret; an agent started beside the control plane (`make run`, the
test fleets) has the same `answer()` run in-process, through the same JSON. The records
(`Version`, `Replica`, `Reconfiguration`) are built from that JSON on both.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.audit.context import current
from appliance.catalog import runtimes
from appliance.catalog.artifacts import artifact_fetch, artifact_path, artifact_read_verified, unpack_into
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.tritonconfig import WARMUP_DIR
from appliance.core.engine_gauges import EngineReading
from appliance.core.errors import ConflictError, DomainError
from appliance.nodes import dispatch
from appliance.nodes.inventory.base import GpuHealth, GpuInfo

__all__ = ["WARMUP_DIR", "Reconfiguration", "Replica", "Version"]

log = logging.getLogger(__name__)

# The names under which the agent registers its tasks (the control plane sends them by name).
TASK_REPLICA_APPLY = dispatch.REPLICA_APPLY
TASK_MODEL_SYNC = dispatch.MODEL_SYNC
TASK_RECONFIGURE = dispatch.RECONFIGURE


class Refused(DomainError):
    """The control plane refused the request: it named something that is not the node's (403)."""

    http_status = 403


class CredentialRefused(Refused):
    """The node's credential is wrong or was revoked (401): the node must stop serving."""

    http_status = 401


# --- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    pk: str
    name: str


@dataclass(frozen=True)
class Version:
    pk: str
    number: int
    format: str
    artifact_sha256: str
    signature: dict[str, Any]
    max_batch_size: int
    decoupled: bool
    model: ModelRef

    @property
    def model_id(self) -> str:
        return self.model.pk

    def __str__(self) -> str:
        return f"{self.model.name}:{self.number}"

    @classmethod
    def of(cls, record: dict[str, Any]) -> Version:
        fields = {k: v for k, v in record.items() if k not in ("id", "model")}
        return cls(pk=record["id"], model=ModelRef(pk=record["model"]["id"], name=record["model"]["name"]), **fields)


@dataclass(frozen=True)
class Replica:
    pk: str
    mig_uuid: str
    version: Version


@dataclass
class Reconfiguration:
    pk: str
    gpu_index: int
    layout: list[str]
    placements: list[dict[str, Any]]
    previous: list[dict[str, Any]]
    previous_admin_state: str
    moves: list[dict[str, Any]]
    moved: dict[str, str]
    step: str
    inject_failure_at: str


@dataclass(frozen=True)
class Step:
    pk: str


# --- the transport -------------------------------------------------------------------------------
@dataclass
class _Door:
    """Where operations go: the control plane's URL and this node's credential (HTTP), or
    in-process for the node `node_id` (None before an unenrolled node registers)."""

    url: str = ""
    credential: str = ""
    ca_file: str = ""
    node_id: str | None = None
    attempts: int = field(default=3)


_door = _Door()


def connect(*, url: str = "", credential: str = "", ca_file: str = "") -> None:
    """Over HTTP to the control plane at `url` with the node's credential; in-process when `url` is ''."""
    global _door
    _door = _Door(url=url, credential=credential, ca_file=ca_file)


def _call(op: str, **args: Any) -> Any:
    status, body = _send(op, args)
    if status == 200:
        return body["result"]
    detail = str((body or {}).get("detail", "")) if isinstance(body, dict) else str(body)
    if status == 401:
        raise CredentialRefused(detail)
    if status == 403:
        raise Refused(detail)
    if status == 409:
        raise ConflictError(detail)
    if status == 404:
        raise LookupError(detail)
    if 400 <= status < 500:
        raise DomainError(detail)
    raise OSError(f"the control plane answered {status} to {op}: {detail}")


def _send(op: str, args: dict[str, Any]) -> tuple[int, Any]:
    wire = json.loads(json.dumps(args))  # the same JSON on both transports
    if not _door.url:
        from appliance.agentapi import ops
        from appliance.nodes.models import Node

        node = Node.objects.filter(pk=_door.node_id).first() if _door.node_id else None
        if _door.node_id and node is None:
            return 401, {"detail": "the node was removed from the control plane"}
        status, body = ops.answer(op, wire, node=node, credential=_door.credential)
        return status, json.loads(json.dumps(body))
    import urllib.error

    from appliance.core.node_door import node_post_json

    for attempt in range(_door.attempts):
        try:
            return node_post_json(_door.url, f"/api/v1/agent/{op}/", wire, credential=_door.credential,
                                  ca_file=_door.ca_file, headers={"X-Request-ID": current().correlation_id})  # fmt: skip
        except urllib.error.URLError as exc:
            # Refused: the control plane is restarting and nothing reached it, so the request is
            # safe to send again; anything else may have reached it and is the caller's to handle.
            if not isinstance(exc.reason, ConnectionRefusedError) or attempt == _door.attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


# --- the node ------------------------------------------------------------------------------
def node_queue(node_name: str) -> str:
    """The queue this node's agent consumes."""
    return dispatch.node_queue(node_name)


def node_register(*, name: str, zone: str, grpc_address: str, http_address: str, metrics_address: str,
                  triton_version: str = "", tensorrt_version: str = "", backends: tuple[str, ...] = (),
                  memory_bytes: int = 0, credential: str = "") -> str:  # fmt: skip
    """Creates the node or updates its endpoints and what its Triton can serve; returns its id.
    An enrolled node presents its credential (over HTTP it is the request's own)."""
    if credential and not _door.url:
        _door.credential = credential
    result = _call("register", name=name, zone=zone, grpc_address=grpc_address, http_address=http_address,
                   metrics_address=metrics_address, triton_version=triton_version, tensorrt_version=tensorrt_version,
                   backends=list(backends), memory_bytes=memory_bytes)  # fmt: skip
    _door.node_id = str(result["node_id"])
    return _door.node_id


def node_heartbeat(*, triton_ready: bool) -> bool:
    """False: the node was revoked (or deleted) and must stop serving."""
    try:
        return bool(_call("heartbeat", triton_ready=triton_ready))
    except CredentialRefused:
        return False


def node_report_inventory(*, gpus: list[GpuInfo]) -> None:
    _call("report_inventory", gpus=[asdict(g) for g in gpus])


def node_report_gpu_health(*, readings: list[GpuHealth]) -> None:
    _call("report_gpu_health", readings=[asdict(r) for r in readings])


def node_report_engines(*, readings: list[EngineReading]) -> None:
    _call("report_engines", readings=[asdict(r) for r in readings])


def node_set_mig_endpoints(*, addresses: dict[str, str], metrics: dict[str, str]) -> None:
    _call("set_mig_endpoints", addresses=addresses, metrics=metrics)


def node_admin_state() -> str:
    return str(_call("admin_state"))


def node_set_admin_state(*, admin_state: str) -> None:
    _call("set_admin_state", admin_state=admin_state)


def node_metrics_address() -> str:
    return str(_call("metrics_address"))


# --- MIG reconfiguration --------------------------------------------------------------------
def reconfiguration_claim(*, reconfiguration_id: str) -> tuple[Reconfiguration | None, bool]:
    """(the run, True if it was already running: a re-delivery after the agent died)."""
    result = _call("reconfiguration_claim", reconfiguration_id=reconfiguration_id)
    record = result["run"]
    run = Reconfiguration(pk=record.pop("id"), **record) if record is not None else None
    return run, bool(result["redelivered"])


def reconfiguration_moved(*, run: Reconfiguration) -> dict[str, str]:
    """The slices the run has moved so far (old uuid → new), as recorded."""
    return dict(_call("reconfiguration_moved", reconfiguration_id=run.pk))


def reconfiguration_step_start(*, run: Reconfiguration, name: str) -> Step:
    run.step = name
    return Step(pk=str(_call("reconfiguration_step_start", reconfiguration_id=run.pk, name=name)))


def reconfiguration_step_end(*, step: Step, state: str, detail: str = "") -> None:
    _call("reconfiguration_step_end", step_id=step.pk, state=state, detail=detail)


def reconfiguration_finish(*, run: Reconfiguration, succeeded: bool, error: str = "") -> None:
    _call("reconfiguration_finish", reconfiguration_id=run.pk, succeeded=succeeded, error=error)


def reconfiguration_record_moved(*, run: Reconfiguration, moved: dict[str, str]) -> None:
    _call("reconfiguration_record_moved", reconfiguration_id=run.pk, moved=moved)
    run.moved = dict(moved)


def plan_moves(*, gpu_index: int, placements: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Where each slice in use goes in the new layout, or why it cannot (see nodes.services)."""
    moves, problem = _call("plan_moves", gpu_index=gpu_index, placements=placements)
    return list(moves), str(problem)


def slice_move(*, from_uuid: str, to_uuid: str, tenant_id: str | None) -> None:
    """A slice's replicas and its tenant dedication follow it to its new MIG device."""
    _call("slice_move", from_uuid=from_uuid, to_uuid=to_uuid, tenant_id=tenant_id)


# --- replicas and the versions a Triton must hold ---------------------------------------------
def replica_claim(*, replica_id: str) -> Replica | None:
    record = _call("replica_claim", replica_id=str(replica_id))
    if record is None:
        return None
    return Replica(pk=record["id"], mig_uuid=record["mig_uuid"], version=Version.of(record["version"]))


def replica_mark_live(*, replica: Replica) -> bool:
    return bool(_call("replica_mark_live", replica_id=replica.pk))


def replica_mark_failed(*, replica: Replica, error: str) -> None:
    _call("replica_mark_failed", replica_id=replica.pk, error=error)


def model_name(*, model_id: str) -> str:
    return str(_call("model_name", model_id=str(model_id)))


def resident_versions(*, model_id: str, mig_uuid: str = "", live_only: bool = False) -> list[Version]:
    """The versions of a model one of the node's Tritons must hold, oldest first."""
    found = _call("resident_versions", model_id=str(model_id), mig_uuid=mig_uuid, live_only=live_only)
    return [Version.of(v) for v in found]


def live_versions(*, mig_uuid: str = "") -> list[Version]:
    """Every version live on one of the node's Tritons."""
    return [Version.of(v) for v in _call("live_versions", mig_uuid=mig_uuid)]


def resident_models(*, mig_uuid: str = "") -> tuple[dict[str, tuple[str, set[str]]], set[str]]:
    """({model name: (model id, live version numbers)}, names of models with a version loading)."""
    found = _call("resident_models", mig_uuid=mig_uuid)
    live = {name: (str(model_id), set(numbers)) for name, (model_id, numbers) in found["live"].items()}
    return live, set(found["loading"])


def recently_released(*, model_id: str, mig_uuid: str = "", within_s: float) -> bool:
    """A replica of the model here was retired or parked less than `within_s` ago."""
    return bool(_call("recently_released", model_id=str(model_id), mig_uuid=mig_uuid, within_s=within_s))


def sync_model_later(*, model_id: str, mig_uuid: str = "", countdown: float | None = None) -> None:
    """Queues a convergence of one of this node's Tritons for the model (on its own queue,
    so that it never races a rollout task)."""
    _call("sync_model_later", model_id=str(model_id), mig_uuid=mig_uuid, countdown=countdown)


# --- what a version is made of ----------------------------------------------------------------
def fetch_artifact(*, version: Version, into: Path) -> None:
    """The version's files, verified against its sha256, unpacked into a new directory: from
    the artifact store this node shares with the control plane, or, on a provisioned node that
    shares no disk with it, over HTTP with the node's own credential."""
    sha = version.artifact_sha256
    if artifact_path(sha).exists() or not _door.url:
        data = artifact_read_verified(sha)
    else:
        data = artifact_fetch(sha, base_url=_door.url, credential=_door.credential, ca_file=_door.ca_file)
    unpack_into(data, version.format, into)


def triton_config(*, version: Version, versions: list[int], backends: tuple[str, ...] = (),
                  gpu_memory_mib: dict[int, int] | None = None) -> str:  # fmt: skip
    """config.pbtxt for the model serving `versions`, from `version` (the newest) and its
    profile, naming the backend that serves its format among the node's `backends`.
    `gpu_memory_mib` (GPU index -> memory, from the node's inventory) sizes a generative
    engine's share of the GPU its profile puts it on, where the node's vLLM runs on CUDA."""
    return str(_call("triton_config", version_id=version.pk, versions=list(versions), backends=list(backends),
                     gpu_memory_mib={str(k): v for k, v in (gpu_memory_mib or {}).items()}))  # fmt: skip


def runner(*, version: Version, backends: tuple[str, ...]) -> Path | None:
    """The appliance's model.py that serves this version on a node with `backends` (ONNX
    Runtime in the Python backend, or the vLLM runner), or None."""
    return runtimes.runner(version.format, backends)


def is_generative(version: Version) -> bool:
    """A vllm-format version (text in, a stream of text out)."""
    return version.format == ArtifactFormat.VLLM


def warmup_files(*, version: Version) -> dict[str, bytes]:
    """The warm-up sample files that config names (written beside it, under WARMUP_DIR)."""
    return {name: base64.b64decode(data) for name, data in _call("warmup_files", version_id=version.pk).items()}
