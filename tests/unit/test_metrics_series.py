"""The console's time series: what the gateway counts reaches PostgreSQL per minute
through real Redis, rolls up per hour without changing any total, and reads back
as the charts' columns (rates, success, quantiles from summed buckets); the node
agents' GPU and generative-engine read-outs likewise."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from appliance.agent.engine_meter import EngineMeter
from appliance.core.engine_gauges import EngineReading
from appliance.gateway.stats import Recorder, traffic_key
from appliance.metrics import collect as collector
from appliance.metrics.models import EnginePoint, GpuPoint, Resolution, TrafficPoint
from appliance.metrics.selectors import WINDOWS, engine_series, gpu_series, top, traffic_series
from appliance.nodes.inventory.base import GpuHealth

pytestmark = pytest.mark.django_db


@pytest.fixture
def clean_redis() -> redis.Redis:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(collector._collected_key())
    for key in client.scan_iter(f"{settings.INSTANCE}:traffic:*"):
        client.delete(key)
    return client


def _record(at: float) -> None:
    async def go() -> None:
        recorder = Recorder()
        for index in range(100):
            recorder.answered("acme", "digits", ok=index % 10 != 0, seconds=0.004 if index < 90 else 0.04)
            recorder.queued("acme", "digits", 0.001)
        recorder.answered("globex", "digits", ok=True, seconds=0.002)
        recorder.cache("acme", "digits", hit=True)
        recorder.cache("acme", "digits", hit=False)
        recorder.streamed("globex", "chat", first_response_s=0.05, responses=20, seconds=0.5, output_tokens=64,
                          decode_tokens=63, decode_seconds=0.45)  # fmt: skip
        await recorder.flush(at=at)
        await recorder.close()

    asyncio.run(go())


def test_gateway_counts_become_minute_rows_then_hour_rows(clean_redis: redis.Redis) -> None:
    now = timezone.now()
    minute = (now - timedelta(minutes=3)).replace(second=0, microsecond=0)
    _record(minute.timestamp() + 10)
    assert clean_redis.exists(traffic_key(int(minute.timestamp())))

    result = collector.collect(now)
    assert result["minutes"] == 1
    row = TrafficPoint.objects.get(resolution=Resolution.MINUTE, start=minute, tenant="acme", model="digits")
    assert (row.requests, row.errors, row.queued, row.cache_hits, row.cache_misses) == (100, 10, 100, 1, 1)
    assert sum(row.latency_buckets) == 100
    chat = TrafficPoint.objects.get(resolution=Resolution.MINUTE, start=minute, tenant="globex", model="chat")
    assert (chat.streams, chat.stream_responses, chat.output_tokens, chat.decode_tokens) == (1, 20, 64, 63)
    fleet = TrafficPoint.objects.get(resolution=Resolution.MINUTE, start=minute, tenant="*", model="*")
    assert (fleet.requests, fleet.errors, fleet.streams) == (101, 10, 1), "one row per minute summed over everything"

    # Collected once: a second beat neither doubles nor loses anything.
    assert collector.collect(now)["minutes"] == 0
    assert (
        TrafficPoint.objects.get(resolution=Resolution.MINUTE, start=minute, tenant="acme", model="digits").requests
        == 100
    )
    hour = TrafficPoint.objects.get(
        resolution=Resolution.HOUR, start=minute.replace(minute=0), tenant="acme", model="digits"
    )
    assert (hour.requests, hour.errors, sum(hour.latency_buckets)) == (100, 10, 100)

    series = traffic_series(window=WINDOWS["1h"], model="digits", now=now)
    at = series["t"].index(int(minute.timestamp()))
    assert series["rps"][at] == round(101 / 60, 3)
    assert series["success"][at] == round(100 * 91 / 101, 2)
    assert series["p50"][at] == 5.0 and series["p99"][at] == 50.0  # bucket bounds containing 4 ms and 40 ms
    assert series["cache_hit"][at] == 50.0
    assert series["success"][at - 1] is None and series["rps"][at - 1] == 0.0
    globex = traffic_series(window=WINDOWS["1h"], tenant="globex", now=now)
    assert globex["rps"][at] == round(1 / 60, 3)  # only its digits request was recorded as answered
    assert globex["ttfr_ms"][at] == 50.0 and globex["tokens_s"][at] == 40.0
    assert globex["output_tokens_s"][at] == round(64 / 60, 2) and globex["decode_tokens_s"][at] == 140.0
    assert globex["decode_tokens_s"][at - 1] is None, "no stream there: nothing to draw, not zero"
    week = traffic_series(window=WINDOWS["7d"], model="digits", now=now)
    hour_at = week["t"].index(int(minute.replace(minute=0).timestamp()))  # the last point, or the one before at :00-:02
    assert len(week["t"]) == 7 * 24 + 1 and week["rps"][hour_at] == round(101 / 3600, 3)
    assert [t["name"] for t in top(by="model", since=now - timedelta(hours=1))] == ["digits", "chat"]


def test_gpu_read_outs_are_averaged_per_gpu_then_across_gpus() -> None:
    at = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=1)
    for utilisation in (10, 30):  # GPU 0 read twice, GPU 1 once
        collector.record_gpu(node="n1", readings=[GpuHealth(0, memory_used_mib=1024, utilisation_pct=utilisation,
                                                            memory_bandwidth_pct=5)], totals={0: 81559}, at=at)  # fmt: skip
    collector.record_gpu(node="n1", readings=[GpuHealth(1, memory_used_mib=2048, utilisation_pct=80, memory_bandwidth_pct=40),
                                              GpuHealth(2, readout_error="GPU is lost")], totals={}, at=at)  # fmt: skip
    assert GpuPoint.objects.get(resolution=Resolution.MINUTE, node="n1", gpu_index=0).samples == 2
    assert not GpuPoint.objects.filter(gpu_index=2).exists(), "a failed read-out is not a zero"
    series = gpu_series(window=WINDOWS["1h"], nodes=["n1"], now=at + timedelta(seconds=30))
    at_index = series["t"].index(int(at.timestamp()))
    assert series["utilisation"][at_index] == 50.0  # (20 + 80) / 2, not (10 + 30 + 80) / 3
    assert series["memory_gib"][at_index] == 3.0
    assert gpu_series(window=WINDOWS["1h"], nodes=["other"], now=at)["utilisation"][-1] is None


def _page(kv: float, preempted: float, version: str = "3", running: float = 2, engine: str = "") -> str:
    labels = f'{{model="chat",version="{version}"' + (f',engine="{engine}"' if engine else "") + "}"
    return (f"appliance_engine_kv_cache_usage{labels} {kv}\nappliance_engine_requests_running{labels} {running}\n"
            f"appliance_engine_requests_waiting{labels} 1\nappliance_engine_preemptions{labels} {preempted}\n"
            'nv_inference_count{model="chat",version="3"} 99\n')  # fmt: skip


def test_the_agent_reports_preemptions_since_its_last_report_that_was_taken() -> None:
    meter = EngineMeter()

    def report(*pages: tuple[str, str]) -> list[tuple[str, float, float, float, float, int]]:
        taken = [(r.device, r.kv_cache_usage, r.running, r.waiting, r.preemptions) for r in meter.readings(pages)]
        meter.commit()
        return taken  # type: ignore[return-value]

    assert report(("", _page(0.5, 7))) == [("", 0.5, 2.0, 1.0, 0)], \
        "the engine's total before the agent looked is its baseline, not new"  # fmt: skip
    assert [r[-1] for r in report(("", _page(0.6, 10)))] == [3]
    assert report() == [], "a Triton that did not answer: no reading, and its baseline is kept"
    meter.readings([("", _page(0.6, 11))])  # a report the control plane did not take (no commit) ...
    assert [r[-1] for r in report(("", _page(0.6, 12)))] == [2], "... loses nothing: counted from the last taken"
    assert [r[-1] for r in report(("", _page(0.1, 1)))] == [1], "the engine started again"
    # Each engine of the node (the main Triton's, a MIG slice's) is a reading with its own total.
    assert report(("", _page(0.1, 1)), ("MIG-a", _page(0.9, 5))) == [("", 0.1, 2.0, 1.0, 0), ("MIG-a", 0.9, 2.0, 1.0, 0)]
    # A version gone from a Triton that answered is forgotten: if it comes back, its total is a baseline again.
    assert report(("", "nothing here"), ("MIG-a", _page(0.9, 6))) == [("MIG-a", 0.9, 2.0, 1.0, 1)]
    assert [r[-1] for r in report(("", _page(0.1, 4)))] == [0]
    # What the control plane would refuse is never sent: a NaN reads 0, an odd version label is skipped.
    odd = ('appliance_engine_kv_cache_usage{model="chat",version="\u00b2"} 0.5\n'
           'appliance_engine_kv_cache_usage{model="chat",version="0"} 0.5\n'
           'appliance_engine_kv_cache_usage{model="",version="3"} 0.5\n')  # fmt: skip
    assert report(("", odd)) == []
    assert report(("", _page(float("nan"), 4, running=float("inf")))) == [("", 0.0, 0.0, 1.0, 0)]


def test_a_reload_s_two_instances_of_a_version_make_one_reading_without_false_preemptions() -> None:
    """Triton reloads a model when a version is added or retired, and runs the old and new
    instances of a version side by side meanwhile, each with its engine and gauges."""
    meter = EngineMeter()

    def report(*pages: tuple[str, str]) -> list[tuple[float, float, int]]:
        taken = [(r.kv_cache_usage, r.running, r.preemptions) for r in meter.readings(pages)]
        meter.commit()
        return taken

    assert report(("", _page(0.5, 500, engine="old"))) == [(0.5, 2.0, 0)]
    both = _page(0.5, 501, engine="old") + _page(0.2, 3, running=1, engine="new")
    assert report(("", both)) == [(0.5, 3.0, 1)], "the fuller cache, both engines' sequences, the old one's 1 new"
    both = _page(0.4, 501, engine="old") + _page(0.7, 5, running=1, engine="new")
    assert report(("", both)) == [(0.7, 3.0, 2)], "the new engine's total counts from its own first sight"
    assert report(("", _page(0.7, 6, running=1, engine="new"))) == [(0.7, 1.0, 1)], "the old instance retired"


def test_engine_read_outs_become_per_version_series() -> None:
    at = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=2)
    for node, kv, preempted in (("n1", 0.2, 0), ("n1", 0.6, 3), ("n2", 0.9, 1)):
        collector.record_engines(node=node, readings=[EngineReading("", "chat", 3, kv, 4, 2, preempted)], at=at)
    # n2 runs version 3 on a MIG slice as well: another engine, not another sample of the first.
    collector.record_engines(node="n2", readings=[EngineReading("MIG-a", "chat", 3, 0.5, 4, 2, 0)], at=at)
    collector.record_engines(node="n1", readings=[EngineReading("", "chat", 4, 0.05, 1, 0, 0)], at=at)
    collector.record_engines(node="n1", readings=[EngineReading("", "other", 1, 0.99, 1, 0, 9)], at=at)
    n1 = EnginePoint.objects.get(resolution=Resolution.MINUTE, node="n1", model="chat", version=3)
    assert (n1.samples, round(n1.kv_usage_sum, 6), n1.kv_usage_max, n1.preemptions) == (2, 0.8, 0.6, 3)

    series = engine_series(window=WINDOWS["1h"], model="chat", now=at + timedelta(seconds=30))
    i = series["t"].index(int(at.timestamp()))
    assert series["versions"] == [3, 4]
    assert series["kv_v3"][i] == 60.0, "each engine's mean first (0.4 on n1, 0.9 and 0.5 on n2), then across engines"
    assert series["kv_max_v3"][i] == 90.0 and series["kv_v4"][i] == 5.0
    assert series["running_v3"][i] == 12.0 and series["waiting_v3"][i] == 6.0, "summed over the version's 3 engines"
    assert series["preemptions_v3"][i] == 4.0 and series["preemptions_v4"][i] == 0.0
    assert series["kv_v3"][i - 1] is None, "no read-out there: nothing to draw, not zero"

    collector.roll_up([at.replace(minute=0)])
    hour = EnginePoint.objects.get(resolution=Resolution.HOUR, node="n1", model="chat", version=3)
    assert (hour.samples, hour.kv_usage_max, hour.preemptions) == (2, 0.6, 3)
    week = engine_series(window=WINDOWS["7d"], model="chat", now=at + timedelta(seconds=30))
    j = week["t"].index(int(at.replace(minute=0).timestamp()))
    assert week["kv_max_v3"][j] == 90.0 and week["preemptions_v3"][j] == round(4 / 60, 2), "per minute of the hour"
    assert engine_series(window=WINDOWS["1h"], model="nothing", now=at)["versions"] == []


def test_old_rows_are_pruned_by_resolution() -> None:
    now = timezone.now()
    old_minute = now - timedelta(hours=settings.METRICS_MINUTE_KEEP_H + 1)
    for resolution in (Resolution.MINUTE, Resolution.HOUR):
        TrafficPoint.objects.create(resolution=resolution, start=old_minute, tenant="t", model="m", latency_buckets=[])
        EnginePoint.objects.create(resolution=resolution, start=old_minute, node="n", model="m", version=1, samples=1)
    assert collector.prune(now) == 2
    assert TrafficPoint.objects.filter(resolution=Resolution.HOUR).count() == 1
    assert list(EnginePoint.objects.values_list("resolution", flat=True)) == [Resolution.HOUR]
