from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from appliance.agent.main import AgentOptions, run_agent
from appliance.core.env import env_str
from appliance.core.tritonserver import TritonPorts


class Command(BaseCommand):
    help = "Run a node agent: supervise this node's Triton and consume the node's task queue."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="node name (also names its Celery queue)")
        parser.add_argument("--zone", default="default")
        parser.add_argument("--host", default="127.0.0.1", help="address Triton binds to (loopback by default)")
        parser.add_argument("--advertise-host", default="",
                            help="address the control plane and gateways reach Triton at, where it is not --host")
        parser.add_argument("--http-port", type=int, default=8200)
        parser.add_argument("--grpc-port", type=int, default=8201)
        parser.add_argument("--metrics-port", type=int, default=8202)
        parser.add_argument("--workdir", type=Path, default=None, help="model repository and logs (var/nodes/<name>)")
        parser.add_argument("--inventory", choices=["none", "simulated", "nvml"], default=env_str("NODE_INVENTORY", "none"),
                            help="accelerator inventory: none (CPU node), simulated GPUs, or nvml (real NVIDIA GPUs)")
        parser.add_argument("--mig-port-base", type=int, default=0,
                            help="first port of the per-MIG-device Tritons (3 ports each); 0 takes free ports")
        parser.add_argument("--simulate-gpus", default=env_str("SIMULATE_GPUS", ""),
                            help="comma-separated GPU models for --inventory simulated, e.g. H100-80GB,H100-80GB")
        parser.add_argument("--credential-file", type=Path, default=env_str("NODE_CREDENTIAL_FILE", "") or None,
                            help="the node's own credential from enrolment (required once the node is enrolled)")

    def handle(self, *args: Any, **options: Any) -> None:
        workdir = options["workdir"] or settings.VAR_DIR / "nodes" / options["name"]
        run_agent(
            AgentOptions(
                name=options["name"],
                zone=options["zone"],
                ports=TritonPorts(
                    http=options["http_port"], grpc=options["grpc_port"], metrics=options["metrics_port"], host=options["host"],
                    advertise=options["advertise_host"],
                ),
                workdir=Path(workdir),
                inventory=options["inventory"],
                simulate_gpus=tuple(m for m in options["simulate_gpus"].split(",") if m),
                mig_port_base=options["mig_port_base"],
                credential_file=options["credential_file"],
            )
        )
