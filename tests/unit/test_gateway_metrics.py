"""The gateway's batched metrics expose exactly what direct prometheus_client calls would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from appliance.gateway.metrics import LATENCY_BUCKETS, Tally


def _pair() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("r", "requests", ["tenant"], registry=registry)
    histogram = Histogram("s", "seconds", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
    return registry, counter, histogram


def _samples(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if line and not line.startswith("#") and "_created" not in line]  # fmt: skip


def test_tally_flush_equals_direct_observation() -> None:
    values = [0.0001, 0.0009, 0.002, 0.004, 0.0049, 0.3, 7.0, 42.0]
    direct, counter, histogram = _pair()
    for v in values:
        counter.labels("acme").inc()
        histogram.labels("digits").observe(v)
    batched, counter2, histogram2 = _pair()
    tally = Tally()
    for v in values:
        tally.inc(counter2, "acme")
        tally.observe(histogram2, "digits", value=v)
    assert _samples(batched) != _samples(direct), "nothing is exposed before the flush"
    tally.flush()
    assert _samples(batched) == _samples(direct)
    tally.flush()
    assert _samples(batched) == _samples(direct), "a flush hands each count over once"
