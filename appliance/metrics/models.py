"""Time series the console draws: what the gateway measured per (tenant, model), what
the node agents read from each GPU and from each generative engine (KV cache, queue,
preemptions), kept per minute and rolled up per hour so
that a week still draws from a few hundred rows. Measurements, not operator
actions: they are not audited."""

from __future__ import annotations

from django.db import models


class Resolution(models.TextChoices):
    MINUTE = "minute", "minute"
    HOUR = "hour", "hour"


class TrafficPoint(models.Model):
    """One (tenant, model) pair over one minute or hour, as the gateways counted it."""

    resolution = models.CharField(max_length=6, choices=Resolution.choices)
    start = models.DateTimeField()
    tenant = models.CharField(max_length=63)  # tenant slug; "-" before authentication
    model = models.CharField(max_length=128)  # model name; "-" for names the tenant may not call
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0)
    # Counts per gateway.stats.BUCKETS_MS bucket (the last one open): quantiles of any roll-up.
    latency_buckets = models.JSONField(default=list)
    queued = models.BigIntegerField(default=0)
    queue_ms_sum = models.FloatField(default=0)
    cache_hits = models.BigIntegerField(default=0)
    cache_misses = models.BigIntegerField(default=0)
    streams = models.BigIntegerField(default=0)
    first_response_ms_sum = models.FloatField(default=0)  # over streams: time to the first response
    stream_responses = models.BigIntegerField(default=0)  # responses (tokens) streamed
    stream_seconds_sum = models.FloatField(default=0)
    # Generative streams: output tokens, and those after each request's first with their seconds.
    output_tokens = models.BigIntegerField(default=0)
    decode_tokens = models.BigIntegerField(default=0)
    decode_seconds_sum = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resolution", "start", "tenant", "model"], name="traffic_point_unique"),
        ]
        indexes = [
            models.Index(fields=["resolution", "model", "start"], name="traffic_by_model"),
            models.Index(fields=["resolution", "tenant", "start"], name="traffic_by_tenant"),
            models.Index(fields=["resolution", "start"], name="traffic_by_time"),
        ]


class GpuPoint(models.Model):
    """One GPU over one minute or hour: sums of the node agent's read-outs and their count."""

    resolution = models.CharField(max_length=6, choices=Resolution.choices)
    start = models.DateTimeField()
    node = models.CharField(max_length=63)
    gpu_index = models.PositiveSmallIntegerField()
    samples = models.IntegerField(default=0)
    utilisation_sum = models.FloatField(default=0)
    memory_used_mib_sum = models.FloatField(default=0)
    memory_bandwidth_sum = models.FloatField(default=0)
    memory_total_mib = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resolution", "start", "node", "gpu_index"], name="gpu_point_unique"),
        ]
        indexes = [models.Index(fields=["resolution", "node", "start"], name="gpu_by_node")]


class EnginePoint(models.Model):
    """One generative engine's read-outs over one minute or hour, as its node agent read them
    off its Triton's metrics endpoint every heartbeat period."""

    resolution = models.CharField(max_length=6, choices=Resolution.choices)
    start = models.DateTimeField()
    node = models.CharField(max_length=63)
    device = models.CharField(max_length=64, blank=True, default="")  # "" the node's Triton; a MIG slice's uuid
    model = models.CharField(max_length=128)
    version = models.PositiveIntegerField()
    samples = models.IntegerField(default=0)
    kv_usage_sum = models.FloatField(default=0)  # share of the KV cache in use (0-1), summed over samples
    kv_usage_max = models.FloatField(default=0)
    running_sum = models.FloatField(default=0)  # sequences generating
    waiting_sum = models.FloatField(default=0)  # requests waiting in the engine
    preemptions = models.BigIntegerField(default=0)  # sequences preempted in the minute (hour)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resolution", "start", "node", "device", "model", "version"],
                                    name="engine_point_unique"),
        ]
        indexes = [models.Index(fields=["resolution", "model", "start"], name="engine_by_model")]
