"""The node agent: supervises this node's Triton, reports heartbeats, and runs the
node-local Celery tasks (rollout steps) from the queue named after the node."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import tritonclient.grpc as triton_grpc
from django.conf import settings
from django.db import close_old_connections

from appliance.agent import control, sync
from appliance.agent.engine_meter import EngineMeter, read_page
from appliance.agent.mig_servers import MigServers
from appliance.agent.repository import ModelRepository
from appliance.agent.runtime import LocalNode, set_local
from appliance.audit.choices import Origin
from appliance.audit.context import audit_context
from appliance.core.tritonserver import TritonInstall, TritonPorts, TritonSupervisor, installed_backends, triton_ready
from appliance.core.vllm_env import engine_capabilities, engine_environment, memory_bytes
from appliance.nodes.inventory.base import Inventory, open_inventory

log = logging.getLogger(__name__)


@dataclass
class AgentOptions:
    name: str
    zone: str
    ports: TritonPorts
    workdir: Path
    inventory: str = "none"  # none (CPU node), simulated, nvml
    simulate_gpus: tuple[str, ...] = ()
    mig_port_base: int = 0  # ports of the per-MIG-device Tritons, 3 each from here; 0: any free ports
    # The node's own credential, from enrolment (ansible: /etc/appliance/node-credential); '' for a
    # node that was not enrolled with a join token.
    credential_file: Path | None = None

    def credential(self) -> str:
        return self.credential_file.read_text().strip() if self.credential_file else ""

    def open_inventory(self) -> Inventory:
        if self.inventory == "simulated":
            return open_inventory("simulated", state_path=self.workdir / "simulated-gpus.json", models=self.simulate_gpus)
        return open_inventory(self.inventory)


def _triton_version(address: str) -> str:
    try:
        return str(triton_grpc.InferenceServerClient(address).get_server_metadata(client_timeout=2.0).version)
    except Exception:
        return ""


def _converge_diverged(local: LocalNode | None, sent: dict[str, float]) -> None:
    """A live version missing from the node's main Triton is loaded again, through the
    node's own queue (so that it never races a rollout task), at most every 10 s per model."""
    if local is None:
        return
    now = time.monotonic()
    for model_id in sync.diverged_models(local):
        if now - sent.get(model_id, -1e9) < 10.0:
            continue
        sent[model_id] = now
        log.warning("model %s is live here but not ready in Triton; converging", model_id)
        control.sync_model_later(model_id=model_id)


def _engine_reports(supervisor: TritonSupervisor, local: LocalNode, stop: threading.Event) -> None:
    """Every heartbeat period, the generative engines of every Triton of the node (its main one
    and its MIG slices') for the console's charts. A thread of its own: a Triton slow to answer
    its metrics delays these readings, never the heartbeat."""
    meter = EngineMeter()
    with audit_context(origin=Origin.AGENT, actor=f"agent:{supervisor.node_name}"):
        while not stop.wait(settings.NODE_HEARTBEAT_S):
            try:
                tritons = [("", supervisor.ports.metrics_address)]
                if local.mig_servers is not None:
                    tritons += [(uuid, server.ports.metrics_address)
                                for uuid, (_, server) in list(local.mig_servers.servers.items())]  # fmt: skip
                pages = [(device, page) for device, address in tritons if (page := read_page(address)) is not None]
                readings = meter.readings(pages)
                if readings:
                    close_old_connections()
                    control.node_report_engines(readings=readings)
                meter.commit()
            except control.CredentialRefused:
                return  # revoked: the heartbeat stops the agent
            except Exception:
                log.exception("engine read-outs not reported this time")


def _heartbeats(supervisor: TritonSupervisor, inventory: Inventory, stop: threading.Event,
                local: LocalNode | None = None) -> None:  # fmt: skip
    """Liveness every beat; the GPU inventory whenever it differs from the last report;
    live models Triton lost are converged."""
    reported: list[dict[str, Any]] = []
    converged: dict[str, float] = {}
    with audit_context(origin=Origin.AGENT, actor=f"agent:{supervisor.node_name}"):
        while not stop.is_set():
            try:
                close_old_connections()
                ready = supervisor.alive() and triton_ready(supervisor.ports.grpc_address)
                gpus = inventory.gpus()
                if [g.as_dict() for g in gpus] != reported:
                    control.node_report_inventory(gpus=gpus)
                    reported = [g.as_dict() for g in gpus]
                control.node_report_gpu_health(readings=inventory.health())
                alive = control.node_heartbeat(triton_ready=ready)
                if alive and ready:
                    _converge_diverged(local, converged)
            except control.CredentialRefused:  # whichever request of the beat saw it first
                alive = False
            except Exception:
                log.exception("heartbeat failed")
                alive = True
            if not alive:
                # Revoked by an operator (or deleted): stop serving now. The worker's shutdown
                # stops Triton; a restart is refused at registration until the node enrols again.
                log.error("node %s was revoked or removed from the control plane: stopping", supervisor.node_name)
                supervisor.stop()
                os.kill(os.getpid(), signal.SIGTERM)
                return
            stop.wait(settings.NODE_HEARTBEAT_S)


def _reload_after_start(local: LocalNode, mig_uuid: str = "") -> None:
    with audit_context(origin=Origin.AGENT, actor=f"agent:{local.name}"):
        close_old_connections()
        sync.reload_live_models(local, mig_uuid=mig_uuid)


def run_agent(options: AgentOptions) -> None:
    from appliance.celery import app

    app.conf.worker_enable_remote_control = False
    install = TritonInstall.discover()
    backends = (*installed_backends(install.backend_dir), *engine_capabilities())
    repository = ModelRepository(options.workdir / "models", backends=backends)
    supervisor = TritonSupervisor(
        node_name=options.name,
        repository=repository.root,
        ports=options.ports,
        log_path=options.workdir / "logs" / "tritonserver.log",
        install=install,
        extra_env=engine_environment(options.workdir / "logs"),
    )
    if settings.CONTROL_PLANE_URL and options.credential_file:
        # A provisioned node: every request goes over HTTP with the node's own credential.
        control.connect(url=settings.CONTROL_PLANE_URL, credential=options.credential(), ca_file=settings.CA_FILE)
    node_id = _register(options, backends, memory_bytes=memory_bytes())
    inventory = options.open_inventory()
    mig_servers = MigServers(node_name=options.name, workdir=options.workdir, host=options.ports.host,
                             port_base=options.mig_port_base, inventory=inventory)  # fmt: skip
    local = LocalNode(node_id=node_id, name=options.name, repository=repository, triton_grpc=options.ports.grpc_address,
                      inventory=inventory, mig_servers=mig_servers)  # fmt: skip
    set_local(local)
    mig_servers.after_start = lambda uuid: _reload_after_start(local, uuid)
    _start_mig_servers(local)
    supervisor.on_start.append(lambda: _reload_after_start(local))
    supervisor.on_start.append(lambda: _record_version(options, backends))
    stop = threading.Event()
    supervisor.start()
    threading.Thread(target=_heartbeats, args=(supervisor, inventory, stop, local), daemon=True).start()
    threading.Thread(target=_engine_reports, args=(supervisor, local, stop), daemon=True, name="engine-reports").start()
    try:
        worker = app.Worker(
            queues=[control.node_queue(options.name)],
            pool="solo",
            concurrency=1,
            hostname=f"agent-{options.name}@{socket.gethostname()}",
            loglevel=cast(dict[str, Any], settings.LOGGING)["root"]["level"],
            without_gossip=True,
            without_mingle=True,
            # A node's broker user may use its own queue only (nodes/broker.py): no remote-control
            # (pidbox) or event exchanges, which it could neither declare nor read.
            without_heartbeat=True,
        )
        worker.start()
    finally:
        stop.set()
        mig_servers.stop_all()
        supervisor.stop()
        set_local(None)


def _start_mig_servers(local: LocalNode) -> None:
    """A Triton for every MIG device that already exists (after a restart of the agent)."""
    for gpu in local.inventory.gpus():
        for device in gpu.mig_devices:
            try:
                if hasattr(local.inventory, "detach"):
                    local.inventory.detach(device.uuid)  # the previous agent's Tritons died with it
                local.mig_servers.start(device)
            except Exception:
                log.exception("could not start a Triton for %s", device.uuid)
    with audit_context(origin=Origin.AGENT, actor=f"agent:{local.name}"):
        control.node_report_inventory(gpus=local.inventory.gpus())
        control.node_set_mig_endpoints(addresses=local.mig_servers.addresses(), metrics=local.mig_servers.metrics_addresses())


def _tensorrt_version() -> str:
    """The TensorRT this node runs plans with (its Python package), or '' where there is none."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except Exception:
        return ""
    return str(getattr(tensorrt, "__version__", ""))


def _register(options: AgentOptions, backends: tuple[str, ...], **extra: Any) -> str:
    """Registers the node with the addresses the control plane reaches its Triton at; its id."""
    advertised = options.ports.advertised()
    with audit_context(origin=Origin.AGENT, actor=f"agent:{options.name}"):
        return control.node_register(
            name=options.name, zone=options.zone, grpc_address=advertised.grpc_address,
            http_address=advertised.http_address, metrics_address=advertised.metrics_address,
            tensorrt_version=_tensorrt_version(), backends=backends, credential=options.credential(), **extra,
        )  # fmt: skip


def _record_version(options: AgentOptions, backends: tuple[str, ...]) -> None:
    version = _triton_version(options.ports.grpc_address)
    if version:
        _register(options, backends, triton_version=version)
