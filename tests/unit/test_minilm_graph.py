"""The embedder's ONNX graph, built from the published weights alone, computes what
sentence-transformers computes (reference embeddings made independently with Hugging
Face transformers), padding included. The end-to-end test checks it again on Triton."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tests.factories import MODELS_DIR


@pytest.fixture(scope="module")
def embed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Encoder of the served model.py (tokenizer settings included) over the built artifact's
    files; Triton's own module, which only execute() uses, is absent outside Triton."""
    import importlib.util
    import sys
    import types

    from triton_models.minilm import build

    directory = tmp_path_factory.mktemp("minilm")
    for name, data in build.files().items():
        (directory / name).write_bytes(data)
    spec = importlib.util.spec_from_file_location("minilm_model", directory / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
        spec.loader.exec_module(module)
    return module.Encoder(directory).embed


def test_the_graph_reproduces_the_reference_embeddings(embed: Any) -> None:
    reference = json.loads((MODELS_DIR / "minilm" / "reference_embeddings.json").read_text())
    got = embed(reference["texts"])  # one batch: the shorter texts are padded
    expected = np.array(reference["embeddings"], dtype=np.float32)
    assert got.shape == expected.shape == (len(reference["texts"]), 384)
    assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_padding_changes_nothing(embed: Any) -> None:
    short, long = "Is the branch open?", "Is the branch in the city centre open on Sunday afternoons in December?"
    alone = embed([short])[0]
    padded = embed([short, long])[0]
    assert np.abs(alone - padded).max() < 1e-5
    assert float(alone @ embed([long])[0]) < 0.99, "different texts, different embeddings"
