"""Which Triton backend serves a version's format on a node, from the backends the
node's agent reports (the subdirectories of its Triton's backend directory).

The one home of that rule: placement refuses a node with no backend for the format
(rollouts.services.format_refusal), the config generator names the backend chosen
(tritonconfig.build_config) and the agent writes what that backend needs beside the
artifact (agent/repository.py). ONNX is served everywhere a Python backend is: where
the node's Triton has no ONNX Runtime backend (the CPU Triton of this appliance has
only the Python backend), the appliance serves model.onnx through ONNX Runtime inside
the Python backend with a model.py of its own (catalog/onnx_runner.py); ONNX Runtime is
part of the Triton environment the appliance installs (requirements-triton.txt).

Generative (vllm-format) versions need the node's vLLM environment (`vllm_engine`, which
the agent reports beside its Triton's backends when it finds one: core/vllm_env.py); the
Python backend runs the appliance's catalog/vllm_runner.py in front of that engine.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from appliance.catalog.choices import ArtifactFormat
from appliance.core import vllm_env

# The model.py written beside model.onnx where a node serves ONNX through the Python backend
# (read as a file, never imported: it runs in the Triton environment).
ONNX_RUNNER = Path(__file__).with_name("onnx_runner.py")
# The model.py written beside a generative version's Hugging Face folder.
VLLM_RUNNER = Path(__file__).with_name("vllm_runner.py")

ONNXRUNTIME = "onnxruntime"
PYTHON = "python"
TENSORRT = "tensorrt"
# Not a Triton backend directory: the node's vLLM environment, served through the Python backend.
VLLM_ENGINE = vllm_env.VLLM_ENGINE
VLLM_ENGINE_GPU = vllm_env.VLLM_ENGINE_GPU
# The Triton backend a capability is served by, where it is not a backend of its own.
TRITON_BACKEND = {VLLM_ENGINE: PYTHON, VLLM_ENGINE_GPU: PYTHON}

# What each format can be served by, in order of preference.
_SERVED_BY: dict[str, tuple[str, ...]] = {
    ArtifactFormat.ONNX: (ONNXRUNTIME, PYTHON),
    ArtifactFormat.TENSORRT_PLAN: (TENSORRT,),
    ArtifactFormat.PYTHON: (PYTHON,),
    ArtifactFormat.ENSEMBLE: ("",),  # Triton's core runs ensembles
    ArtifactFormat.VLLM: (VLLM_ENGINE, VLLM_ENGINE_GPU),  # not reported: a CPU engine is assumed
}


def serving_backend(fmt: str, backends: Collection[str]) -> str | None:
    """The backend that serves `fmt` on a node with `backends` ('' for an ensemble), or
    None when none can. An empty `backends` is a node whose agent has not reported them
    (an agent older than the report): the format's native backend is assumed."""
    choices = _SERVED_BY[fmt]
    if not backends:
        return choices[0]
    for choice in choices:
        if not choice or choice in backends:
            return choice
    return None


def backend_refusal(fmt: str, backends: Collection[str]) -> str:
    """Why a node with `backends` cannot serve `fmt`, or ''."""
    if serving_backend(fmt, backends) is not None:
        return ""
    if fmt == ArtifactFormat.VLLM:
        return f"a vllm version needs a vLLM environment on the node; the node's Triton has {', '.join(sorted(backends))}"
    need = " or ".join(f"the {b} backend" for b in _SERVED_BY[fmt])
    have = ", ".join(sorted(backends))
    return f"a {fmt} version needs {need}; the node's Triton has {have}"


def wraps_onnx_in_python(fmt: str, backends: Collection[str]) -> bool:
    """True where an ONNX version is served by the appliance's ONNX Runtime model.py."""
    return fmt == ArtifactFormat.ONNX and serving_backend(fmt, backends) == PYTHON


def runner(fmt: str, backends: Collection[str]) -> Path | None:
    """The appliance's model.py the agent writes into a version's directory, or None."""
    if fmt == ArtifactFormat.VLLM:
        return VLLM_RUNNER
    return ONNX_RUNNER if wraps_onnx_in_python(fmt, backends) else None


def engine_device(backends: Collection[str]) -> str:
    """Where a generative version's engine runs on a node with `backends`: "gpu" or "cpu"."""
    return "gpu" if serving_backend(ArtifactFormat.VLLM, backends) == VLLM_ENGINE_GPU else "cpu"
