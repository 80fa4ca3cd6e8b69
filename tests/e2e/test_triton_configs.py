"""Every kind of config the serving-profile generator writes loads into a real
tritonserver (the pinned 2.51), which reports back the settings we asked for and
answers an inference with them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.tritonconfig import WARMUP_DIR, render_config, warmup_files
from appliance.core.process import wait_until
from appliance.core.tritonserver import TritonPorts, TritonSupervisor, triton_ready
from tests.e2e.fleet import free_port
from tests.factories import MODELS_DIR, manifest
from triton_models.digits import build as digits_build

pytestmark = [pytest.mark.e2e]

IMAGE = digits_build.split()[1][0]

PROFILES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "batching-tuned": {
        "max_batch_size": 32,
        "dynamic_batching": {
            "preferred_batch_sizes": [8, 16], "max_queue_delay_us": 500, "priority_levels": 3,
            "default_priority_level": 2,
            "default_queue_policy": {"timeout_action": "reject", "default_timeout_us": 200000, "max_queue_size": 64},
            "priority_queue_policy": {"3": {"timeout_action": "delay", "default_timeout_us": 50000, "max_queue_size": 8}},
        },
    },
    "two-instances-random-warmup": {
        "instance_group": {"count": 2, "kind": "cpu"},
        "warmup": {"source": "random", "batch_size": 4, "count": 2},
    },
    "sample-warmup": {"warmup": {"source": "samples"}},
    "triton-cache": {"response_cache": True},
    "no-batching": {"max_batch_size": 0, "dynamic_batching": {"enabled": False}, "warmup": {"source": "none"}},
}


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[grpcclient.InferenceServerClient, Path]]:
    root = tmp_path_factory.mktemp("triton-configs")
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    supervisor = TritonSupervisor(node_name="configs", repository=root / "models", ports=ports, log_path=root / "triton.log")
    supervisor.start()
    try:
        assert wait_until(lambda: triton_ready(ports.grpc_address), timeout=60), (root / "triton.log").read_text()[-3000:]
        yield grpcclient.InferenceServerClient(ports.grpc_address), root / "models"
    finally:
        supervisor.stop()


def _digits_files() -> dict[str, bytes]:
    return digits_build.files(digits_build.train()[0])


def _place(repo: Path, version: ModelVersion, files: dict[str, bytes]) -> str:
    model_dir = repo / version.model.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (model_dir / "1" / name).write_bytes(data)
    for name, data in warmup_files(version, version.model.serving_profile).items():
        (model_dir / WARMUP_DIR).mkdir(exist_ok=True)
        (model_dir / WARMUP_DIR / name).write_bytes(data)
    text = render_config(version, versions=[1])
    (model_dir / "config.pbtxt").write_text(text)
    return text


def _version(name: str, profile: dict[str, Any], **fields: Any) -> ModelVersion:
    spec = manifest(name if name == "countdown" else "digits")
    values = {"number": 1, "format": "python", "signature": spec["signature"], "max_batch_size": spec["max_batch_size"],
              "decoupled": spec["decoupled"], "sample_inputs": {"IMAGE": IMAGE.tolist()}}  # fmt: skip
    values.update(fields)
    model = Model(name=name, serving_profile=profile)
    return ModelVersion(model=model, artifact_sha256="0" * 64, artifact_size=1, **values)


@pytest.mark.parametrize("kind", sorted(PROFILES))
def test_generated_config_loads_and_serves(triton: tuple[grpcclient.InferenceServerClient, Path], kind: str) -> None:
    client, repo = triton
    version = _version(kind, PROFILES[kind])
    _place(repo, version, _digits_files())
    client.load_model(kind)
    assert client.is_model_ready(kind, "1")
    config = client.get_model_config(kind).config
    batch = PROFILES[kind].get("max_batch_size", 64)
    assert config.max_batch_size == batch
    if kind == "batching-tuned":
        batching = config.dynamic_batching
        assert (list(batching.preferred_batch_size), batching.max_queue_delay_microseconds) == ([8, 16], 500)
        assert (batching.priority_levels, batching.default_priority_level) == (3, 2)
        assert batching.default_queue_policy.max_queue_size == 64
        assert batching.priority_queue_policy[3].max_queue_size == 8
    if kind == "two-instances-random-warmup":
        assert config.instance_group[0].count == 2
        assert (config.model_warmup[0].batch_size, config.model_warmup[0].count) == (4, 2)
        assert config.model_warmup[0].inputs["IMAGE"].random_data
    if kind == "sample-warmup":
        assert config.model_warmup[0].inputs["IMAGE"].input_data_file == "v1_IMAGE"
    if kind == "defaults":
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
        assert config.model_warmup[0].inputs["IMAGE"].zero_data
    if kind == "triton-cache":
        assert config.response_cache.enable
    if kind == "no-batching":
        assert not config.HasField("dynamic_batching") and not config.model_warmup

    shape = [1, 64] if batch else [64]
    tensor = grpcclient.InferInput("IMAGE", shape, "FP32")
    tensor.set_data_from_numpy(IMAGE.reshape(shape).astype(np.float32))
    result = client.infer(kind, [tensor], priority=1 if kind == "batching-tuned" else 0)
    weights, _ = digits_build.train()
    x = IMAGE.astype(np.float32) / weights["scale"]
    expected = int((np.maximum(x @ weights["w1"] + weights["b1"], 0) @ weights["w2"] + weights["b2"]).argmax())
    assert int(result.as_numpy("LABEL").reshape(-1)[0]) == expected
    if kind == "triton-cache":
        client.infer(kind, [tensor])
        stats = client.get_inference_statistics(kind).model_stats[0].inference_stats
        assert stats.cache_hit.count == 1, "the second identical request is answered from Triton's cache"


def test_decoupled_model_gets_no_warmup_and_loads(triton: tuple[grpcclient.InferenceServerClient, Path]) -> None:
    client, repo = triton
    version = _version("countdown", {}, sample_inputs=None)
    text = _place(repo, version, {"model.py": (MODELS_DIR / "countdown" / "model.py").read_bytes()})
    assert "model_warmup" not in text and "decoupled: true" in text
    client.load_model("countdown")
    assert client.is_model_ready("countdown", "1")


def test_generated_ensemble_config_loads_and_serves(triton: tuple[grpcclient.InferenceServerClient, Path]) -> None:
    client, repo = triton
    _place(repo, _version("composed", {}), _digits_files())
    client.load_model("composed")
    steps = [{"model": "composed", "input_map": {"IMAGE": "IMAGE"}, "output_map": {"LABEL": "LABEL", "PROBABILITIES": "PROBABILITIES"}}]
    version = _version("pipeline", {}, format="ensemble", ensemble_steps=steps, sample_inputs=None)
    text = _place(repo, version, {})
    assert 'platform: "ensemble"' in text and "model_warmup" not in text
    client.load_model("pipeline")
    assert client.is_model_ready("pipeline", "1")
    tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(IMAGE.reshape(1, 64).astype(np.float32))
    direct = client.infer("composed", [tensor]).as_numpy("LABEL")
    assert np.array_equal(client.infer("pipeline", [tensor]).as_numpy("LABEL"), direct)
