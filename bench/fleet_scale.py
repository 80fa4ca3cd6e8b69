"""A simulated fleet of 200 nodes × 8 GPUs: one full health sweep, and the node list API.

Creates its own database (appliance_bench, dropped afterwards), registers the
nodes and simulated GPUs through the services, gives every node a live Triton
address that refuses connections (so every probe really runs and fails), then
times `nodes.tasks.sweep()` and `GET /api/v1/nodes/` (first page of 100 and all
200) through Django's test client. Targets (issue 5): sweep < 10 s, list < 300 ms.

    .venv/bin/python bench/fleet_scale.py [--nodes 200 --gpus 8 --repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from scratch_db import scratch_database  # noqa: E402

from appliance.core.process import free_port  # noqa: E402

DB = "appliance_bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with scratch_database(DB):
        from django.test import Client
        from django.utils import timezone

        from appliance.accounts.services import account_create
        from appliance.nodes.inventory.simulated import SimulatedInventory
        from appliance.nodes.models import Node
        from appliance.nodes.services import node_create, node_report_gpu_health, node_report_inventory
        from appliance.nodes.tasks import sweep

        started = time.perf_counter()
        state = Path(os.environ["APPLIANCE_VAR_DIR"])
        state.mkdir(parents=True, exist_ok=True)
        port = free_port()  # nobody listens there: every probe fails
        for n in range(args.nodes):
            node = node_create(name=f"gpu-{n:04d}", zone=f"zone-{n % 4}", grpc_address=f"127.0.0.1:{port}")
            sim = SimulatedInventory(state_path=state / f"{node.name}.json", models=("H100-80GB",) * args.gpus)
            node_report_inventory(node_id=node.pk, gpus=sim.gpus())
            node_report_gpu_health(node_id=node.pk, readings=sim.health())
        Node.objects.update(last_heartbeat=timezone.now(), triton_ready=True)
        setup_s = time.perf_counter() - started

        sweeps = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = sweep()
            sweeps.append(time.perf_counter() - t0)
        assert len(result) == args.nodes and set(result.values()) == {"unhealthy"}, "every probe must fail closed"

        _, token = account_create(username="bench", password="bench-password-123", role="operator")
        client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
        timings: dict[str, list[float]] = {"page of 100": [], f"all {args.nodes}": []}
        for _ in range(args.repeat):
            for label, query in (("page of 100", ""), (f"all {args.nodes}", f"?limit={args.nodes}")):
                t0 = time.perf_counter()
                response = client.get(f"/api/v1/nodes/{query}")
                timings[label].append(time.perf_counter() - t0)
                assert response.status_code == 200
        print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} CPUs; {args.nodes} nodes × {args.gpus} "
              f"simulated H100 GPUs (setup {setup_s:.1f} s); median of {args.repeat}")  # fmt: skip
        print(f"{'measurement':<34} {'median':>10} {'max':>10} {'target':>8}")
        print(
            f"{'health sweep (probes + verdicts)':<34} {statistics.median(sweeps):>9.2f}s {max(sweeps):>9.2f}s {'< 10 s':>8}"
        )
        for label, values in timings.items():
            name = f"GET /api/v1/nodes/ ({label})"
            print(f"{name:<34} {statistics.median(values) * 1000:>8.0f}ms {max(values) * 1000:>8.0f}ms {'< 300 ms':>8}")


if __name__ == "__main__":
    main()
