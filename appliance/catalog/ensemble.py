"""Ensemble versions: a pipeline of other models run inside one Triton.

The artifact of an ensemble is a JSON document (content-addressed like any other):

    {"steps": [{"model": "digits", "input_map": {"IMAGE": "IMAGE"},
                "output_map": {"LABEL": "LABEL", "PROBABILITIES": "PROBABILITIES"}}]}

`input_map` maps the step model's input tensors to ensemble tensors, `output_map`
its output tensors to ensemble tensors (Triton's own convention). Every tensor a
step reads must be an ensemble input or an earlier step's output; every ensemble
output must be produced by a step. Composing models must be served on each node
the ensemble is placed on (rollouts check); Triton runs whichever of their
versions are loaded there (version -1: the newest loaded).
"""

from __future__ import annotations

import json
from typing import Any

from appliance.core.errors import DomainError


class EnsembleError(DomainError):
    """An ensemble specification that cannot run."""


def parse_steps(data: bytes, signature: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The validated steps, or EnsembleError naming the problem."""
    from appliance.catalog.models import Model

    try:
        spec = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EnsembleError(f"an ensemble artifact is a JSON document with 'steps': {exc}") from exc
    steps = spec.get("steps") if isinstance(spec, dict) else None
    if not isinstance(steps, list) or not steps:
        raise EnsembleError("an ensemble artifact needs a non-empty 'steps' list")
    available = {t["name"] for t in signature["inputs"]}
    result = []
    for index, step in enumerate(steps):
        where = f"steps[{index}]"
        if not isinstance(step, dict) or set(step) - {"model", "input_map", "output_map"}:
            raise EnsembleError(f"{where}: expected an object with model, input_map and output_map")
        name = step.get("model")
        if not isinstance(name, str) or not Model.objects.filter(name=name).exists():
            raise EnsembleError(f"{where}: model {name!r} is not in the catalog")
        maps = [step.get("input_map"), step.get("output_map")]
        if not all(isinstance(m, dict) and m and all(isinstance(k, str) and isinstance(v, str) for k, v in m.items())
                   for m in maps):  # fmt: skip
            raise EnsembleError(f"{where}: input_map and output_map map tensor names to tensor names")
        missing = sorted(set(step["input_map"].values()) - available)
        if missing:
            raise EnsembleError(f"{where} ({name}) reads {missing}: neither ensemble inputs nor earlier outputs")
        available |= set(step["output_map"].values())
        result.append({"model": name, "input_map": dict(step["input_map"]), "output_map": dict(step["output_map"])})
    unproduced = sorted({t["name"] for t in signature["outputs"]} - available)
    if unproduced:
        raise EnsembleError(f"no step produces the ensemble outputs {unproduced}")
    return result


def composing_models(steps: list[dict[str, Any]] | None) -> list[str]:
    return sorted({step["model"] for step in steps or []})
