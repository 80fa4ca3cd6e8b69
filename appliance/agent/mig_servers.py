"""One Triton per MIG device, as the MIG guide and Triton's maintainers advise:
`CUDA_VISIBLE_DEVICES=MIG-<uuid>`, its own ports, repository and shared-memory prefix."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.core.process import free_ports, wait_until
from appliance.core.tritonserver import TritonPorts, TritonSupervisor, triton_ready
from appliance.nodes.inventory.base import MigDeviceInfo

log = logging.getLogger(__name__)


@dataclass
class MigServers:
    node_name: str
    workdir: Path
    host: str
    port_base: int
    inventory: Any
    servers: dict[str, tuple[int, TritonSupervisor]] = field(default_factory=dict)
    # Called with the device uuid after its Triton (re)starts: reload what is live on it.
    after_start: Any = None

    def _slot(self) -> int:
        used = {slot for slot, _ in self.servers.values()}
        return next(i for i in range(64) if i not in used)

    def address(self, uuid: str) -> str:
        return self.servers[uuid][1].ports.grpc_address

    def addresses(self) -> dict[str, str]:
        return {uuid: self.address(uuid) for uuid in self.servers}

    def metrics_addresses(self) -> dict[str, str]:
        return {uuid: supervisor.ports.metrics_address for uuid, (_, supervisor) in self.servers.items()}

    def start(self, device: MigDeviceInfo, *, timeout: float = 60.0) -> str:
        if device.uuid in self.servers:
            return self.address(device.uuid)
        slot = self._slot()
        if self.port_base:
            ports = TritonPorts(http=self.port_base + 3 * slot, grpc=self.port_base + 3 * slot + 1,
                                metrics=self.port_base + 3 * slot + 2, host=self.host)  # fmt: skip
        else:
            http, grpc, metrics = free_ports(3, self.host)
            ports = TritonPorts(http=http, grpc=grpc, metrics=metrics, host=self.host)
        supervisor = TritonSupervisor(
            node_name=self.node_name,
            repository=self.workdir / "mig" / device.uuid / "models",
            ports=ports,
            log_path=self.workdir / "mig" / device.uuid / "tritonserver.log",
            instance=device.uuid.removeprefix("MIG-")[:8],
            extra_env={"CUDA_VISIBLE_DEVICES": device.uuid},
        )
        if self.after_start is not None:
            supervisor.on_start.append(functools.partial(self.after_start, device.uuid))
        supervisor.start()
        self.servers[device.uuid] = (slot, supervisor)
        if not wait_until(lambda: triton_ready(supervisor.ports.grpc_address), timeout=timeout, interval=0.2):
            raise RuntimeError(f"the Triton for {device.profile} ({device.uuid}) did not become ready")
        if hasattr(self.inventory, "attach"):
            self.inventory.attach(device.uuid, f"tritonserver pid {supervisor.pid}")
        log.info("Triton for %s on %s ready at %s", device.profile, device.uuid, supervisor.ports.grpc_address)
        return supervisor.ports.grpc_address

    def stop(self, uuid: str) -> None:
        entry = self.servers.pop(uuid, None)
        if entry is None:
            return
        entry[1].stop()
        if hasattr(self.inventory, "detach"):
            self.inventory.detach(uuid)

    def stop_all(self) -> None:
        for uuid in list(self.servers):
            self.stop(uuid)
