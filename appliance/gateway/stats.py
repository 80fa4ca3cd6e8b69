"""Per model-version request statistics, measured at the gateway and kept in Redis.

Every gateway process counts answered requests per (model, version) in memory
(requests, errors, a latency histogram) and adds them to one Redis hash per
second every FLUSH_S, so all processes sum into the same buckets. The rollout
gates read a window of those buckets for the new and the old version
(`window`), and scale-to-zero reads when a model was last called (`last_request`).
Redis trouble loses statistics, never a request.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import redis
import redis.asyncio as aredis
from django.conf import settings

from appliance.gateway import contract

log = logging.getLogger(__name__)

# The keys, fields and bounds both planes write (contract.py); re-exported for their readers.
BUCKETS_MS = contract.STATS_BUCKETS_MS
TRAFFIC_FIELDS = contract.TRAFFIC_FIELDS
FLUSH_S = contract.FLUSH_S
KEEP_S = contract.VSTATS_KEEP_S


def _key(model: str, version: str, second: int, instance: str | None = None) -> str:
    return contract.KEY_VSTATS.format(instance=instance or settings.INSTANCE, model=model, version=version, second=second)


def _last_key(model: str, instance: str | None = None) -> str:
    return contract.KEY_LAST_REQUEST.format(instance=instance or settings.INSTANCE, model=model)


def traffic_key(minute: int, instance: str | None = None) -> str:
    """The hash of one minute's traffic per (tenant, model), summed over gateway processes;
    appliance.metrics.collect moves finished minutes into PostgreSQL."""
    return contract.KEY_TRAFFIC.format(instance=instance or settings.INSTANCE, minute=minute)


_TRAFFIC_WIDTH = len(TRAFFIC_FIELDS) + len(BUCKETS_MS) + 1


def _version_row() -> list[float]:
    """n, err, ms, then one count per bucket and the open one above the last bound."""
    return [0.0] * (3 + len(BUCKETS_MS) + 1)


def _traffic_row() -> list[float]:
    return [0.0] * _TRAFFIC_WIDTH


def _count(row: list[float], ok: bool, seconds: float, buckets_at: int) -> None:
    """Requests, errors, summed milliseconds (row[0:3]) and the latency bucket (from buckets_at)."""
    ms = seconds * 1000.0
    row[0] += 1
    if not ok:
        row[1] += 1
    row[2] += ms
    row[buckets_at + bisect.bisect_left(BUCKETS_MS, ms)] += 1


class Recorder:
    """The gateway side: cheap in-memory counting, a periodic flush to Redis."""

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or settings.INSTANCE  # the key prefix (tests give their own)
        self._counts: dict[tuple[str, str], list[float]] = defaultdict(_version_row)
        self._decode: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        self._traffic: dict[tuple[str, str], list[float]] = defaultdict(_traffic_row)
        self._redis = aredis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)

    def record(self, model: str, version: str, ok: bool, seconds: float) -> None:
        _count(self._counts[(model, version)], ok, seconds, buckets_at=3)

    def decoded(self, model: str, version: str, tokens: int, seconds: float) -> None:
        """A generative stream's output tokens after each request's first, and the seconds they took."""
        row = self._decode[(model, version)]
        row[0] += tokens
        row[1] += seconds

    def answered(self, tenant: str, model: str, ok: bool, seconds: float) -> None:
        """An inference request answered (or refused) at the gateway, for the metrics pages."""
        _count(self._traffic[(tenant, model)], ok, seconds, buckets_at=len(TRAFFIC_FIELDS))

    def queued(self, tenant: str, model: str, seconds: float) -> None:
        row = self._traffic[(tenant, model)]
        row[3] += 1
        row[4] += seconds * 1000.0

    def cache(self, tenant: str, model: str, hit: bool) -> None:
        self._traffic[(tenant, model)][5 if hit else 6] += 1

    def streamed(self, tenant: str, model: str, first_response_s: float | None, responses: int, seconds: float,
                 output_tokens: int = 0, decode_tokens: int = 0, decode_seconds: float = 0.0) -> None:  # fmt: skip
        """A stream ended that answered at least once (one that never did is counted by
        `answered` alone: it has no time to first response to average); a generative one with
        its output tokens, and those after each request's first with the seconds they took (its
        decoding speed)."""
        row = self._traffic[(tenant, model)]
        row[7] += 1
        row[8] += (first_response_s or 0.0) * 1000.0
        row[9] += responses
        row[10] += seconds
        row[11] += output_tokens
        row[12] += decode_tokens
        row[13] += decode_seconds

    async def flush(self, at: float | None = None) -> None:
        """Adds what was counted since the last flush to the bucket of second `at` (now)."""
        if not self._counts and not self._traffic and not self._decode:
            return
        counts, self._counts = self._counts, defaultdict(_version_row)
        decode, self._decode = self._decode, defaultdict(lambda: [0.0, 0.0])
        traffic, self._traffic = self._traffic, defaultdict(_traffic_row)
        now = time.time() if at is None else at
        second = int(now)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                minute_key = traffic_key(second // 60 * 60, self.instance)
                for (tenant, model), row in traffic.items():
                    for index, value in enumerate(row):
                        if value:
                            name = TRAFFIC_FIELDS[index] if index < len(TRAFFIC_FIELDS) else f"b{index - len(TRAFFIC_FIELDS)}"
                            field = contract.TRAFFIC_FIELD.format(tenant=tenant, model=model, name=name)
                            pipe.hincrbyfloat(minute_key, field, value)
                if traffic:
                    pipe.expire(minute_key, contract.TRAFFIC_KEEP_S)
                for (model, version), row in counts.items():
                    key = _key(model, version, second, self.instance)
                    pipe.hincrby(key, "n", int(row[0]))
                    if row[1]:
                        pipe.hincrby(key, "err", int(row[1]))
                    pipe.hincrbyfloat(key, "ms", row[2])
                    for index, count in enumerate(row[3:]):
                        if count:
                            pipe.hincrby(key, f"b{index}", int(count))
                    pipe.expire(key, KEEP_S)
                    pipe.set(_last_key(model, self.instance), now, ex=contract.LAST_REQUEST_KEEP_S)
                for (model, version), (tokens, seconds) in decode.items():
                    if tokens and seconds:
                        key = _key(model, version, second, self.instance)
                        for field, value in zip(contract.VSTATS_DECODE_FIELDS, (tokens, seconds), strict=True):
                            pipe.hincrbyfloat(key, field, value)
                        pipe.expire(key, KEEP_S)
                await pipe.execute()
        except redis.RedisError as exc:
            log.warning("request statistics not stored (%s)", type(exc).__name__)

    async def flush_forever(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def close(self) -> None:
        await self.flush()
        await self._redis.aclose()


@dataclass(frozen=True)
class WindowStats:
    requests: int
    errors: int
    mean_ms: float
    buckets: tuple[int, ...] = ()
    decode_tokens: float = 0.0  # generative streams: output tokens after each request's first …
    decode_seconds: float = 0.0  # … and the seconds they took

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed of the window's generative streams (0 where there were none)."""
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile_ms(self, q: float) -> float:
        return bucket_quantile(list(self.buckets), self.requests, q)

    @property
    def p50_ms(self) -> float:
        return self.quantile_ms(0.5)

    @property
    def p95_ms(self) -> float:
        return self.quantile_ms(0.95)

    @property
    def p99_ms(self) -> float:
        return self.quantile_ms(0.99)

    def as_dict(self) -> dict[str, float]:
        found = {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 4),
                 "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms}  # fmt: skip
        if self.decode_seconds > 0:
            found["tokens_per_s"] = round(self.tokens_per_s, 2)
        return found


def bucket_quantile(buckets: list[int], total: int, q: float) -> float:
    """The bucket upper bound under which a fraction q of requests fell."""
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            return float(BUCKETS_MS[index]) if index < len(BUCKETS_MS) else float(BUCKETS_MS[-1]) * 2
    return float(BUCKETS_MS[-1]) * 2


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def window(model: str, version: str, start: float, end: float) -> WindowStats:
    """Sums the seconds [start, end] (unix time) for one model version."""
    seconds = range(int(start), int(end) + 1)
    with _client() as client:
        pipe = client.pipeline(transaction=False)
        for second in seconds:
            pipe.hgetall(_key(model, version, second))
        rows = pipe.execute()
    requests = errors = 0
    total_ms = 0.0
    buckets = [0] * (len(BUCKETS_MS) + 1)
    decode = [0.0, 0.0]
    for row in rows:
        if not row:
            continue
        for index, field in enumerate(contract.VSTATS_DECODE_FIELDS):
            decode[index] += float(row.get(field.encode(), 0))
        requests += int(row.get(b"n", 0))
        errors += int(row.get(b"err", 0))
        total_ms += float(row.get(b"ms", 0))
        for index in range(len(buckets)):
            buckets[index] += int(row.get(f"b{index}".encode(), 0))
    return WindowStats(requests=requests, errors=errors, mean_ms=total_ms / requests if requests else 0.0,
                       buckets=tuple(buckets), decode_tokens=decode[0], decode_seconds=decode[1])  # fmt: skip


def last_request(model: str) -> float | None:
    """Unix time of the model's last answered request through any gateway, if known."""
    with _client() as client:
        value = client.get(_last_key(model))
    return float(value) if value is not None else None
