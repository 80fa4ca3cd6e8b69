"""The node's generative engines, read for the control plane's charts: at each heartbeat
the agent reads the gauges every engine publishes on its Triton's metrics endpoint (the
node's main Triton and each MIG slice's; catalog/vllm_runner.py republishes vLLM's own)
and reports one reading per model version. Preemptions are a counter since the engine
started: the report carries those since the agent's last reading (an engine that started
again counts from zero)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable

from appliance.catalog.generative import KV_USAGE, PREEMPTIONS, RUNNING, WAITING, EngineReading, engine_readings


def read_page(address: str, timeout: float = 1.0) -> str | None:
    """A Triton's metrics page; None if it does not answer (no reading rather than zeros)."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
            return str(response.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


class EngineMeter:
    def __init__(self) -> None:
        self._preempted: dict[tuple[str, str, str], float] = {}  # (Triton, model, version) -> last total

    def readings(self, pages: Iterable[tuple[str, str]]) -> list[EngineReading]:
        """One reading per model version per Triton, from (Triton address, metrics page) pairs."""
        out: list[EngineReading] = []
        seen: set[tuple[str, str, str]] = set()
        read: set[str] = set()
        for address, text in pages:
            read.add(address)
            for (model, version), gauges in engine_readings(text).items():
                if not model or not version.isdigit() or KV_USAGE not in gauges:
                    continue
                key = (address, model, version)
                seen.add(key)
                total = gauges.get(PREEMPTIONS, 0.0)
                last = self._preempted.get(key)
                self._preempted[key] = total
                # First sight: the baseline. A total that went down: the engine started again.
                delta = 0.0 if last is None else total - last if total >= last else total
                out.append(EngineReading(model=model, version=int(version),
                                         kv_cache_usage=min(max(gauges[KV_USAGE], 0.0), 1.0),
                                         running=max(gauges.get(RUNNING, 0.0), 0.0),
                                         waiting=max(gauges.get(WAITING, 0.0), 0.0), preemptions=int(delta)))  # fmt: skip
        for gone in {key for key in self._preempted if key[0] in read} - seen:  # unloaded: forget its total
            del self._preempted[gone]
        return out
