"""all-MiniLM-L6-v2 as an ONNX graph, built from the weights alone (no torch).

The BERT encoder of sentence-transformers/all-MiniLM-L6-v2 (6 layers, 12 heads,
384 dimensions, GELU with erf, LayerNorm eps 1e-12), then mean pooling over the
attention mask and L2 normalisation, exactly as sentence-transformers computes an
embedding. Inputs: input_ids INT64 [batch, tokens], attention_mask FP32 [batch,
tokens]; output: embedding FP32 [batch, 384]. ONNX Runtime runs it on the node
(triton_models/minilm/model.py); the end-to-end test checks its output against
embeddings computed independently with Hugging Face transformers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

LAYERS, HEADS, HIDDEN = 6, 12, 384
HEAD = HIDDEN // HEADS
OPSET = 17  # LayerNormalization


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The F32 tensors of a .safetensors file (8-byte header length, JSON header, raw data)."""
    raw = Path(path).read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        count = (end - start) // 4
        tensors[name] = np.frombuffer(raw, dtype=np.float32, count=count, offset=8 + size + start).reshape(meta["shape"])
    return tensors


class _Graph:
    """Collects nodes and initializers; every value gets a fresh name."""

    def __init__(self) -> None:
        self.nodes: list[object] = []
        self.initializers: list[object] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        from onnx import helper

        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def dense(self, x: str, weights: dict[str, np.ndarray], name: str) -> str:
        """x @ W.T + b, as torch.nn.Linear computes it (W transposed once, here)."""
        w = self.const(f"{name}.w", weights[f"{name}.weight"].T)
        b = self.const(f"{name}.b", weights[f"{name}.bias"])
        return self.op("Add", self.op("MatMul", x, w), b)

    def layer_norm(self, x: str, weights: dict[str, np.ndarray], name: str) -> str:
        scale = self.const(f"{name}.gamma", weights[f"{name}.weight"])
        bias = self.const(f"{name}.beta", weights[f"{name}.bias"])
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=1e-12)


def build(weights: dict[str, np.ndarray]) -> bytes:
    """The serialised ONNX model."""
    from onnx import TensorProto, checker, helper

    g = _Graph()
    ids, mask = "input_ids", "attention_mask"
    i64 = lambda name, *values: g.const(name, np.array(values, np.int64))  # noqa: E731
    f32 = lambda name, value: g.const(name, np.array(value, np.float32))  # noqa: E731

    # Embeddings: word + position (the table's first `tokens` rows) + token type 0, then LayerNorm.
    words = g.op("Gather", g.const("word_embeddings", weights["embeddings.word_embeddings.weight"]), ids)
    tokens = g.op("Shape", ids, start=1, end=2)  # [tokens], 1-D
    position_table = g.const("position_embeddings", weights["embeddings.position_embeddings.weight"])
    position_vectors = g.op("Slice", position_table, i64("zero", 0), tokens, i64("first_axis", 0))
    token_type = g.const("token_type", weights["embeddings.token_type_embeddings.weight"][0])
    x = g.layer_norm(g.op("Add", g.op("Add", words, position_vectors), token_type), weights, "embeddings.LayerNorm")

    # Padding never attended to: (1 - mask) * -1e9 on the scores, shaped [batch, 1, 1, tokens].
    masked = g.op("Mul", g.op("Sub", f32("one", 1.0), mask), f32("minus_inf", -1e9))
    masked = g.op("Unsqueeze", masked, i64("head_axes", 1, 2))
    split_heads = i64("split_heads", 0, 0, HEADS, HEAD)
    join_heads = i64("join_heads", 0, 0, HIDDEN)
    scale = f32("scale", 1.0 / np.sqrt(HEAD))
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}."
        q, k, v = (g.op("Reshape", g.dense(x, weights, p + f"attention.self.{n}"), split_heads) for n in ("query", "key", "value"))
        q = g.op("Transpose", q, perm=[0, 2, 1, 3])
        k = g.op("Transpose", k, perm=[0, 2, 3, 1])
        v = g.op("Transpose", v, perm=[0, 2, 1, 3])
        scores = g.op("Softmax", g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), masked), axis=-1)
        attended = g.op("Reshape", g.op("Transpose", g.op("MatMul", scores, v), perm=[0, 2, 1, 3]), join_heads)
        x = g.layer_norm(g.op("Add", g.dense(attended, weights, p + "attention.output.dense"), x), weights,
                         p + "attention.output.LayerNorm")  # fmt: skip
        hidden = g.dense(x, weights, p + "intermediate.dense")
        # GELU with erf, as BERT defines it: 0.5 x (1 + erf(x / sqrt 2)).
        erf = g.op("Erf", g.op("Mul", hidden, f32(f"{p}inv_sqrt2", 1 / np.sqrt(2.0))))
        hidden = g.op("Mul", g.op("Mul", hidden, f32(f"{p}half", 0.5)), g.op("Add", erf, f32(f"{p}gelu_one", 1.0)))
        x = g.layer_norm(g.op("Add", g.dense(hidden, weights, p + "output.dense"), x), weights, p + "output.LayerNorm")

    # Mean over the real tokens, then unit length.
    weights_3d = g.op("Unsqueeze", mask, i64("last_axis", -1))
    summed = g.op("ReduceSum", g.op("Mul", x, weights_3d), i64("token_axis", 1), keepdims=0)
    counted = g.op("ReduceSum", mask, i64("token_axis_2", 1), keepdims=1)
    pooled = g.op("Div", summed, counted)
    g.nodes.append(helper.make_node("LpNormalization", [pooled], ["embedding"], axis=1, p=2))

    graph = helper.make_graph(
        g.nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info(mask, TensorProto.FLOAT, ["batch", "tokens"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        initializer=g.initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="appliance")
    model.ir_version = 8  # what ONNX Runtime 1.22 reads
    checker.check_model(model)
    return bytes(model.SerializeToString())
