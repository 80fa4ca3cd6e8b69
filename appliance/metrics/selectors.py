"""Reading the time series for the console's charts: per model, per tenant or for
the whole fleet, over a chosen window, from minute rows for short windows and
hour rows for long ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, F, Max, Sum
from django.utils import timezone

from appliance.gateway.stats import bucket_quantile
from appliance.metrics.collect import ALL, SUMMED, merge
from appliance.metrics.models import EnginePoint, GpuPoint, Resolution, TrafficPoint


@dataclass(frozen=True)
class Window:
    key: str
    label: str
    span: timedelta
    resolution: str

    @property
    def step(self) -> timedelta:
        return timedelta(minutes=1) if self.resolution == Resolution.MINUTE else timedelta(hours=1)


WINDOWS = {
    w.key: w
    for w in (
        Window("1h", "last hour", timedelta(hours=1), Resolution.MINUTE),
        Window("6h", "last 6 hours", timedelta(hours=6), Resolution.MINUTE),
        Window("24h", "last 24 hours", timedelta(hours=24), Resolution.HOUR),
        Window("7d", "last 7 days", timedelta(days=7), Resolution.HOUR),
    )
}
DEFAULT_WINDOW = "6h"


def window_of(key: str | None) -> Window:
    return WINDOWS.get(key or "", WINDOWS[DEFAULT_WINDOW])


def _grid(window: Window, now: datetime) -> list[datetime]:
    step = window.step
    end = now.replace(second=0, microsecond=0)
    if window.resolution == Resolution.HOUR:
        end = end.replace(minute=0)
    count = int(window.span / step)
    return [end - step * i for i in range(count, -1, -1)]


def traffic_series(*, window: Window, model: str | None = None, tenant: str | None = None,
                   now: datetime | None = None) -> dict[str, list[Any]]:  # fmt: skip
    """Columns for uPlot: t (unix seconds) and one list per measure, None where nothing was measured."""
    now = now or timezone.now()
    grid = _grid(window, now)
    qs = TrafficPoint.objects.filter(resolution=window.resolution, start__gte=grid[0], model=model or ALL,
                                     tenant=tenant or ALL)  # fmt: skip
    rows = merge(qs.only("start", "latency_buckets", *SUMMED), (*SUMMED,))
    seconds = window.step.total_seconds()
    out: dict[str, list[Any]] = {k: [] for k in ("t", "rps", "success", "p50", "p95", "p99", "queue_ms", "ttfr_ms",
                                                  "tokens_s", "output_tokens_s", "decode_tokens_s",
                                                  "cache_hit")}  # fmt: skip
    empty: dict[str, Any] = dict.fromkeys(SUMMED, 0)
    for start in grid:
        row = rows.get(start) or empty
        n = row["requests"]
        out["t"].append(int(start.timestamp()))
        out["rps"].append(round(n / seconds, 3))
        buckets = list(row.get("buckets", []))
        out["success"].append(round(100 * (n - row["errors"]) / n, 2) if n else None)
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            out[name].append(bucket_quantile(buckets, int(n), q) if n and buckets else None)
        out["queue_ms"].append(round(row["queue_ms_sum"] / row["queued"], 3) if row["queued"] else None)
        out["ttfr_ms"].append(round(row["first_response_ms_sum"] / row["streams"], 2) if row["streams"] else None)
        out["tokens_s"].append(round(row["stream_responses"] / row["stream_seconds_sum"], 1)
                               if row["stream_seconds_sum"] else None)  # fmt: skip
        # Generative: tokens generated per second of the window (throughput), and a stream's decoding speed.
        out["output_tokens_s"].append(round(row["output_tokens"] / seconds, 2) if row["output_tokens"] else None)
        out["decode_tokens_s"].append(round(row["decode_tokens"] / row["decode_seconds_sum"], 1)
                                      if row["decode_seconds_sum"] else None)  # fmt: skip
        lookups = row["cache_hits"] + row["cache_misses"]
        out["cache_hit"].append(round(100 * row["cache_hits"] / lookups, 1) if lookups else None)
    return out


def gpu_series(*, window: Window, nodes: list[str] | None = None, now: datetime | None = None) -> dict[str, list[Any]]:
    """Mean utilisation and memory-bandwidth use over the GPUs, memory used summed; nodes=None: the fleet."""
    now = now or timezone.now()
    grid = _grid(window, now)
    qs = GpuPoint.objects.filter(resolution=window.resolution, start__gte=grid[0])
    if nodes is not None:
        qs = qs.filter(node__in=nodes)
    # Each GPU's own mean first (sum / samples), then across GPUs, in the database: a GPU
    # read more often must not weigh more, and a fleet is hundreds of GPUs.
    per_start = {
        row["start"]: row
        for row in qs.filter(samples__gt=0).values("start").annotate(
            utilisation=Avg(F("utilisation_sum") / F("samples")),
            bandwidth=Avg(F("memory_bandwidth_sum") / F("samples")),
            memory=Sum(F("memory_used_mib_sum") / F("samples")),
        )
    }
    out: dict[str, list[Any]] = {"t": [], "utilisation": [], "memory_gib": [], "bandwidth": []}
    for start in grid:
        row = per_start.get(start)
        out["t"].append(int(start.timestamp()))
        out["utilisation"].append(round(row["utilisation"], 1) if row else None)
        out["bandwidth"].append(round(row["bandwidth"], 1) if row else None)
        out["memory_gib"].append(round(row["memory"] / 1024, 2) if row else None)
    return out


def engine_series(*, window: Window, model: str, now: datetime | None = None) -> dict[str, Any]:
    """A generative model's engines per version: KV cache in use (mean and highest, %),
    sequences running and requests waiting (summed over the version's engines), and
    preemptions per minute. Columns `<measure>_v<N>` for each version N in `versions`."""
    now = now or timezone.now()
    grid = _grid(window, now)
    qs = EnginePoint.objects.filter(resolution=window.resolution, start__gte=grid[0], model=model, samples__gt=0)
    # Each engine's own mean first (sum / samples), then across the engines (nodes, MIG slices) of the version.
    rows = {
        (row["start"], row["version"]): row
        for row in qs.values("start", "version").annotate(
            kv=Avg(F("kv_usage_sum") / F("samples")), kv_max=Max("kv_usage_max"),
            running=Sum(F("running_sum") / F("samples")), waiting=Sum(F("waiting_sum") / F("samples")),
            preemptions=Sum("preemptions"),
        )
    }  # fmt: skip
    versions = sorted({version for _, version in rows})
    minutes = window.step.total_seconds() / 60
    out: dict[str, Any] = {"t": [int(start.timestamp()) for start in grid], "versions": versions}
    for version in versions:
        cells = [rows.get((start, version)) for start in grid]
        out[f"kv_v{version}"] = [round(100 * c["kv"], 1) if c else None for c in cells]
        out[f"kv_max_v{version}"] = [round(100 * c["kv_max"], 1) if c else None for c in cells]
        out[f"running_v{version}"] = [round(c["running"], 2) if c else None for c in cells]
        out[f"waiting_v{version}"] = [round(c["waiting"], 2) if c else None for c in cells]
        out[f"preemptions_v{version}"] = [round(c["preemptions"] / minutes, 2) if c else None for c in cells]
    return out


def top(*, by: str, since: datetime, limit: int = 5, tenant: str | None = None) -> list[dict[str, Any]]:
    """The busiest models or tenants since a time, with their error rates."""
    resolution = Resolution.MINUTE if timezone.now() - since <= timedelta(hours=6) else Resolution.HOUR
    # Per model: the rows summed over tenants (or one tenant's); per tenant: summed over models.
    scope = {"tenant": tenant or ALL} if by == "model" else {"model": ALL}
    qs = TrafficPoint.objects.filter(resolution=resolution, start__gte=since, **scope).exclude(**{by: ALL})
    rows = qs.values(by).annotate(requests=Sum("requests"), errors=Sum("errors")).order_by("-requests")[:limit]
    return [{"name": r[by], "requests": r["requests"], "error_rate": round(100 * r["errors"] / r["requests"], 2)
             if r["requests"] else 0.0} for r in rows]  # fmt: skip


def totals(*, since: datetime, tenant: str | None = None) -> dict[str, float]:
    qs = TrafficPoint.objects.filter(resolution=Resolution.MINUTE, start__gte=since, tenant=tenant or ALL, model=ALL)
    agg = qs.aggregate(requests=Sum("requests"), errors=Sum("errors"))
    requests, errors = agg["requests"] or 0, agg["errors"] or 0
    span = (timezone.now() - since).total_seconds()
    return {"requests": requests, "rps": round(requests / span, 2) if span else 0.0,
            "error_rate": round(100 * errors / requests, 2) if requests else 0.0}  # fmt: skip
