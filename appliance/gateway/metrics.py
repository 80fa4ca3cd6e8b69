"""The gateway's Prometheus metrics.

Every gateway process counts into prometheus_client's multiprocess files (a
directory `run_gateway` prepares, with `multiproc.py`, before this module is
imported and before it forks its workers), and
one HTTP endpoint (`--metrics-bind`, loopback by default) serves the sum over
all of them. Labels are bounded sets: tenant slug, model name, gRPC status
name, priority class, replica address.
"""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from appliance.gateway.multiproc import MULTIPROC_ENV

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


REQUESTS = Counter("gateway_requests", "Inference requests answered, by tenant, model and gRPC status",
                   ["tenant", "model", "status"])  # fmt: skip
LATENCY = Histogram("gateway_request_seconds", "Time from arrival to answer of inference requests", ["model"],
                    buckets=LATENCY_BUCKETS)  # fmt: skip
QUEUE_TIME = Histogram("gateway_queue_seconds", "Time a request waited in the gateway for a replica slot", ["model"],
                       buckets=LATENCY_BUCKETS)  # fmt: skip
INFLIGHT = Gauge("gateway_inflight", "Requests sent to a replica and not yet answered", ["replica"],
                 multiprocess_mode="livesum")  # fmt: skip
LIMIT = Gauge("gateway_concurrency_limit", "A replica's adaptive concurrency limit, per gateway process", ["replica"],
              multiprocess_mode="all")  # fmt: skip
SHED = Counter("gateway_shed", "Requests refused with RESOURCE_EXHAUSTED (overload or quota)", ["model", "priority", "reason"])
RETRIED = Counter("gateway_retried", "Requests retried after their replica was not there (UNAVAILABLE, or NOT_FOUND from a Triton without the model)", ["model"])
CACHE = Counter("gateway_cache_lookups", "Response-cache lookups", ["model", "result"])


def serve_metrics(bind: str) -> None:
    """Starts the endpoint in this process (a daemon thread), summing every worker's files."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    host, _, port = bind.rpartition(":")
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)



class Tally:
    """The hot path counts here (plain dict arithmetic); `flush` hands the sums to
    prometheus_client once a second, so a request pays for no lock, pid check or
    mmap write. Histogram sums go into the children's bucket values directly (what
    Histogram.observe does one observation at a time; prometheus-client is pinned)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[Any, tuple[str, ...]], float] = defaultdict(float)
        self.hists: dict[tuple[Any, tuple[str, ...]], list[float]] = {}

    def inc(self, counter: Any, *labels: str, amount: float = 1.0) -> None:
        self.counts[(counter, labels)] += amount

    def observe(self, histogram: Any, *labels: str, value: float) -> None:
        row = self.hists.get((histogram, labels))
        if row is None:
            row = self.hists[(histogram, labels)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        row[0] += value
        row[1 + bisect.bisect_left(LATENCY_BUCKETS, value)] += 1

    def flush(self, inflight: dict[str, int] | None = None, limits: dict[str, float] | None = None) -> None:
        counts, self.counts = self.counts, defaultdict(float)
        hists, self.hists = self.hists, {}
        for (counter, labels), amount in counts.items():
            counter.labels(*labels).inc(amount)
        for (histogram, labels), row in hists.items():
            child = histogram.labels(*labels)
            child._sum.inc(row[0])
            for index, count in enumerate(row[1:]):
                if count:
                    child._buckets[index].inc(count)
        for address, value in (inflight or {}).items():
            INFLIGHT.labels(address).set(value)
        for address, value in (limits or {}).items():
            LIMIT.labels(address).set(value)
