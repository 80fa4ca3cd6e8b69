"""Converges this node's Triton to the versions the database says it should hold."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tritonclient.grpc as triton_grpc
from django.conf import settings

from appliance.agent import control
from appliance.agent.control import Version
from appliance.agent.runtime import Endpoint, LocalNode
from appliance.core.errors import DomainError
from appliance.core.process import wait_until

log = logging.getLogger(__name__)


class LoadError(RuntimeError):
    """Triton refused to load or did not make ready a version."""


_locks: dict[tuple[Path, str], threading.RLock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _one_writer(repository: Path, model_name: str) -> Iterator[None]:
    """One writer and loader of a model's directory at a time. The agent's task worker and
    its Tritons' after-start reloads (supervisor threads) can converge the same model at
    once -- a MIG reconfiguration's reload step and the new device's Triton reloading what
    is live on it -- and two writers of one version directory left Triton loading a
    version whose files the other had just replaced (seen in an end-to-end run)."""
    with _locks_guard:
        lock = _locks.setdefault((repository, model_name), threading.RLock())
    with lock:
        yield


def write_model(local: LocalNode, *, model_name: str, versions: list[Version], mig_uuid: str = "") -> None:
    """Files and config only: what Triton will load next."""
    repo = local.endpoint(mig_uuid).repository
    with _one_writer(repo.root, model_name):
        if not versions:
            repo.remove_model(model_name)
            return
        for version in versions:
            repo.materialise(version)
        repo.write_config(versions[-1], versions=[v.number for v in versions],
                          gpu_memory_mib=device_memory_mib(local, mig_uuid))  # fmt: skip


def device_memory_mib(local: LocalNode, mig_uuid: str = "") -> dict[int, int]:
    """The memory of each device a Triton of this node sees, by its index there (a generative
    engine on CUDA takes its share of it): the node's GPUs for the main Triton; for a MIG
    slice's Triton, that slice alone, as device 0 (CUDA_VISIBLE_DEVICES names only it)."""
    try:
        gpus = local.inventory.gpus() if local.inventory is not None else []
    except Exception:  # noqa: BLE001 - an inventory that cannot be read: a GPU engine's config says so
        return {}
    if not mig_uuid:
        return {g.index: g.memory_mib for g in gpus}
    found = [d.memory_mib for g in gpus for d in g.mig_devices if d.uuid == mig_uuid]
    return {0: found[0]} if found else {}


def load_model(local: LocalNode, *, model_name: str, versions: list[Version], mig_uuid: str = "") -> None:
    """Makes one of the node's Tritons (the main one, or a MIG device's) serve exactly
    these versions (an empty list unloads the model). Triton reloads in the
    background: versions already serving keep serving until the new set is ready,
    and a failed load leaves the old set in place."""
    endpoint = local.endpoint(mig_uuid)
    with _one_writer(endpoint.repository.root, model_name):
        _load(endpoint, local, model_name=model_name, versions=versions, mig_uuid=mig_uuid)


def _load(endpoint: Endpoint, local: LocalNode, *, model_name: str, versions: list[Version], mig_uuid: str) -> None:
    client = endpoint.client()
    if not versions:
        try:
            client.unload_model(model_name)
        except triton_grpc.InferenceServerException as exc:
            log.warning("unloading %s: %s", model_name, exc.message())
        endpoint.repository.remove_model(model_name)
        return
    write_model(local, model_name=model_name, versions=versions, mig_uuid=mig_uuid)
    try:
        client.load_model(model_name)
    except triton_grpc.InferenceServerException as exc:
        raise LoadError(f"Triton refused to load {model_name}: {exc.message()}") from exc
    for version in versions:
        ready = functools.partial(client.is_model_ready, model_name, str(version.number))
        if not wait_until(ready, timeout=settings.TRITON_LOAD_TIMEOUT_S):
            raise LoadError(f"{model_name} version {version.number} did not become ready")
    endpoint.repository.remove_versions_except(model_name, {v.number for v in versions})


def reload_live_models(local: LocalNode, mig_uuid: str = "") -> None:
    """After a Triton (re)starts it holds nothing (EXPLICIT mode): load what is live on it."""
    models = {v.model.name: v.model_id for v in control.live_versions(mig_uuid=mig_uuid)}
    for model_name, model_id in models.items():
        versions = control.resident_versions(model_id=model_id, mig_uuid=mig_uuid, live_only=True)
        try:
            load_model(local, model_name=model_name, versions=versions, mig_uuid=mig_uuid)
        except (LoadError, DomainError) as exc:
            # The replica stays recorded as live; the operator sees this in the agent log.
            log.error("could not reload %s after Triton started: %s", model_name, exc)


def diverged_models(local: LocalNode, mig_uuid: str = "") -> list[str]:
    """Models with a version recorded live here that this Triton does not hold READY
    (nothing of the model loading right now). Triton can drop a version the database
    still serves: an outside unload, or a reload that went wrong; the agent converges them."""
    live, loading = control.resident_models(mig_uuid=mig_uuid)
    if not live:
        return []
    index = local.endpoint(mig_uuid).client().get_model_repository_index(client_timeout=settings.HEALTH_PROBE_TIMEOUT_S)
    ready = {(m.name, m.version) for m in index.models if m.state == "READY"}
    return [
        model_id for name, (model_id, versions) in live.items()
        if name not in loading and any((name, v) not in ready for v in versions)
    ]  # fmt: skip
