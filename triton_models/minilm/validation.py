"""A validation set for the MiniLM embedder as an ONNX version (model.onnx on its own:
token ids and mask in, embedding out), built from text that ships with a package.

The sentences are those of scikit-learn's dataset descriptions (sklearn/datasets/descr/
*.rst: prose about iris, wine, digits, newsgroups…), so nothing is downloaded and the set
is the same on every machine; each gives a pair of rows (its first half as a query, then
the whole sentence as the document it should find). Each is tokenised with the model's own WordPiece tokenizer,
truncated to TOKENS word pieces and padded (mask 0) to that length; the expected output is
the FP32 graph's own embedding of each row (the reference an optimised candidate must
agree with: cosine per row, and which other row is nearest).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from triton_models.minilm import build

TOKENS = 48
SIGNATURE = {
    "inputs": [{"name": "input_ids", "datatype": "INT64", "dims": [-1]},
               {"name": "attention_mask", "datatype": "FP32", "dims": [-1]}],
    "outputs": [{"name": "embedding", "datatype": "FP32", "dims": [384]}],
}  # fmt: skip
MAX_BATCH_SIZE = 64


def sentences(limit: int) -> list[str]:
    """Distinct prose sentences (8 to 40 words, mostly words: no table rows or code) of the
    descriptions, in a fixed order."""
    import sklearn.datasets

    found: list[str] = []
    seen: set[str] = set()
    for path in sorted((Path(sklearn.datasets.__file__).parent / "descr").glob("*.rst")):
        text = re.sub(r"\s+", " ", re.sub(r"[=\-*:|`_]{2,}", " ", path.read_text(encoding="utf-8")))
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            sentence = sentence.strip()
            words = sentence.split()
            if not 8 <= len(words) <= 40 or sum(w.isalpha() for w in words) < 0.7 * len(words) or sentence in seen:
                continue
            seen.add(sentence)
            found.append(sentence)
            if len(found) == limit:
                return found
    return found


def pairs(limit: int) -> list[str]:
    """Query and document rows, interleaved: each sentence's first half, then the sentence.
    A query's nearest other row is its own document, unless the model is broken: retrieval
    agreement then measures the model, not near-ties between unrelated sentences."""
    rows: list[str] = []
    for sentence in sentences(limit):
        words = sentence.split()
        rows += [" ".join(words[: max(4, len(words) // 2)]), sentence]
    return rows


def tokenise(texts: list[str]) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(build.source_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(TOKENS)
    tokenizer.no_padding()
    ids = np.zeros((len(texts), TOKENS), np.int64)
    mask = np.zeros((len(texts), TOKENS), np.float32)
    for row, encoding in enumerate(tokenizer.encode_batch(texts)):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1.0
    return {"input_ids": ids, "attention_mask": mask}


def validation_set(sentence_count: int = 128) -> bytes:
    """The .npz validation file (optimisation/validation_data.py's format) for metric
    embedding_agreement: 2 × `sentence_count` rows (pairs)."""
    import onnxruntime

    inputs = tokenise(pairs(sentence_count))
    session = onnxruntime.InferenceSession(build.onnx_model(), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(["embedding"], {k: v[i : i + 64] for k, v in inputs.items()})[0]
                                for i in range(0, len(inputs["input_ids"]), 64)])  # fmt: skip
    buf = io.BytesIO()
    np.savez(buf, **{f"input.{k}": v for k, v in inputs.items()}, **{"expected.embedding": reference})
    return buf.getvalue()
