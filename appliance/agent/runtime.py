"""What a node agent knows about its own node, for tasks running inside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import InferenceServerClient

from appliance.agent.repository import ModelRepository


@dataclass(frozen=True)
class Endpoint:
    """One Triton of the node: its model repository and gRPC address."""

    repository: ModelRepository
    address: str

    def client(self) -> InferenceServerClient:
        return InferenceServerClient(self.address)


@dataclass
class LocalNode:
    node_id: str
    name: str
    repository: ModelRepository
    triton_grpc: str
    inventory: Any = field(default=None)  # appliance.nodes.inventory.base.Inventory
    mig_servers: Any = field(default=None)  # appliance.agent.mig_servers.MigServers

    def client(self) -> InferenceServerClient:
        return InferenceServerClient(self.triton_grpc)

    def endpoint(self, mig_uuid: str = "") -> Endpoint:
        """The main Triton, or the one running on MIG device `mig_uuid`."""
        if not mig_uuid:
            return Endpoint(self.repository, self.triton_grpc)
        if self.mig_servers is None or mig_uuid not in self.mig_servers.servers:
            raise LookupError(f"MIG device {mig_uuid} has no Triton on node {self.name}")
        supervisor = self.mig_servers.servers[mig_uuid][1]
        return Endpoint(ModelRepository(supervisor.repository, backends=self.repository.backends), supervisor.ports.grpc_address)


_local: LocalNode | None = None


def set_local(node: LocalNode | None) -> None:
    global _local
    _local = node


def require_local() -> LocalNode:
    if _local is None:
        raise RuntimeError("this task runs only inside a node agent (it was routed to the wrong worker)")
    return _local
