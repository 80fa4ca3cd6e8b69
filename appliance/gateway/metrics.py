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

from appliance.gateway import contract
from appliance.gateway.multiproc import MULTIPROC_ENV

LATENCY_BUCKETS = contract.LATENCY_BUCKETS_S  # the native front's histograms have the same bounds
_M = contract.METRICS

REQUESTS = Counter(*_M["requests"], ["tenant", "model", "status"])
LATENCY = Histogram(*_M["latency"], ["model"], buckets=LATENCY_BUCKETS)
QUEUE_TIME = Histogram(*_M["queue_time"], ["model"], buckets=LATENCY_BUCKETS)
INFLIGHT = Gauge(*_M["inflight"], ["replica"], multiprocess_mode="livesum")
LIMIT = Gauge(*_M["limit"], ["replica"], multiprocess_mode="all")
SHED = Counter(*_M["shed"], ["model", "priority", "reason"])
RETRIED = Counter(*_M["retried"], ["model"])
CACHE = Counter(*_M["cache"], ["model", "result"])
_S = contract.STREAM_METRICS
TTFT = Histogram(*_S["ttft"], ["model", "version"], buckets=LATENCY_BUCKETS)
INTER_TOKEN = Histogram(*_S["inter_token"], ["model", "version"], buckets=LATENCY_BUCKETS)
OUTPUT_TOKENS = Counter(*_S["output_tokens"], ["tenant", "model", "version"])
INPUT_TOKENS = Counter(*_S["input_tokens"], ["tenant", "model", "version"])
ENGINE_KV = Gauge(*_S["engine_kv"], ["replica", "model"], multiprocess_mode="max")
ENGINE_FULL = Gauge(*_S["engine_full"], ["replica", "model"], multiprocess_mode="max")


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
        for address, limit in (limits or {}).items():
            LIMIT.labels(address).set(limit)
