"""Server response time of every console page with realistic data: 100 nodes × 4
simulated H100s (one MIG-partitioned, slices dedicated to tenants), 50 models × 3
versions each serving on 2 nodes, 20 tenants, 100,000 audit events (a valid hash
chain), and a week of metrics (per-minute rows for the 48 hours kept at minute
resolution, hourly roll-ups for 7 days, for 100 tenant × model pairs and 400 GPUs).

Creates its own database (appliance_bench, dropped afterwards), seeds it (rows the
services would write; bulk metric and audit rows with COPY), then requests each page
through Django's test client as an administrator — middleware, view, queries and
template, no network — and prints p50 and p95 per page. Target (issue 7): p95 < 300 ms.

    .venv/bin/python bench/console_pages.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from scratch_db import scratch_database  # noqa: E402

DB = "appliance_bench"
NODES, GPUS, MODELS, TENANTS, PAIRS = 100, 4, 50, 20, 100
AUDIT_EVENTS = 100_000


def _copy(table: str, columns: tuple[str, ...], rows: Iterable[list[object]]) -> int:
    """Bulk rows with PostgreSQL's COPY; returns how many."""
    from django.db import connection

    count = 0
    with (
        connection.cursor() as cursor,
        cursor.connection.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def seed() -> dict[str, object]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from appliance.accounts.models import AccountRole, ModelGrant
    from appliance.accounts.services import api_key_create, tenant_create
    from appliance.audit.chain import GENESIS, compute_hash, link_pending
    from appliance.audit.models import AuditEvent
    from appliance.gateway.stats import BUCKETS_MS
    from appliance.metrics.collect import ALL
    from appliance.nodes.inventory.simulated import SimulatedInventory
    from appliance.nodes.models import MigDevice, Node
    from appliance.nodes.services import node_create, node_report_inventory
    from appliance.policies.models import PolicyRule
    from appliance.rollouts.models import Deployment, Replica
    from tests.factories import make_version

    rng = random.Random(7)
    state = Path(os.environ["APPLIANCE_VAR_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    tenants = [tenant_create(slug=f"team-{t:02d}", name=f"Team {t:02d}") for t in range(TENANTS)]
    nodes = []
    for n in range(NODES):
        node = node_create(name=f"gpu-{n:04d}", zone=f"zone-{n % 4}", grpc_address="127.0.0.1:1")
        sim = SimulatedInventory(state_path=state / f"{node.name}.json", models=("H100-80GB",) * GPUS)
        node_report_inventory(node_id=node.pk, gpus=sim.gpus())
        gpu = node.gpus.get(index=0)
        gpu.mig_enabled = True
        gpu.save(update_fields=["mig_enabled"])
        for i, (profile, start, size) in enumerate(
            (("3g.40gb", 0, 4), ("2g.20gb", 4, 2), ("1g.10gb", 6, 1), ("1g.10gb", 7, 1))
        ):
            MigDevice.objects.create(gpu=gpu, uuid=f"MIG-{uuid.uuid4()}", profile=profile, start=start, size=size,
                                     gpu_instance_id=i + 1, tenant=tenants[(n + i) % TENANTS] if i < 2 else None)  # fmt: skip
        nodes.append(node)
    Node.objects.update(last_heartbeat=timezone.now(), triton_ready=True, health="healthy")
    Node.objects.filter(name__in=["gpu-0003", "gpu-0042"]).update(health="degraded", health_reasons=["GPU 1 at 87 °C"])
    models = []
    for m in range(MODELS):
        for _ in range(3):
            version = make_version(f"model-{m:02d}", change_note="bench")
        models.append(version.model)
        for t in (m % TENANTS, (m + 7) % TENANTS):
            ModelGrant.objects.get_or_create(tenant=tenants[t], model=version.model)
        state_name = "progressing" if m < 3 else "live"
        deployment = Deployment.objects.create(version=version, strategy="canary" if m < 3 else "all_at_once",
                                               steps=[10, 50, 100] if m < 3 else [100], state=state_name,
                                               traffic_percent=50 if m < 3 else 100)  # fmt: skip
        for node in (nodes[m % NODES], nodes[(m + 50) % NODES]):
            Replica.objects.create(deployment=deployment, node=node, state="live")
    for t in tenants:
        api_key_create(tenant=t, name="service", models=[])
    PolicyRule.objects.create(position=10, name="restricted-on-site-a", effect="allow", classifications=["restricted"],
                              sites=["site-a"])  # fmt: skip
    admin = get_user_model().objects.create_user("bench-admin", password="bench-password-123")
    AccountRole.objects.create(user=admin, role="admin")

    # 100,000 audit events in one valid chain after what the services wrote.
    link_pending()
    head = AuditEvent.objects.filter(sequence__isnull=False).order_by("-sequence").values_list("sequence", "hash").first()
    start_time = timezone.now() - timedelta(days=30)
    columns = ("sequence", "id", "time", "actor", "origin", "action", "target_type", "target_id", "target_repr",
               "changes", "source_address", "correlation_id", "prev_hash", "hash")  # fmt: skip
    actions = ("deployment.create", "api_key.create", "node.update", "replica.update", "model_version.create",
               "reconfiguration.create", "tenant.update", "policy_rule.update")  # fmt: skip

    def events() -> Iterator[list[object]]:
        sequence, prev = head if head else (0, GENESIS)
        for i in range(AUDIT_EVENTS - sequence):
            sequence += 1
            fields = {"sequence": sequence, "id": uuid.uuid4(), "time": start_time + timedelta(seconds=25 * i),
                      "actor": f"user:operator-{i % 12}", "origin": "api" if i % 3 else "web",
                      "action": actions[i % len(actions)], "target_type": "deployment", "target_id": str(uuid.uuid4()),
                      "target_repr": f"model-{i % MODELS:02d}:{i % 3 + 1}", "changes": {"state": ["pending", "live"]},
                      "source_address": "10.0.0.7", "correlation_id": uuid.uuid4().hex, "prev_hash": prev}  # fmt: skip
            fields["hash"] = prev = compute_hash(fields)
            yield [json.dumps(v) if k == "changes" else v for k, v in fields.items()]

    _copy("audit_auditevent", columns, events())

    # A week of metrics: minute rows for the last 48 hours, hour rows for 7 days.
    now = timezone.now().replace(second=0, microsecond=0)
    pairs = sorted({(tenants[(m + k) % TENANTS].slug, models[m].name) for m in range(MODELS) for k in (0, 7)})[:PAIRS]
    width = len(BUCKETS_MS) + 1
    traffic_cols = ("resolution", "start", "tenant", "model", "requests", "errors", "latency_ms_sum", "latency_buckets",
                    "queued", "queue_ms_sum", "cache_hits", "cache_misses", "streams", "first_response_ms_sum",
                    "stream_responses", "stream_seconds_sum")  # fmt: skip

    def traffic_row(resolution: str, start: datetime, tenant: str, model: str, scale: int) -> list[object]:
        n = scale * rng.randint(50, 150)
        buckets = [0] * width
        buckets[2], buckets[4], buckets[8] = n // 2, n // 3, n - n // 2 - n // 3
        return [resolution, start, tenant, model, n, n // 200, n * 3.0, json.dumps(buckets), n, n * 0.3, n // 5,
                n - n // 5, 0, 0.0, 0, 0.0]  # fmt: skip

    # One row per minute for 48 hours and per hour for 7 days (the collector's retention).
    periods = (("minute", 48 * 60, timedelta(minutes=1), 1), ("hour", 7 * 24, timedelta(hours=1), 60))

    def starts() -> Iterator[tuple[str, datetime, int]]:
        for resolution, count, step, scale in periods:
            top = now if resolution == "minute" else now.replace(minute=0)
            for i in range(count):
                yield resolution, top - step * i, scale

    keys = [*pairs, *{(ALL, m) for _, m in pairs}, *{(t, ALL) for t, _ in pairs}, (ALL, ALL)]
    rows = _copy("metrics_trafficpoint", traffic_cols,
                 (traffic_row(r, start, tenant, model, scale) for r, start, scale in starts() for tenant, model in keys))  # fmt: skip
    gpu_cols = ("resolution", "start", "node", "gpu_index", "samples", "utilisation_sum", "memory_used_mib_sum",
                "memory_bandwidth_sum", "memory_total_mib")  # fmt: skip

    def gpu_row(resolution: str, start: datetime, scale: int, node: int, gpu: int) -> list[object]:
        samples, util = 30 * scale, rng.randint(10, 90)
        return [
            resolution,
            start,
            f"gpu-{node:04d}",
            gpu,
            samples,
            util * samples,
            30000.0 * samples,
            util * 0.6 * samples,
            81559,
        ]

    rows += _copy("metrics_gpupoint", gpu_cols,
                  (gpu_row(r, start, scale, n, g) for r, start, scale in starts() for n in range(NODES) for g in range(GPUS)))  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"admin": admin, "deployment": Deployment.objects.filter(state="progressing").first(), "metric_rows": rows,
            "audit_events": AuditEvent.objects.count()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    with scratch_database(DB):
        from django.test import Client

        started = time.perf_counter()
        world = seed()
        setup_s = time.perf_counter() - started
        client = Client()
        client.force_login(world["admin"])
        pk = world["deployment"].pk  # type: ignore[attr-defined]
        pages = {
            "overview": "/console/", "rollouts panel": "/console/rollouts-panel/", "nodes": "/console/nodes/",
            "nodes, filtered": "/console/nodes/?health=degraded", "node": "/console/nodes/gpu-0007/",
            "MIG editor": "/console/nodes/gpu-0007/gpus/0/layout/",
            "MIG preview": "/console/nodes/gpu-0007/gpus/0/layout/preview/?profile=3g.40gb&profile=2g.20gb&profile=1g.10gb",
            "models": "/console/models/", "model": "/console/models/model-07/", "rollout form": "/console/models/model-07/versions/3/rollout/",
            "deployments": "/console/deployments/", "deployment": f"/console/deployments/{pk}/",
            "tenants": "/console/tenants/", "tenant": "/console/tenants/team-03/", "policies": "/console/policies/",
            "metrics, fleet 6 h": "/console/metrics/", "metrics, fleet 7 d": "/console/metrics/?window=7d",
            "metrics, model 7 d": "/console/metrics/?model=model-07&window=7d",
            "metrics, tenant 24 h": "/console/metrics/?tenant=team-03&window=24h",
            "metrics, model 1 h": "/console/metrics/?model=model-07&window=1h",
            "audit": "/console/audit/", "audit, filtered": "/console/audit/?actor=operator-3&action=node",
        }  # fmt: skip
        results = {}
        for name, path in pages.items():
            assert client.get(path).status_code == 200, path  # warm: templates compiled, connections open
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                response = client.get(path)
                times.append(time.perf_counter() - t0)
                assert response.status_code == 200, (path, response.status_code)
            times.sort()
            results[name] = (statistics.median(times), times[max(0, int(round(0.95 * len(times))) - 1)])
        print(f"# {datetime.now(UTC):%Y-%m-%d} {platform.node()} {os.cpu_count()} CPUs; {NODES} nodes × {GPUS} GPUs, "
              f"{MODELS} models, {world['audit_events']} audit events, {world['metric_rows']} metric rows "
              f"(setup {setup_s:.0f} s); {args.repeat} requests per page")  # fmt: skip
        print(f"{'page':<24} {'p50 ms':>8} {'p95 ms':>8}  target p95 < 300 ms")
        for name, (p50, p95) in results.items():
            print(f"{name:<24} {p50 * 1000:>8.1f} {p95 * 1000:>8.1f}  {'ok' if p95 < 0.3 else 'OVER'}")


if __name__ == "__main__":
    main()
