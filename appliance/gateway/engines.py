"""Admission from the engines' headroom: once every ENGINE_POLL_S the gateway reads the
gauges each generative replica's engine publishes on its node's Triton metrics endpoint
(catalog/vllm_runner.py: KV-cache share in use, sequences running and waiting, preemptions)
and tells admission which replicas have no room for a new stream (KV cache at
KV_HIGH_WATERMARK or more, or as many requests waiting as the engine runs at most). Those
take no new stream — new ones queue in the gateway under their priorities and deadlines, or
are shed — until the engine reports room: the gateway sheds before the engine preempts or
runs out of cache. An endpoint that does not answer leaves the replica as it was.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from appliance.core.engine_gauges import KV_USAGE, WAITING, engine_readings
from appliance.gateway import contract, metrics

log = logging.getLogger(__name__)

def full(gauges: dict[str, float], max_num_seqs: int) -> bool:
    """Has this engine no room for a new stream?"""
    return (gauges.get(KV_USAGE, 0.0) >= contract.KV_HIGH_WATERMARK
            or gauges.get(WAITING, 0.0) >= max_num_seqs)  # fmt: skip


class EngineWatch:
    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        self._session: aiohttp.ClientSession | None = None

    async def poll(self) -> None:
        """One round: every node that serves a generative model."""
        snapshot = self.gw.snapshot
        if not snapshot.engine_metrics:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5))
        for triton, address in snapshot.engine_metrics.items():
            try:
                async with self._session.get(f"http://{address}/metrics") as response:
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue
            by_model: dict[str, bool] = {}
            usage: dict[str, float] = {}
            for (model, _, _), gauges in engine_readings(text).items():
                seqs = snapshot.engine_slots.get(model, 0) // contract.ENGINE_QUEUE_FACTOR
                if not seqs:
                    continue
                # Versions (and a reload's two instances) of a model on one Triton share its replica's
                # limit: the fuller engine decides.
                by_model[model] = by_model.get(model, False) or full(gauges, seqs)
                usage[model] = max(usage.get(model, 0.0), gauges.get(KV_USAGE, 0.0))
            for model, is_full in by_model.items():
                for route in snapshot.routes.get(model, ()):
                    if route.address != triton:  # that Triton's engines only (not a MIG slice's of the node)
                        continue
                    self.gw.admission.engine_pressure(route.address, model, full=is_full)
                    metrics.ENGINE_KV.labels(route.address, model).set(usage[model])
                    metrics.ENGINE_FULL.labels(route.address, model).set(1 if is_full else 0)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
