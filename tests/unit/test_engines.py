"""Admission from the engines' headroom (gateway/engines.py): the gauges read off a Triton
metrics page, when an engine counts as full, and a full engine's replica taking no new
stream until it reports room (gateway/admission.py engine_pressure)."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.core.engine_gauges import engine_readings as readings
from appliance.gateway import contract
from appliance.gateway.admission import Admission
from appliance.gateway.engines import full

PAGE = """# HELP appliance_engine_kv_cache_usage Share of the engine's KV cache in use (0-1)
# TYPE appliance_engine_kv_cache_usage gauge
appliance_engine_kv_cache_usage{model="llm",version="1"} 0.25
appliance_engine_kv_cache_usage{model="llm",version="2"} 0.93
appliance_engine_requests_waiting{model="llm",version="1"} 3
nv_inference_count{model="llm",version="1"} 12
appliance_engine_requests_running{model="llm",version="2"} not-a-number
"""


def test_the_engine_gauges_are_read_per_model_version_and_engine() -> None:
    assert readings(PAGE) == {
        ("llm", "1", ""): {"appliance_engine_kv_cache_usage": 0.25, "appliance_engine_requests_waiting": 3.0},
        ("llm", "2", ""): {"appliance_engine_kv_cache_usage": 0.93},
    }
    reload = ('appliance_engine_kv_cache_usage{model="llm",version="1",engine="a1"} 0.25\n'
              'appliance_engine_kv_cache_usage{model="llm",version="1",engine="b2"} 0.5\n')  # fmt: skip
    assert readings(reload) == {("llm", "1", "a1"): {"appliance_engine_kv_cache_usage": 0.25},
                                ("llm", "1", "b2"): {"appliance_engine_kv_cache_usage": 0.5}}  # fmt: skip


def test_an_engine_is_full_at_the_watermark_or_with_a_long_waiting_queue() -> None:
    assert not full({"appliance_engine_kv_cache_usage": contract.KV_HIGH_WATERMARK - 0.01}, 16)
    assert full({"appliance_engine_kv_cache_usage": contract.KV_HIGH_WATERMARK}, 16)
    assert not full({"appliance_engine_requests_waiting": 15}, 16)
    assert full({"appliance_engine_requests_waiting": 16}, 16)
    assert not full({}, 16)


@dataclass(frozen=True)
class Route:
    node: str
    address: str
    version: str = "1"


def test_a_full_engine_takes_no_new_stream_until_it_has_room() -> None:
    admission = Admission(queue_max=8, queue_wait_s=1.0)
    admission.set_slots({"llm": 4})
    route = (Route("n", "10.0.0.1:8001"),)
    taken = [admission.take("llm", route, rank=0) for _ in range(2)]
    assert all(taken)
    admission.engine_pressure("10.0.0.1:8001", "llm", full=True)
    assert admission.take("llm", route, rank=0) is None  # not even a critical stream
    admission.release("llm", route[0], None)  # one finished: still full, still none
    assert admission.take("llm", route, rank=0) is None
    admission.release("llm", route[0], None)  # nothing in flight: one may try (a reading may be stale)
    assert admission.take("llm", route, rank=0) is not None
    assert admission.take("llm", route, rank=0) is None
    admission.set_slots({"llm": 4})  # a snapshot refresh is no news from the engine: still full
    assert admission.take("llm", route, rank=0) is None
    admission.engine_pressure("10.0.0.1:8001", "llm", full=False)
    admission.set_slots({"llm": 4})
    assert [admission.take("llm", route, rank=0) is not None for _ in range(4)] == [True, True, True, False]
    assert admission.limiter("10.0.0.1:8001", "llm").limit == 4
    # A model that is not generative is never frozen by engine gauges.
    admission.engine_pressure("10.0.0.1:8001", "digits", full=True)
    assert admission.take("digits", route, rank=0) is not None


def test_a_triton_s_gauges_press_only_the_replicas_that_triton_serves() -> None:
    """The node's main Triton publishes its engines' gauges; a MIG slice of the same node has a
    Triton of its own (another address): a full engine on the main Triton presses that replica
    alone, never the slice's."""
    import asyncio
    from types import SimpleNamespace

    from aiohttp import web

    from appliance.core.process import free_port
    from appliance.gateway.engines import EngineWatch

    page = 'appliance_engine_kv_cache_usage{model="llm",version="1",engine="e1"} 0.95\n'
    main, mig = Route("n", "10.0.0.1:8001"), Route("n", "10.0.0.1:9001")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=page)

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        admission = Admission(queue_max=8, queue_wait_s=1.0)
        admission.set_slots({"llm": 4})
        snapshot = SimpleNamespace(engine_metrics={main.address: f"127.0.0.1:{port}"}, engine_slots={"llm": 8},
                                   routes={"llm": (main, mig)})  # fmt: skip
        watch = EngineWatch(SimpleNamespace(snapshot=snapshot, admission=admission))
        try:
            await watch.poll()
        finally:
            await watch.close()
            await runner.cleanup()
        assert admission.limiter(main.address, "llm").limit == 1, "the full engine's replica takes one stream"
        assert admission.limiter(mig.address, "llm").limit == 4, "the slice's engine said nothing: its slots stand"

    asyncio.run(scenario())
