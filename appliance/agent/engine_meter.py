"""The node's generative engines, read for the control plane's charts: every heartbeat
period the agent reads the gauges each engine publishes on its Triton's metrics endpoint
(the node's main Triton and each MIG slice's; catalog/vllm_runner.py republishes vLLM's
own) and reports one reading per engine: its device ("" for the main Triton, the MIG
slice's uuid), model and version. Preemptions are a counter since the engine started:
the report carries those since the last report that was taken (an engine that started
again counts from zero)."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterable

from appliance.core.engine_gauges import KV_USAGE, PREEMPTIONS, RUNNING, WAITING, EngineReading, engine_readings

_MAX_VERSION = 2**31 - 1


def read_page(address: str, timeout: float = 1.0) -> str | None:
    """A Triton's metrics page; None if it does not answer (no reading rather than zeros)."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
            return str(response.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _number(value: float | None) -> float:
    """A gauge as a reading takes it: finite and not negative (a NaN or a glitch reads 0)."""
    return value if value is not None and math.isfinite(value) and value >= 0 else 0.0


class EngineMeter:
    def __init__(self) -> None:
        # (device, model, version, engine) -> preemption total last reported
        self._taken: dict[tuple[str, str, str, str], float] = {}
        self._pending: dict[tuple[str, str, str, str], float] = {}
        self._read: set[str] = set()

    def readings(self, pages: Iterable[tuple[str, str]]) -> list[EngineReading]:
        """One reading per engine, from (device, metrics page) pairs of the Tritons that answered.
        Call commit() once the control plane took them; until then the next readings count
        preemptions from the same baselines. While Triton reloads a model, a version runs two
        instances, each with its engine: they make one reading (the fuller cache, the sequences
        of both, the preemptions of each counted from its own baseline)."""
        self._pending, self._read = {}, set()
        merged: dict[tuple[str, str, int], EngineReading] = {}
        for device, text in pages:
            self._read.add(device)
            for (model, version, engine), gauges in engine_readings(text).items():
                number = int(version) if version.isascii() and version.isdecimal() else 0
                if not model or not 1 <= number <= _MAX_VERSION or KV_USAGE not in gauges:
                    continue
                key = (device, model, version, engine)
                total = _number(gauges.get(PREEMPTIONS))
                last = self._taken.get(key)
                self._pending[key] = total
                # First sight: the baseline. A total that went down: the engine started again.
                delta = 0.0 if last is None else total - last if total >= last else total
                reading = EngineReading(device=device, model=model, version=number,
                                        kv_cache_usage=min(_number(gauges[KV_USAGE]), 1.0),
                                        running=_number(gauges.get(RUNNING)), waiting=_number(gauges.get(WAITING)),
                                        preemptions=int(delta))  # fmt: skip
                other = merged.get((device, model, number))
                if other is not None:
                    reading = EngineReading(device=device, model=model, version=number,
                                            kv_cache_usage=max(other.kv_cache_usage, reading.kv_cache_usage),
                                            running=other.running + reading.running,
                                            waiting=other.waiting + reading.waiting,
                                            preemptions=other.preemptions + reading.preemptions)  # fmt: skip
                merged[(device, model, number)] = reading
        return list(merged.values())

    def commit(self) -> None:
        """The last readings were taken: their totals are the new baselines; an engine gone from
        a Triton that answered is forgotten (unloaded, or the version was retired)."""
        kept = {key: total for key, total in self._taken.items() if key[0] not in self._read}
        self._taken = {**kept, **self._pending}
