"""A generative engine's gauges as the appliance reads them: catalog/vllm_runner.py
republishes vLLM's own on its Triton's metrics endpoint (labels: model, version); the
gateway's admission (gateway/engines.py) and the node agent's engine report
(agent/engine_meter.py, through the agent interface into metrics.EnginePoint) read them
here. In core because the node agent may import nothing else of the control plane."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

KV_USAGE = "appliance_engine_kv_cache_usage"
RUNNING = "appliance_engine_requests_running"
WAITING = "appliance_engine_requests_waiting"
PREEMPTIONS = "appliance_engine_preemptions"  # a counter since the engine started
_GAUGE_LINE = re.compile(r'^(appliance_engine_\w+)\{([^}]*)\}\s+(\S+)')
_GAUGE_LABEL = re.compile(r'(\w+)="([^"]*)"')


def engine_readings(text: str) -> dict[tuple[str, str, str], dict[str, float]]:
    """{(model, version, engine): {gauge: value}} from a Triton metrics page. `engine` names one
    instance's engine (the runner's label; "" if none): while Triton reloads a model, two
    instances of one version run at once, each with its own engine and gauges."""
    found: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for line in text.splitlines():
        match = _GAUGE_LINE.match(line)
        if not match:
            continue
        labels = dict(_GAUGE_LABEL.findall(match.group(2)))
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        found[(labels.get("model", ""), labels.get("version", ""), labels.get("engine", ""))][match.group(1)] = value
    return dict(found)


@dataclass(frozen=True)
class EngineReading:
    """One engine as its node agent read it once: the gauges above, and the sequences it
    preempted since the agent's last report (not the engine's running total). `device` is
    "" for the node's main Triton and the MIG slice's uuid for a slice's."""

    device: str
    model: str
    version: int
    kv_cache_usage: float
    running: float
    waiting: float
    preemptions: int

    @classmethod
    def from_json(cls, data: Any) -> EngineReading:
        """One reading as an agent sends it; ValueError says what is wrong."""
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise ValueError(f"a reading has exactly {', '.join(f.name for f in fields(cls))}")
        device, model, version = data["device"], data["model"], data["version"]
        if not isinstance(device, str) or len(device) > 64 or not (device.isprintable() and device.isascii()):
            raise ValueError("device: '' or a MIG device's uuid (printable ASCII, at most 64 characters)")
        if not isinstance(model, str) or not 1 <= len(model) <= 128 or not model.isprintable():
            raise ValueError("model: a model name of 1-128 printable characters")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**31:
            raise ValueError(f"version: a version number from 1, not {version!r}")
        numbers = {}
        for name in ("kv_cache_usage", "running", "waiting", "preemptions"):
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
                raise ValueError(f"{name}: a number, not negative, not {value!r}")
            numbers[name] = value
        if numbers["kv_cache_usage"] > 1:
            raise ValueError(f"kv_cache_usage: a share of the cache from 0 to 1, not {numbers['kv_cache_usage']}")
        if not isinstance(numbers["preemptions"], int):
            raise ValueError("preemptions: a whole number")
        return cls(device=device, model=model, version=version, **numbers)
