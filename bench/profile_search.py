"""Profile search on MiniLM (all-MiniLM-L6-v2 as an ONNX version, FP32), through the
product's own search: the search row made by the service the API calls
(optimisation.services.profile_search_create), then the optimiser's task run in this
process (optimisation.tasks.profile_search: a private Triton, the version under each
profile of the grid, the stock asyncio gRPC client), instead of on the optimiser's worker,
so that the bench needs no broker. Requests carry the 256 first rows of the sentence-pairs
validation set, one row per request, padded to 48 word pieces as the set is stored
(--tokens 16: the same sentences truncated to 16, short queries).

Prints each profile's throughput, p50, p99, whether it met the objective, and the client's
CPU per request; then the recommended profile's throughput over the no-batching baseline's
(max batch size 1, one instance) and over the best no-batching profile's.

Its own database (appliance_bench_profiles, dropped afterwards). The machine's load average
is printed before and after: on a shared machine, other work changes the numbers.

    flock /tmp/heavy.lock .venv/bin/python bench/profile_search.py [--concurrency 32] [--requests 1000] \\
        [--objective-ms 1000] [--tokens 48]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from scratch_db import scratch_database  # noqa: E402

MODEL = "minilm-onnx"


def run(args: argparse.Namespace) -> None:
    from appliance.audit.choices import Origin
    from appliance.audit.context import audit_context
    from appliance.catalog import services as catalog
    from appliance.nodes.services import node_register
    from appliance.optimisation import services, tasks
    from appliance.optimisation.models import ProfileSearch
    from triton_models.minilm import build as minilm_build
    from triton_models.minilm import validation as minilm_validation

    with audit_context(origin=Origin.CLI, actor="bench"):
        catalog.model_create(name=MODEL)
        version = catalog.version_upload(model=MODEL, fmt="onnx", artifact=io.BytesIO(minilm_build.onnx_model()),
                                         signature=minilm_validation.SIGNATURE,
                                         max_batch_size=minilm_validation.MAX_BATCH_SIZE)  # fmt: skip
        with mock.patch.object(minilm_validation, "TOKENS", args.tokens):
            content = minilm_validation.validation_set()
        pairs = catalog.validation_set_upload(model=version.model, name="sentence-pairs", metric="embedding_agreement",
                                              content=io.BytesIO(content))  # fmt: skip
        node = node_register(name="cpu-node", zone="default", grpc_address="", http_address="", metrics_address="",
                             backends=["python"])  # fmt: skip
        # The task runs here, not on the optimiser's worker: nothing is sent to the broker.
        with mock.patch.object(services, "_send"):
            search = services.profile_search_create(version=version, node=node, objective_p99_ms=args.objective_ms,
                                                    concurrency=args.concurrency, requests=args.requests,
                                                    input_set=pairs, requested_by="bench")  # fmt: skip
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    started = time.monotonic()
    outcome = tasks.profile_search(str(search.pk))
    took = time.monotonic() - started
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    search = ProfileSearch.objects.get(pk=search.pk)
    if outcome != "succeeded":
        raise SystemExit(f"the search {outcome}: {search.error}")
    report(search, took, args.tokens)


def report(search: object, took: float, tokens: int) -> None:
    from appliance.optimisation.models import ProfileSearch

    assert isinstance(search, ProfileSearch)
    results = list(search.results.all())
    print(f"\nProfile search, MiniLM FP32 ONNX (Python backend + ONNX Runtime, 1 thread per instance), "
          f"{tokens} tokens per row, concurrency {search.concurrency}, {search.requests} requests per profile, "
          f"objective p99 ≤ {search.objective_p99_ms:g} ms")  # fmt: skip
    print(f"measured on {search.measured_on}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()}")
    for line in search.pruned:
        print(f"  pruned: {line}")
    print(f"\n| {'profile':<40} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} | {'met':>4} | {'client µs/req':>13} |")
    print(f"|{'-' * 42}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 6}|{'-' * 15}|")
    for r in results:
        label = ("no batching" if r.max_batch_size <= 1 else f"batch ≤ {r.max_batch_size}, delay {r.max_queue_delay_us} µs")
        label += f", {r.instance_count} inst."
        mark = " *" if search.recommended_id == r.pk else ""
        numbers = (f"{r.throughput:>7.1f} | {r.p50_ms:>7.1f} | {r.p99_ms:>7.1f}" if r.throughput is not None
                   else f"{'–':>7} | {'–':>7} | {'–':>7}")  # fmt: skip
        client = f"{r.client_cpu_us:>13.0f}" if r.client_cpu_us is not None else f"{'–':>13}"
        print(f"| {label + mark:<40} | {numbers} | {'yes' if r.met_objective else 'no':>4} | {client} |"
              + (f" {r.note}" if r.note else ""))  # fmt: skip
    print(f"\n* recommended. {search.recommendation}")
    unbatched = [r for r in results if r.max_batch_size <= 1 and r.throughput]
    best = search.recommended
    if best is not None and best.throughput and unbatched:
        plain = min(unbatched, key=lambda r: r.instance_count)
        top = max(unbatched, key=lambda r: r.throughput or 0.0)
        print(f"recommended / no batching ({plain.instance_count} instance): {best.throughput / (plain.throughput or 1):.2f}x;"
              f" recommended / best no-batching ({top.instance_count} instances): "
              f"{best.throughput / (top.throughput or 1):.2f}x")  # fmt: skip
    print(f"search took {took:.0f} s for {len(results)} profiles")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--objective-ms", type=float, default=1000.0)
    parser.add_argument("--tokens", type=int, default=48, help="word pieces per row (padded or truncated)")
    args = parser.parse_args()
    os.environ.setdefault("APPLIANCE_VAR_DIR", str(ROOT / "var" / "bench"))
    with scratch_database("appliance_bench_profiles"):
        run(args)


if __name__ == "__main__":
    main()
