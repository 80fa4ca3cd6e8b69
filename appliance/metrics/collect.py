"""Moving measurements into the time series: finished minutes of gateway traffic
from Redis into PostgreSQL, GPU and engine read-outs as they arrive, hourly roll-ups and
retention. Run by Celery beat (`metrics.collect`); every step is idempotent (a
minute's row is set from Redis's totals, an hour's row recomputed from its
minutes), so a repeated or overlapping run changes nothing."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from appliance.core.engine_gauges import EngineReading
from appliance.gateway.stats import BUCKETS_MS, TRAFFIC_FIELDS, traffic_key
from appliance.metrics.models import EnginePoint, GpuPoint, Resolution, TrafficPoint

log = logging.getLogger(__name__)

# A minute is collected once every gateway has flushed it (they flush every 0.25 s).
SETTLE_S = 5
# How far back a collector that was down catches up (Redis keeps a minute for three hours).
CATCH_UP_MINUTES = 180
SUMMED = ("requests", "errors", "latency_ms_sum", "queued", "queue_ms_sum", "cache_hits", "cache_misses",
          "streams", "first_response_ms_sum", "stream_responses", "stream_seconds_sum", "output_tokens",
          "decode_tokens", "decode_seconds_sum")  # fmt: skip
_FROM_REDIS = dict(zip(TRAFFIC_FIELDS, SUMMED, strict=True))
GPU_SUMMED = ("samples", "utilisation_sum", "memory_used_mib_sum", "memory_bandwidth_sum")
ENGINE_SUMMED = ("samples", "kv_usage_sum", "running_sum", "waiting_sum", "preemptions")


def _collected_key() -> str:
    return f"{settings.INSTANCE}:traffic:collected"


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def parse_minute(fields: dict[bytes, bytes], start: datetime) -> list[TrafficPoint]:
    rows: dict[tuple[str, str], TrafficPoint] = {}
    for raw_name, raw_value in fields.items():
        tenant, model, name = raw_name.decode().split("|", 2)
        point = rows.get((tenant, model))
        if point is None:
            point = rows[(tenant, model)] = TrafficPoint(resolution=Resolution.MINUTE, start=start, tenant=tenant,
                                                         model=model, latency_buckets=[0] * (len(BUCKETS_MS) + 1))  # fmt: skip
        value = float(raw_value)
        if name.startswith("b"):
            point.latency_buckets[int(name[1:])] = int(value)
        elif name in _FROM_REDIS:
            attr = _FROM_REDIS[name]
            setattr(point, attr, value if attr.endswith("_sum") else int(value))
    return list(rows.values())


ALL = "*"  # the tenant or model of a row summed over every tenant or model


def with_totals(points: list[TrafficPoint]) -> list[TrafficPoint]:
    """Adds the rows summed over tenants (per model), over models (per tenant) and over
    both, so that any chart reads one row per point in time."""
    totals: dict[tuple[datetime, str, str, str], TrafficPoint] = {}
    for point in points:
        if point.tenant == ALL or point.model == ALL:
            continue
        for tenant, model in ((ALL, point.model), (point.tenant, ALL), (ALL, ALL)):
            key = (point.start, point.resolution, tenant, model)
            row = totals.get(key)
            if row is None:
                row = totals[key] = TrafficPoint(resolution=point.resolution, start=point.start, tenant=tenant, model=model,
                                                 latency_buckets=[0] * (len(BUCKETS_MS) + 1))  # fmt: skip
            _add(row, point)
    return [p for p in points if p.tenant != ALL and p.model != ALL] + list(totals.values())


def _add(row: TrafficPoint, point: TrafficPoint) -> None:
    for name in SUMMED:
        setattr(row, name, getattr(row, name) + getattr(point, name))
    theirs = point.latency_buckets or [0] * len(row.latency_buckets)
    row.latency_buckets = [a + b for a, b in zip(row.latency_buckets, theirs, strict=True)]


def _upsert_traffic(points: list[TrafficPoint]) -> None:
    if points:
        TrafficPoint.objects.bulk_create(points, update_conflicts=True, unique_fields=["resolution", "start", "tenant", "model"],
                                         update_fields=[*SUMMED, "latency_buckets"])  # fmt: skip


def collect_traffic(now: datetime | None = None) -> list[datetime]:
    """Moves every finished, not yet collected minute from Redis; returns those minutes."""
    now = now or timezone.now()
    last_done = _minute(now - timedelta(seconds=60 + SETTLE_S))
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    with client:
        mark = client.get(_collected_key())
        first = last_done - timedelta(minutes=CATCH_UP_MINUTES)
        if mark is not None:
            first = max(first, datetime.fromtimestamp(int(mark) + 60, tz=now.tzinfo))
        minutes = []
        at = first
        while at <= last_done:
            minutes.append(at)
            at += timedelta(minutes=1)
        if not minutes:
            return []
        pipe = client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(traffic_key(int(minute.timestamp())))
        hashes = pipe.execute()
        with transaction.atomic():
            for minute, fields in zip(minutes, hashes, strict=True):
                _upsert_traffic(with_totals(parse_minute(fields, minute)))
        client.set(_collected_key(), int(minutes[-1].timestamp()))
    return [m for m, fields in zip(minutes, hashes, strict=True) if fields]


def _add_sample(model: Any, key: dict[str, Any], sums: dict[str, float], *, maxima: dict[str, float] | None = None,
                made_with: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Adds one read-out to the minute row `key` names (its unique fields): one more sample,
    `sums` added, `maxima` kept if higher; a new row also takes `made_with`."""
    maxima = maxima or {}
    updates = {"samples": F("samples") + 1, **{k: F(k) + v for k, v in sums.items()},
               **{k: Greatest(k, v) for k, v in maxima.items()}}  # fmt: skip
    if not model.objects.filter(**key).update(**updates):
        model.objects.bulk_create([model(**key, samples=1, **(made_with or {}), **sums, **maxima)],
                                  update_conflicts=True, unique_fields=list(key),
                                  update_fields=["samples", *sums, *maxima])  # fmt: skip


def record_gpu(*, node: str, readings: Iterable[Any], totals: dict[int, int], at: datetime | None = None) -> None:
    """Adds one read-out per GPU to its current minute (called at every node heartbeat)."""
    start = _minute(at or timezone.now())
    for reading in readings:
        if reading.readout_error or reading.utilisation_pct is None and reading.memory_used_mib is None:
            continue
        values = {"utilisation_sum": reading.utilisation_pct or 0, "memory_used_mib_sum": reading.memory_used_mib or 0,
                  "memory_bandwidth_sum": reading.memory_bandwidth_pct or 0}  # fmt: skip
        _add_sample(GpuPoint, {"resolution": Resolution.MINUTE, "start": start, "node": node, "gpu_index": reading.index},
                    values, made_with={"memory_total_mib": totals.get(reading.index, 0)})  # fmt: skip


def record_engines(*, node: str, readings: Iterable[EngineReading], at: datetime | None = None) -> None:
    """Adds one read-out per engine to its current minute (every heartbeat period)."""
    start = _minute(at or timezone.now())
    for r in readings:
        key = {"resolution": Resolution.MINUTE, "start": start, "node": node, "device": r.device, "model": r.model,
               "version": r.version}  # fmt: skip
        _add_sample(EnginePoint, key, {"kv_usage_sum": r.kv_cache_usage, "running_sum": r.running,
                                       "waiting_sum": r.waiting, "preemptions": r.preemptions},
                    maxima={"kv_usage_max": r.kv_cache_usage})  # fmt: skip


def _hour_rows(model: Any, hour: datetime, keys: tuple[str, ...], summed: tuple[str, ...], *,
               maxed: tuple[str, ...] = (), kept: tuple[str, ...] = ()) -> None:  # fmt: skip
    """(Re)writes one hour's rows of a read-out series from its minute rows: per `keys`, the
    `summed` fields added up, the `maxed` ones the highest, the `kept` ones the first minute's."""
    rows: dict[tuple[Any, ...], Any] = {}
    for m in model.objects.filter(resolution=Resolution.MINUTE, start__gte=hour, start__lt=hour + timedelta(hours=1)):
        key = tuple(getattr(m, name) for name in keys)
        row = rows.get(key)
        if row is None:
            row = rows[key] = model(resolution=Resolution.HOUR, start=hour, **{n: getattr(m, n) for n in (*keys, *kept)})
        for name in summed:
            setattr(row, name, getattr(row, name) + getattr(m, name))
        for name in maxed:
            setattr(row, name, max(getattr(row, name), getattr(m, name)))
    if rows:
        model.objects.bulk_create(list(rows.values()), update_conflicts=True, unique_fields=["resolution", "start", *keys],
                                  update_fields=[*summed, *maxed, *kept])  # fmt: skip


def roll_up(hours: Iterable[datetime]) -> None:
    """(Re)computes the hour rows of these hours from their minute rows."""
    for hour in sorted(set(hours)):
        end = hour + timedelta(hours=1)
        traffic: dict[tuple[str, str], TrafficPoint] = {}
        for p in TrafficPoint.objects.filter(resolution=Resolution.MINUTE, start__gte=hour, start__lt=end):
            row = traffic.get((p.tenant, p.model))
            if row is None:
                row = traffic[(p.tenant, p.model)] = TrafficPoint(resolution=Resolution.HOUR, start=hour, tenant=p.tenant,
                                                                  model=p.model, latency_buckets=[0] * (len(BUCKETS_MS) + 1))  # fmt: skip
            _add(row, p)
        with transaction.atomic():
            _upsert_traffic(list(traffic.values()))
            _hour_rows(GpuPoint, hour, ("node", "gpu_index"), GPU_SUMMED, kept=("memory_total_mib",))
            _hour_rows(EnginePoint, hour, ("node", "device", "model", "version"), ENGINE_SUMMED, maxed=("kv_usage_max",))


def prune(now: datetime | None = None) -> int:
    now = now or timezone.now()
    minute_floor = now - timedelta(hours=settings.METRICS_MINUTE_KEEP_H)
    hour_floor = now - timedelta(days=settings.METRICS_HOUR_KEEP_D)
    removed = 0
    for model in (TrafficPoint, GpuPoint, EnginePoint):
        removed += model.objects.filter(resolution=Resolution.MINUTE, start__lt=minute_floor).delete()[0]
        removed += model.objects.filter(resolution=Resolution.HOUR, start__lt=hour_floor).delete()[0]
    return removed


def collect(now: datetime | None = None) -> dict[str, int]:
    """One beat: collect finished minutes, roll up this hour and the last, prune."""
    now = now or timezone.now()
    try:
        minutes = collect_traffic(now)
    except redis.RedisError as exc:
        log.warning("gateway traffic not collected this time (%s)", type(exc).__name__)
        minutes = []
    hours = {_hour(m) for m in minutes} | {_hour(now), _hour(now - timedelta(hours=1))}
    roll_up(hours)
    return {"minutes": len(minutes), "hours": len(hours), "pruned": prune(now)}


def merge(points: Iterable[Any], fields: Iterable[str]) -> dict[datetime, dict[str, Any]]:
    """Sums points by start (over tenants, models or GPUs)."""
    out: dict[datetime, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    for point in points:
        row = out[point.start]
        for name in fields:
            row[name] += getattr(point, name)
        buckets = getattr(point, "latency_buckets", None)
        if buckets:
            row.setdefault("buckets", [0] * len(buckets))
            row["buckets"] = [a + b for a, b in zip(row["buckets"], buckets, strict=True)]
    return out
