"""Generative (vllm-format) versions in the control plane: what upload reads from the
Hugging Face folder, the engine knobs of the serving profile and their validation, the
KV-cache sizing that refuses a placement in numbers, and the engine command line in the
generated config (catalog/generative.py). The engine itself runs in tests/e2e/test_generative.py."""

from __future__ import annotations

import html
import io
import json
import struct
import tarfile
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from google.protobuf import text_format
from rest_framework.test import APIClient
from tritonclient.grpc import model_config_pb2 as mc

from appliance.catalog import generative
from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.tritonconfig import render_config
from appliance.core.engine_gauges import EngineReading
from appliance.nodes.models import Node
from appliance.rollouts.choices import ReplicaState
from appliance.rollouts.models import Deployment, Replica
from tests.factories import make_node

pytestmark = pytest.mark.django_db

GIB = 1024**3
# A small llama-shaped model: 4 layers, 2 KV heads of 64, 1M parameters stored in bf16.
CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2, "hidden_size": 256, "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}  # fmt: skip
PER_TOKEN_BF16 = 2 * 4 * 2 * 64 * 2  # K and V, layers, KV heads, head size, bytes


def _safetensors(shapes: dict[str, list[int]], dtype: str = "BF16") -> bytes:
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def folder(config: dict[str, Any] | None = None, *, template: bool = True, weights: bool = True,
           tokenizer: bool = True, dtype: str = "BF16") -> bytes:  # fmt: skip
    files = {"config.json": json.dumps(config or CONFIG).encode()}
    if tokenizer:
        files["tokenizer.json"] = b"{}"
        files["tokenizer_config.json"] = json.dumps({"chat_template": "{{ messages }}"} if template else {}).encode()
    if weights:
        files["model.safetensors"] = _safetensors({"embed": [1000, 512], "lm": [24, 1000], "norm": [1000]}, dtype)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _upload(api: APIClient, model: str, artifact: bytes, **fields: Any) -> Any:
    if not Model.objects.filter(name=model).exists():
        assert api.post("/api/v1/models/", {"name": model}, format="json").status_code == 201
    body = {"model": model, "format": "vllm", "artifact": SimpleUploadedFile("llm.tar", artifact), **fields}
    return api.post("/api/v1/versions/", body, format="multipart")


def test_upload_reads_the_folder_and_fills_the_vllm_backend_signature(api: APIClient) -> None:
    response = _upload(api, "llm", folder())
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["generative"] == {
        "architecture": "LlamaForCausalLM", "layers": 4, "kv_heads": 2, "head_dim": 64,
        "max_position_embeddings": 4096, "parameters": 1000 * 512 + 24 * 1000 + 1000,
        "stored_bytes": 2 * (1000 * 512 + 24 * 1000 + 1000), "stored_dtype": "bfloat16", "chat_template": True,
        "template": "{{ messages }}",
    }  # fmt: skip
    assert body["decoupled"] is True and body["max_batch_size"] == 0
    inputs = {t["name"]: t for t in body["signature"]["inputs"]}
    assert inputs["text_input"] == {"name": "text_input", "datatype": "BYTES", "dims": [1]}
    assert inputs["stream"]["optional"] is True
    assert {t["name"] for t in body["signature"]["outputs"]} >= {"text_output", "num_output_tokens"}


@pytest.mark.parametrize(
    ("artifact", "fields", "message"),
    [
        (folder(weights=False), {}, "must hold its weights as .safetensors files"),
        (folder(tokenizer=False), {}, "must hold its tokenizer"),
        (folder({"num_hidden_layers": 2}), {}, "config.json lacks the attention shape"),
        (b"not a tar at all" * 10, {}, "cannot be read"),
        (folder(), {"max_batch_size": 8}, "max_batch_size must be 0"),
        (folder(), {"signature": json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "dims": [1]}],
                                             "outputs": [{"name": "y", "datatype": "FP32", "dims": [1]}]})},
         "leave signature out"),
    ],
    ids=["no-weights", "no-tokenizer", "no-shape", "not-a-tar", "batch-size", "other-signature"],
)
def test_a_bad_generative_upload_is_refused_and_leaves_nothing(api: APIClient, artifact: bytes, fields: dict[str, Any],
                                                               message: str) -> None:  # fmt: skip
    response = _upload(api, "llm", artifact, **fields)
    assert response.status_code == 400, response.content
    assert message in json.dumps(response.json())
    assert not ModelVersion.objects.exists()


def test_other_formats_still_need_a_signature(api: APIClient) -> None:
    api.post("/api/v1/models/", {"name": "m"}, format="json")
    body = {"model": "m", "format": "python", "artifact": SimpleUploadedFile("m.tar.gz", b"x" * 10)}
    response = api.post("/api/v1/versions/", body, format="multipart")
    assert response.status_code == 400 and "signature" in json.dumps(response.json())


def test_engine_settings_are_validated_against_the_model(api: APIClient) -> None:
    assert _upload(api, "llm", folder()).status_code == 201
    # 64 MiB of cache holds 64 MiB / 2048 B = 32768 tokens: fine for 4096; a longer context than the model's is not.
    too_long = {"serving_profile": {"engine": {"max_model_len": 8192}}}
    response = api.patch("/api/v1/models/llm/", too_long, format="json")
    assert response.status_code == 400
    assert "max_model_len 8192 exceeds the model's context of 4096 tokens" in json.dumps(response.json())
    small = {"serving_profile": {"engine": {"kv_cache_mib": 64, "max_model_len": 4096, "dtype": "float32"}}}
    response = api.patch("/api/v1/models/llm/", small, format="json")
    # float32 doubles the bytes per token: 64 MiB hold 16384 tokens, still >= 4096.
    assert response.status_code == 200, response.content
    unknown = api.patch("/api/v1/models/llm/", {"serving_profile": {"engine": {"gpu_memory_utilization": 0.9}}},
                        format="json")  # fmt: skip
    assert unknown.status_code == 400 and "unknown field" in json.dumps(unknown.json())
    several = api.patch("/api/v1/models/llm/", {"serving_profile": {"instance_group": {"count": 2}}}, format="json")
    assert several.status_code == 400 and "add replicas instead" in json.dumps(several.json())


def test_a_cache_that_cannot_hold_one_sequence_is_refused_with_the_numbers() -> None:
    facts = {**generative.facts_from_artifact(folder()), "layers": 400}  # 100x the layers: 204800 B per token
    engine = generative.engine_spec({"engine": {"kv_cache_mib": 64, "max_model_len": 4096}})
    assert generative.engine_refusal(facts, engine) == (
        "a KV cache of 64 MiB holds 256 tokens in whole blocks of 128 (204800 bytes a token), less than one "
        "sequence of max_model_len 4096: give at least 800 MiB or a shorter max_model_len"
    )
    # 327 tokens' worth of bytes, but the engine hands out whole blocks: 2 of 128 hold 256 (< 300);
    # in blocks of 16, 20 hold 320 (>= 300).
    short = generative.engine_spec({"engine": {"kv_cache_mib": 64, "max_model_len": 300}})
    assert generative.engine_refusal(facts, short).startswith("a KV cache of 64 MiB holds 256 tokens in whole blocks")
    assert generative.engine_refusal(facts, {**short, "block_size": 16}) == ""


def test_the_config_hands_the_runner_the_engine_command_line(api: APIClient) -> None:
    _upload(api, "llm", folder())
    api.patch("/api/v1/models/llm/", {"serving_profile": {"engine": {"kv_cache_mib": 256, "max_num_seqs": 8,
              "block_size": 32, "enforce_eager": True, "enable_prefix_caching": False}}}, format="json")  # fmt: skip
    version = ModelVersion.objects.get()
    config = text_format.Parse(render_config(version, versions=[1], backends=("python", "vllm_engine")),
                               mc.ModelConfig())  # fmt: skip
    assert config.backend == "python"
    assert config.model_transaction_policy.decoupled and config.max_batch_size == 0
    assert [i.name for i in config.input if i.optional] == [
        "stream", "sampling_parameters", "exclude_input_in_output", "return_finish_reason", "return_num_input_tokens",
        "return_num_output_tokens"]  # fmt: skip
    argv = json.loads(config.parameters["engine_argv"].string_value)["1"]
    assert argv == ["--dtype", "bfloat16", "--max-model-len", "2048", "--max-num-seqs", "8",
                    "--no-enable-prefix-caching", "--block-size", "32", "--enforce-eager",
                    "--kv-cache-memory-bytes", str(256 * 1024**2)]  # fmt: skip
    assert json.loads(config.parameters["engine_env"].string_value) == {"1": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}}
    # A node whose vLLM runs on CUDA, GPU of 80 GiB: one instance on GPU 0 (the runner pins the engine
    # there), and the engine's share is its own need, not "0.9 of a GPU".
    gpu = text_format.Parse(render_config(version, versions=[1], backends=("python", "vllm_engine_gpu"),
                                          device_memory=80 * GIB), mc.ModelConfig())  # fmt: skip
    assert [(g.kind, list(g.gpus), g.count) for g in gpu.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, [0], 1)]
    gpu_argv = json.loads(gpu.parameters["engine_argv"].string_value)["1"]
    share = float(gpu_argv[gpu_argv.index("--gpu-memory-utilization") + 1])
    need = generative.need(version.generative, generative.engine_spec(version.model.serving_profile), "gpu")
    assert share == pytest.approx(need.total / (80 * GIB), abs=1e-4) and share < 0.05
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in json.loads(gpu.parameters["engine_env"].string_value)["1"]


def test_each_version_s_engine_gets_its_own_command_line_in_the_model_s_config(api: APIClient) -> None:
    """One config serves every version of a model; with the profile's dtype "auto" (as stored), a
    canary stored in fp32 must not start the resident bf16 version's engine as fp32 (twice its
    weights, and the canary's share of the GPU), nor the reverse."""
    _upload(api, "llm", folder())
    _upload(api, "llm", folder({**CONFIG, "torch_dtype": "float32"}, dtype="F32"))
    assert api.patch("/api/v1/models/llm/", {"serving_profile": {"engine": {"dtype": "auto"}}},
                     format="json").status_code == 200  # fmt: skip
    newest = ModelVersion.objects.get(number=2)
    config = text_format.Parse(render_config(newest, versions=[1, 2], backends=("python", "vllm_engine_gpu"),
                                             device_memory=80 * GIB), mc.ModelConfig())  # fmt: skip
    argvs = json.loads(config.parameters["engine_argv"].string_value)
    assert sorted(argvs) == ["1", "2"]
    spec = generative.engine_spec(newest.model.serving_profile)
    for number, argv in argvs.items():
        facts = ModelVersion.objects.get(number=int(number)).generative
        share = float(argv[argv.index("--gpu-memory-utilization") + 1])
        assert share == pytest.approx(generative.need(facts, spec, "gpu").total / (80 * GIB), abs=1e-4), number
    assert (argvs["1"][argvs["1"].index("--dtype") + 1], argvs["2"][argvs["2"].index("--dtype") + 1]) == (
        "bfloat16", "float32")


def _routable(node: Node, memory: int) -> Node:
    Node.objects.filter(pk=node.pk).update(memory_bytes=memory, backends=["python", "vllm_engine"], health="healthy",
                                           last_heartbeat=timezone.now())  # fmt: skip
    return Node.objects.get(pk=node.pk)


def test_a_placement_that_cannot_fit_is_refused_in_numbers(api: APIClient) -> None:
    _upload(api, "llm", folder())
    api.patch("/api/v1/models/llm/", {"serving_profile": {"engine": {"kv_cache_mib": 4096}}}, format="json")
    _routable(make_node("node-a"), 8 * GIB)  # half of it, 4 GiB, for engines
    version = ModelVersion.objects.get()
    response = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["node-a"]}, format="json")
    assert response.status_code == 400, response.content
    assert json.loads(response.content)["detail"] == (
        "node-a cannot run llm:1: llm:1 needs 6.50 GiB (weights 0.00 GiB + KV cache 4.00 GiB for 2097152 tokens + "
        "runtime 2.50 GiB); node-a (50% of its memory) has 4.00 GiB free for engines of 4.00 GiB"
    )
    assert not Deployment.objects.exists()


def test_two_generative_replicas_on_one_node_cannot_starve_each_other(api: APIClient) -> None:
    _upload(api, "llm", folder())
    node = _routable(make_node("node-a"), 15 * GIB)  # 7.5 GiB for engines; each replica needs 3.5 GiB
    first = ModelVersion.objects.get()
    response = api.post("/api/v1/deployments/", {"version": str(first.pk), "nodes": ["node-a"]}, format="json")
    assert response.status_code == 202, response.content
    Replica.objects.filter(node=node).update(state=ReplicaState.LIVE)
    need = "needs 3.50 GiB (weights 0.00 GiB + KV cache 1.00 GiB for 524288 tokens + runtime 2.50 GiB)"
    # Version 2 beside version 1 (a canary): 3.5 + 3.5 GiB would fit in 7.5, but Triton starts version 1
    # again beside itself while it loads version 2 (measured: it initialises every version of a model
    # whose directory changed), and version 2 again when version 1 is retired: refused, saying so.
    second = _upload(api, "llm", folder()).json()
    response = api.post("/api/v1/deployments/", {"version": second["id"], "nodes": ["node-a"]}, format="json")
    assert response.status_code == 400
    assert json.loads(response.content)["detail"] == (
        f"node-a cannot run llm:2: llm:2 {need}; node-a (50% of its memory) has 0.50 GiB free for engines of "
        "7.50 GiB (llm:1 holds 3.50 GiB; llm's reload (Triton starts a model's versions again while it adds or "
        "retires one) holds 3.50 GiB)"
    )  # fmt: skip
    assert Deployment.objects.count() == 1
    # Another model's engine is not started again: 3.5 + 3.5 GiB of 7.5 fit.
    chat = _upload(api, "chat", folder()).json()
    placed = api.post("/api/v1/deployments/", {"version": chat["id"], "nodes": ["node-a"]}, format="json")
    assert placed.status_code == 202, placed.content
    Replica.objects.filter(node=node).update(state=ReplicaState.LIVE)
    # A third engine would starve the two: refused, naming what each holds.
    _upload(api, "big", folder())
    api.patch("/api/v1/models/big/", {"serving_profile": {"engine": {"kv_cache_mib": 256}}}, format="json")
    big = ModelVersion.objects.get(model__name="big")
    response = api.post("/api/v1/deployments/", {"version": str(big.pk), "nodes": ["node-a"]}, format="json")
    assert json.loads(response.content)["detail"] == (
        "node-a cannot run big:1: big:1 needs 2.75 GiB (weights 0.00 GiB + KV cache 0.25 GiB for 131072 tokens + "
        "runtime 2.50 GiB); node-a (50% of its memory) has 0.50 GiB free for engines of 7.50 GiB (chat:1 holds "
        "3.50 GiB; llm:1 holds 3.50 GiB)"
    )  # fmt: skip
    assert Deployment.objects.count() == 2


def test_the_console_uploads_a_generative_version_and_shows_what_a_replica_needs(operator: Any) -> None:
    from django.test import Client

    client = Client()
    client.force_login(operator)
    body = {"model": "console-llm", "format": "vllm", "signature": "", "max_batch_size": "0",
            "artifact": SimpleUploadedFile("llm.tar", folder())}  # fmt: skip
    created = client.post("/console/models/upload/", body, HTTP_X_REQUESTED_WITH="XMLHttpRequest")
    assert created.status_code == 201, created.content
    page = client.get("/console/models/console-llm/").content.decode()
    assert ("Generative: LlamaForCausalLM, 1M parameters, 4 layers, 2 KV heads of 64, context 4096 tokens, "
            "chat template yes. One replica needs 3.50 GiB (weights 0.00 GiB + KV cache 1.00 GiB for 524288 tokens "
            "+ runtime 2.50 GiB) on a CPU node.") in page  # fmt: skip
    other = dict(body, model="console-py", format="python", artifact=SimpleUploadedFile("m.tar.gz", b"x" * 10))
    refused = client.post("/console/models/upload/", other, HTTP_X_REQUESTED_WITH="XMLHttpRequest")
    assert refused.status_code == 400 and "signature" in refused.json()["error"]

    # Its engines' charts on the metrics page, one line per version, once a node agent has read them.
    quiet = client.get("/console/metrics/?model=console-llm&window=1h").content.decode()
    assert "No engine of console-llm reported in this window." in quiet and 'id="engine-series"' not in quiet
    from appliance.metrics.collect import record_engines

    record_engines(node="n1", readings=[EngineReading("", "console-llm", 1, 0.42, 3, 1, 0)])
    charts = client.get("/console/metrics/?model=console-llm&window=1h").content.decode()
    assert 'id="engine-series"' in charts and 'data-fields="kv_v1,kv_max_v1"' in charts
    assert 'data-fields="preemptions_v1"' in charts and 'data-labels="v1 running,v1 waiting"' in charts
    assert '"kv_v1": [' in charts and "42.0" in charts
    assert "Engines of" not in client.get("/console/metrics/?window=1h").content.decode(), "only for a generative model"

    # An engine that preempted, or whose cache reached the gateway's watermark, is an alert on the overview.
    assert "engine of console-llm" not in client.get("/console/").content.decode(), "42 % and no preemption: no alert"
    record_engines(node="n1", readings=[EngineReading("", "console-llm", 1, 0.95, 16, 4, 0)])
    record_engines(node="n2", readings=[EngineReading("", "console-llm", 1, 0.5, 8, 0, 3)])
    overview = html.unescape(client.get("/console/").content.decode())
    assert ("engine of console-llm:1 on n1</a>: its KV cache reached 95% (the gateway held new streams back) in the "
            "last 15 minutes: its KV cache is small for its load") in overview  # fmt: skip
    assert "engine of console-llm:1 on n2</a>: preempted 3 sequences in the last 15 minutes" in overview
    assert 'href="metrics/?model=console-llm&window=1h"' in overview


def test_on_a_cuda_node_the_engine_is_sized_against_the_gpu_the_profile_names(api: APIClient) -> None:
    from appliance.nodes.models import Gpu

    _upload(api, "llm", folder())
    node = _routable(make_node("gpu-a"), 512 * GIB)
    Node.objects.filter(pk=node.pk).update(backends=["python", "vllm_engine_gpu"])
    for index, mib in ((0, 2048), (1, 81_559)):
        Gpu.objects.create(node=node, index=index, uuid=f"GPU-{index}", product="NVIDIA H100", memory_mib=mib)
    version = ModelVersion.objects.get()
    response = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["gpu-a"]}, format="json")
    assert response.status_code == 400  # GPU 0 (the default) has 2 GiB; the engine needs 3
    assert json.loads(response.content)["detail"] == (
        "gpu-a cannot run llm:1: llm:1 needs 3.00 GiB (weights 0.00 GiB + KV cache 1.00 GiB for 524288 tokens + "
        "runtime 2.00 GiB); gpu-a's GPU 0 has 2.00 GiB free for engines of 2.00 GiB"
    )
    api.patch("/api/v1/models/llm/", {"serving_profile": {"instance_group": {"kind": "gpu", "gpus": [1]}}}, format="json")
    assert api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["gpu-a"]},
                    format="json").status_code == 202  # fmt: skip
    api.patch("/api/v1/models/llm/", {"serving_profile": {"instance_group": {"kind": "gpu", "gpus": [7]}}},
              format="json")  # fmt: skip
    Deployment.objects.all().delete()
    refused = api.post("/api/v1/deployments/", {"version": str(version.pk), "nodes": ["gpu-a"]}, format="json")
    assert "the serving profile puts the engine on GPU 7; the node has GPUs [0, 1]" in json.loads(refused.content)["detail"]


def test_engines_count_on_their_own_gpu_from_the_moment_they_are_placed(api: APIClient) -> None:
    """On a node with two GPUs, an engine on GPU 1 does not take room on GPU 0; a replica still
    pending holds its room (another deployment must not take it before it loads), and so does a
    parked one (a request wakes it)."""
    from appliance.nodes.models import Gpu

    node = _routable(make_node("gpu-a"), 512 * GIB)
    Node.objects.filter(pk=node.pk).update(backends=["python", "vllm_engine_gpu"])
    for index in (0, 1):
        Gpu.objects.create(node=node, index=index, uuid=f"GPU-{index}", product="NVIDIA A30", memory_mib=4096)
    for name, gpu in (("llm", 0), ("chat", 1), ("big", 0)):  # each engine needs 3 GiB of a 4 GiB GPU
        _upload(api, name, folder())
        api.patch(f"/api/v1/models/{name}/", {"serving_profile": {"instance_group": {"kind": "gpu", "gpus": [gpu]}}},
                  format="json")  # fmt: skip
    llm, chat, big = (ModelVersion.objects.get(model__name=name) for name in ("llm", "chat", "big"))
    assert api.post("/api/v1/deployments/", {"version": str(llm.pk), "nodes": ["gpu-a"]}, format="json").status_code == 202
    assert Replica.objects.get(deployment__version=llm).state == ReplicaState.PENDING
    placed = api.post("/api/v1/deployments/", {"version": str(chat.pk), "nodes": ["gpu-a"]}, format="json")
    assert placed.status_code == 202, "llm's engine is on GPU 0, chat's goes on GPU 1"
    for state in (ReplicaState.PENDING, ReplicaState.PARKED):
        Replica.objects.filter(deployment__version=llm).update(state=state)
        refused = api.post("/api/v1/deployments/", {"version": str(big.pk), "nodes": ["gpu-a"]}, format="json")
        assert refused.status_code == 400, state
        assert json.loads(refused.content)["detail"].endswith(
            "gpu-a's GPU 0 has 1.00 GiB free for engines of 4.00 GiB (llm:1 holds 3.00 GiB)"), state
    assert Deployment.objects.count() == 2


def test_the_gateway_reads_the_gauges_of_each_triton_that_serves_an_engine(api: APIClient) -> None:
    """The node's main Triton and a MIG slice's Triton each publish their own engines' gauges:
    the snapshot names each by its gRPC address (what routes carry), so a full engine presses
    the replicas of its own Triton only."""
    from appliance.gateway.snapshot import build_snapshot
    from appliance.nodes.models import Gpu, MigDevice

    node = _routable(make_node("gpu-m"), 512 * GIB)
    Node.objects.filter(pk=node.pk).update(backends=["python", "vllm_engine_gpu"], grpc_address="10.0.0.5:8001",
                                           metrics_address="10.0.0.5:8002")  # fmt: skip
    mig = Gpu.objects.create(node=node, index=0, uuid="GPU-0", product="NVIDIA H100", memory_mib=81_559, mig_enabled=True)
    Gpu.objects.create(node=node, index=1, uuid="GPU-1", product="NVIDIA H100", memory_mib=81_559)
    MigDevice.objects.create(gpu=mig, uuid="MIG-large", profile="3g.40gb", start=4, size=4, gpu_instance_id=2,
                             memory_mib=40_192, grpc_address="10.0.0.5:9001", metrics_address="10.0.0.5:9002")  # fmt: skip
    for name, where in (("llm", {"mig_devices": ["MIG-large"]}), ("chat", {"nodes": ["gpu-m"]})):
        _upload(api, name, folder())
        if name == "chat":
            api.patch("/api/v1/models/chat/", {"serving_profile": {"instance_group": {"kind": "gpu", "gpus": [1]}}},
                      format="json")  # fmt: skip
        version = ModelVersion.objects.get(model__name=name)
        placed = api.post("/api/v1/deployments/", {"version": str(version.pk), **where}, format="json")
        assert placed.status_code == 202, placed.content
    Deployment.objects.update(state="live")
    Replica.objects.update(state=ReplicaState.LIVE)
    snapshot = build_snapshot()
    assert {m: sorted(r.address for r in snapshot.routes[m]) for m in ("llm", "chat")} == {
        "llm": ["10.0.0.5:9001"], "chat": ["10.0.0.5:8001"]}
    assert snapshot.engine_metrics == {"10.0.0.5:8001": "10.0.0.5:8002", "10.0.0.5:9001": "10.0.0.5:9002"}


def test_on_a_mig_slice_the_engine_is_sized_against_the_slice_and_its_other_engines(api: APIClient) -> None:
    """A MIG slice's Triton sees the slice as its only device: the engine's share is of the
    slice's memory, the engines already on that slice count, and those elsewhere on the node
    do not. A CPU build of vLLM cannot use a slice; a profile naming another GPU is refused."""
    from appliance.nodes.models import Gpu, MigDevice

    _upload(api, "llm", folder())
    node = _routable(make_node("gpu-m"), 512 * GIB)
    gpu = Gpu.objects.create(node=node, index=0, uuid="GPU-0", product="NVIDIA H100", memory_mib=81_559,
                             model="H100-SXM5-80GB", mig_enabled=True)  # fmt: skip
    small = MigDevice.objects.create(gpu=gpu, uuid="MIG-small", profile="1g.10gb", start=0, size=1, gpu_instance_id=9,
                                     memory_mib=2_048, grpc_address="127.0.0.1:1")  # fmt: skip
    large = MigDevice.objects.create(gpu=gpu, uuid="MIG-large", profile="3g.40gb", start=4, size=4, gpu_instance_id=2,
                                     memory_mib=7_168, grpc_address="127.0.0.1:2")  # fmt: skip
    version = ModelVersion.objects.get()

    def deploy(*devices: MigDevice) -> Any:
        return api.post("/api/v1/deployments/", {"version": str(version.pk), "mig_devices": [d.uuid for d in devices]},
                        format="json")  # fmt: skip

    refused = deploy(small)  # a CPU build of vLLM on the node
    assert refused.status_code == 400 and json.loads(refused.content)["detail"] == (
        "MIG device MIG-small of gpu-m cannot run llm:1: a MIG slice runs engines with vLLM for CUDA; gpu-m's vLLM "
        "environment is the CPU build")  # fmt: skip
    Node.objects.filter(pk=node.pk).update(backends=["python", "vllm_engine_gpu"])
    refused = deploy(small)
    assert refused.status_code == 400 and json.loads(refused.content)["detail"] == (
        "MIG device MIG-small of gpu-m cannot run llm:1: llm:1 needs 3.00 GiB (weights 0.00 GiB + KV cache 1.00 GiB "
        "for 524288 tokens + runtime 2.00 GiB); MIG device 1g.10gb (MIG-small) of gpu-m's GPU 0 has 2.00 GiB free "
        "for engines of 2.00 GiB")  # fmt: skip
    placed = deploy(large)
    assert placed.status_code == 202, placed.content
    Replica.objects.filter(mig_uuid="MIG-large").update(state=ReplicaState.LIVE)
    # Two versions on the same slice (placed as a rollout would not: with a third, their reload needs more
    # than the slice); a third is refused, naming what the others and the reload hold.
    second = ModelVersion.objects.get(pk=_upload(api, "llm", folder()).json()["id"])
    third = ModelVersion.objects.get(pk=_upload(api, "llm", folder()).json()["id"])
    Deployment.objects.all().delete()
    for v in (version, second):
        deployment = Deployment.objects.create(version=v, state="live")
        Replica.objects.create(deployment=deployment, node=node, mig_uuid="MIG-large", state=ReplicaState.LIVE)
    refused = api.post("/api/v1/deployments/", {"version": str(third.pk), "mig_devices": ["MIG-large"]}, format="json")
    assert refused.status_code == 400 and json.loads(refused.content)["detail"].endswith(
        "MIG device 3g.40gb (MIG-large) of gpu-m's GPU 0 has 0.00 GiB free for engines of 7.00 GiB "
        "(llm:1 holds 3.00 GiB; llm:2 holds 3.00 GiB; llm's reload (Triton starts a model's versions again while it "
        "adds or retires one) holds 6.00 GiB)")  # fmt: skip
    # The engines on MIG-large hold nothing of MIG-small: its refusal names no other engine.
    refused = api.post("/api/v1/deployments/", {"version": str(third.pk), "mig_devices": ["MIG-small"]}, format="json")
    assert json.loads(refused.content)["detail"].endswith(
        "MIG device 1g.10gb (MIG-small) of gpu-m's GPU 0 has 2.00 GiB free for engines of 2.00 GiB")
    # A profile naming another GPU than 0 cannot use a slice.
    api.patch("/api/v1/models/llm/", {"serving_profile": {"instance_group": {"kind": "gpu", "gpus": [1]}}}, format="json")
    refused = api.post("/api/v1/deployments/", {"version": str(third.pk), "mig_devices": ["MIG-small"]}, format="json")
    assert json.loads(refused.content)["detail"] == (
        "MIG device MIG-small of gpu-m cannot run llm:3: the serving profile puts the engine on GPU 1; the Triton of "
        "a MIG slice sees one device, 0")  # fmt: skip


def test_a_generative_model_takes_text_validation_sets_and_only_those(api: APIClient) -> None:
    """Prompts and reference answers as string arrays, for exact_match or perplexity; a tensor
    metric on a generative model (or a text metric on a tensor model) is refused saying why."""
    from triton_models.smollm2 import validation as smollm2_sets

    _upload(api, "llm", folder())

    def add(model: str, name: str, metric: str, content: bytes) -> Any:
        return api.post("/api/v1/validation-sets/", {"model": model, "name": name, "metric": metric,
                        "content": SimpleUploadedFile(f"{name}.npz", content)}, format="multipart")  # fmt: skip

    created = add("llm", "facts", "perplexity", smollm2_sets.perplexity_set())
    assert created.status_code == 201, created.content
    assert (created.json()["metric"], created.json()["rows"]) == ("perplexity", len(smollm2_sets.FACTS))
    answers = [answer for _, answer in smollm2_sets.FACTS]
    assert add("llm", "own", "exact_match", smollm2_sets.exact_match_set(answers)).status_code == 201
    refused = add("llm", "labels", "top1_accuracy", smollm2_sets.perplexity_set())
    assert refused.status_code == 400 and refused.json()["detail"] == (
        "top1_accuracy judges tensor outputs; a generative (vllm) model is judged on text: exact_match or perplexity")
    from tests.factories import make_version, validation_npz

    make_version("digits")
    refused = add("digits", "text", "perplexity", validation_npz())
    assert refused.status_code == 400
    assert "perplexity judges generative (vllm) models; this model's versions are python" in json.dumps(refused.json())
    assert sorted(Model.objects.get(name="llm").validation_sets.values_list("name", flat=True)) == ["facts", "own"]


def test_a_model_s_reload_holds_the_larger_of_its_new_and_its_resident_versions() -> None:
    """Adding a version starts the resident ones again; retiring them after a promotion starts
    the new one again: placement keeps room for whichever is larger."""
    assert generative.reload_allowance("llm", 5 * GIB, 3 * GIB)[1] == 5 * GIB
    assert generative.reload_allowance("llm", 3 * GIB, 5 * GIB)[1] == 5 * GIB
