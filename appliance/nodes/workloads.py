"""What runs on the nodes, as the nodes app may know it: the rollouts app decides that
and depends on nodes, so nodes asks through this hook instead of importing rollouts;
rollouts registers the source when the apps are ready (rollouts/apps.py).

Read by the health sweep (which versions must be ready on each node) and by the MIG
planner's moves (which slices serve something)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Workload:
    """A version resident on one of a node's Tritons (the main one, or a MIG device's)."""

    node_id: str
    mig_uuid: str  # '' for the node's main Triton
    model: str
    version: int
    live: bool  # False while it loads

    def __str__(self) -> str:
        return f"{self.model}:{self.version}"


Source = Callable[..., list[Workload]]
_source: Source | None = None


def register(source: Source) -> None:
    global _source
    _source = source


def resident(*, node_id: object = None, mig_uuid: str | None = None, live_only: bool = False) -> list[Workload]:
    """Resident versions, on one node and/or one MIG device, or everywhere; live ones only if asked."""
    if _source is None:
        raise ImproperlyConfigured("no workload source: appliance.rollouts is not installed")
    return _source(node_id=node_id, mig_uuid=mig_uuid, live_only=live_only)
